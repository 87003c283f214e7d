"""Small stand-in data sets written in the real on-disk formats, so the real loaders read them."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def interleaved_labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """Each class exactly ``per_class`` times, shuffled (classes interleaved, as in the real files)."""
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.RandomState(seed).shuffle(labels)
    return labels


def cifar_pixels(n: int, offset: int, size: int = 32) -> np.ndarray:
    """(n, 3*size*size) uint8 rows in CIFAR's channel-major order; the value depends on (sample, channel, row,
    column), so a wrong reshape or transpose cannot go unnoticed."""
    n_, ch, h, w = np.meshgrid(np.arange(n), np.arange(3), np.arange(size), np.arange(size), indexing="ij")
    return ((offset + 7 * n_ + 17 * ch + 11 * h + 13 * w) % 256).astype(np.uint8).reshape(n, -1)


def write_cifar(root: Path, source: str, per_class_train: int, per_class_test: int, seed: int = 5) -> Path:
    """torchvision's python-pickle layout of CIFAR-10 (5 training batches) or CIFAR-100 under ``root/source``."""
    num_classes = 10 if source == "cifar10" else 100
    folder = Path(root) / source / ("cifar-10-batches-py" if source == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    train_y = interleaved_labels(num_classes, per_class_train, seed)
    test_y = interleaved_labels(num_classes, per_class_test, seed + 1)
    label_key = "labels" if source == "cifar10" else "fine_labels"

    def dump(name, payload):
        with open(folder / name, "wb") as fh:
            pickle.dump(payload, fh)

    if source == "cifar10":
        chunks = np.array_split(np.arange(len(train_y)), 5)
        for i, index in enumerate(chunks, 1):
            dump(f"data_batch_{i}", {"data": cifar_pixels(len(train_y), 0)[index], label_key: train_y[index].tolist()})
        dump("test_batch", {"data": cifar_pixels(len(test_y), 100), label_key: test_y.tolist()})
        dump("batches.meta", {"label_names": [f"class{c}" for c in range(10)]})
    else:
        dump("train", {"data": cifar_pixels(len(train_y), 0), label_key: train_y.tolist()})
        dump("test", {"data": cifar_pixels(len(test_y), 100), label_key: test_y.tolist()})
        dump("meta", {"fine_label_names": [f"class{c:03d}" for c in range(100)]})
    return folder
