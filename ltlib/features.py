"""Features of a trained backbone: extracted once, cached beside the run, read back by later stages.

Two-stage methods (Difficulty-Net's stage 2, cRT / LWS) and DLSA work on the penultimate features of a
trained model (``model.features``, in eval mode, frozen). :func:`feature_set` returns the training,
validation and test features of a model with their labels; :mod:`ltlib.stages` caches them beside the
run's checkpoint (``features-<views>v-<seed>.pt``; seed 0 whenever ``views`` is 1: the clean images
involve no random draw).

``views`` > 1 adds augmented copies of the training set (the data set's own random crop and flip, drawn
from a generator seeded with ``seed``): view 0 is the clean image, views 1.. are augmented. Stage-2
re-training on fixed features sees augmentation only through these views; the official pipelines
instead pass a freshly augmented image through the frozen backbone at every step.

:func:`read_feature_file` reads the HDF5 feature files of the official DLSA code (datasets
``features`` (N, D) and ``labels`` (N,)), for users who have them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DeviceBatches
from .io import atomic_write_bytes

FEATURE_FILE_KEYS = ("features", "labels")


@dataclass
class FeatureSet:
    """Features and labels of the three splits of one data set, as seen by one backbone."""

    train: torch.Tensor          # (N_train · views, D), view-major: rows [k·N, (k+1)·N) are view k
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    train_counts: list[int]      # per class, of one view
    views: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.train_counts)

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def clean_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """View 0 only: the un-augmented training features."""
        n = self.train.shape[0] // self.views
        return self.train[:n], self.train_labels[:n]

    def to(self, device) -> "FeatureSet":
        move = {k: getattr(self, k).to(device) for k in ("train", "train_labels", "val", "val_labels", "test",
                                                          "test_labels")}
        return FeatureSet(**move, train_counts=self.train_counts, views=self.views)


@torch.no_grad()
def extract_features(model: nn.Module, batches: DeviceBatches, *, augment_generator: torch.Generator | None = None,
                     batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.features`` of every image of ``batches`` in order (eval mode); augmented if a generator is given."""
    model.eval()
    chunks = []
    for start in range(0, len(batches), batch_size):
        images = batches.images[start: start + batch_size]
        if augment_generator is not None:
            images = batches.augment(images, augment_generator)
        chunks.append(model.features(batches._normalise(images)).float())
    features = torch.cat(chunks) if chunks else torch.zeros(0, 0)
    return features, batches.labels.clone()


def feature_set(model: nn.Module, data, *, views: int = 1, seed: int = 0,
                device: str | torch.device = "cpu") -> FeatureSet:
    """Train / val / test features of ``model`` on ``data`` (a :class:`ltlib.data.LongTailedData`).

    View 0 of the training split is the clean images; views 1.. are augmented with the data set's own crop
    and flip, drawn from a generator seeded with ``seed``.
    """
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(f"views must be an int >= 1, got {views!r}")
    split = {name: DeviceBatches(getattr(data, name), data.mean, data.std, device, data.crop_padding, data.flip)
             for name in ("train", "val", "test")}
    generator = torch.Generator(device=device).manual_seed(seed)
    train_views = [extract_features(model, split["train"])]
    train_views += [extract_features(model, split["train"], augment_generator=generator) for _ in range(views - 1)]
    fields = {"train": torch.cat([f for f, _ in train_views]), "train_labels": torch.cat([y for _, y in train_views])}
    for name in ("val", "test"):
        fields[name], fields[f"{name}_labels"] = extract_features(model, split[name])
    return FeatureSet(**{k: v.cpu() for k, v in fields.items()}, train_counts=list(data.train_counts), views=views)


def save_feature_set(path: str | os.PathLike, features: FeatureSet) -> None:
    atomic_write_bytes(Path(path), lambda fh: torch.save(vars(features), fh))


def load_feature_set(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureSet | None:
    """A cached :class:`FeatureSet`, or None when absent or unreadable (it is re-created from the model)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return FeatureSet(**torch.load(path, map_location=device, weights_only=False))
    except Exception:  # a truncated cache file: features are derived data, extract them again
        path.unlink(missing_ok=True)
        return None


def read_feature_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,) int64) from an HDF5 file with datasets ``features`` and ``labels``."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature file {path} does not exist; extract features with "
                                "ltlib.features.feature_set or download the official ones")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not an HDF5 feature file ({error}); expected datasets "
                         f"{FEATURE_FILE_KEYS}") from None
    with handle:
        missing = [key for key in FEATURE_FILE_KEYS if key not in handle]
        if missing:
            raise ValueError(f"{path} lacks dataset(s) {missing}; a feature file holds 'features' (N, D) and "
                             f"'labels' (N,), found {sorted(handle.keys())}")
        features, labels = np.asarray(handle["features"]), np.asarray(handle["labels"])
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(f"{path}: 'features' must be (N, D) and 'labels' (N,) with the same N, got "
                         f"{features.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise ValueError(f"{path}: 'labels' must be non-negative integers, got dtype {labels.dtype}")
    if not np.isfinite(features).all():
        raise ValueError(f"{path}: 'features' contains NaN or infinite values")
    return torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)


@torch.no_grad()
def split_logits(model: nn.Module, data, split: str = "train", device: str | torch.device = "cpu",
                 batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of ``model`` on one split of ``data`` (clean images, eval mode)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    model.eval()
    batches = DeviceBatches(getattr(data, split), data.mean, data.std, device)
    logits = [model(images) for images, _ in batches.sequential(batch_size)]
    return (torch.cat(logits) if logits else torch.zeros(0, data.num_classes)), batches.labels.clone()


def load_feature_folder(folder: str | os.PathLike) -> FeatureSet:
    """A :class:`FeatureSet` from ``feature_{train,val,test}.h5`` in ``folder`` (the official DLSA naming, plus a
    validation file for model selection); class counts from the training labels."""
    folder = Path(folder).expanduser()
    files = {split: folder / f"feature_{split}.h5" for split in ("train", "val", "test")}
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"missing feature file(s) {missing}; a feature folder holds feature_train.h5, "
                                "feature_val.h5 and feature_test.h5, each with datasets 'features' and 'labels'")
    loaded = {split: read_feature_file(path) for split, path in files.items()}
    num_classes = int(max(int(labels.max()) for _, labels in loaded.values() if len(labels)) + 1)
    counts = torch.bincount(loaded["train"][1], minlength=num_classes).tolist()
    return FeatureSet(loaded["train"][0], loaded["train"][1], loaded["val"][0], loaded["val"][1],
                      loaded["test"][0], loaded["test"][1], counts)
