"""Long-tailed data: sources, long-tail construction, protocols, validation split, device batches.

Data flows one way: a *source* gives a balanced training pool and a test set in the original
per-class order; a *protocol* picks the long-tailed training subset and a balanced held-out
validation split from that pool; :class:`DeviceBatches` serves augmented batches from one uint8
tensor on the training device.

Protocols (both exact, because the papers use different ones):

``ldam``  (kaidic/LDAM-DRW, ``imbalance_cifar.py``): one ``np.random.RandomState`` seeded 0 shuffles
          each class's index list in class order; the first n_c are kept, with
          n_c = int(n_max · (1/IF)^(c/(C−1))) and n_max the pool's class size (5000 / 500 on CIFAR).
          The validation split takes the *last* ``val_per_class`` indices of each shuffled list,
          which LDAM never selects unless n_c > pool − val_per_class: on CIFAR-10 only the head class
          (4,975 instead of 5,000 images), on CIFAR-100 the two to three largest classes (n_c > 475;
          :func:`ldam_validation_cut`). Pass ``val_per_class=0`` for LDAM's exact subset with no
          validation split.
``cdb``   (hitachi-rd-cv/CDB-loss and Difficulty_Net, ``data_preprocessing.py``): the last 25
          images of every class (file order) are the validation split; then the first
          n_c = int((pool − 25) · (1/IF)^(c/(C−1))) of each class in file order (475 on CIFAR-100).
"""
from __future__ import annotations

import gzip
import hashlib
import numbers
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .io import CorruptFileError, atomic_write_bytes
from .paths import cache_dir, data_root

PROTOCOLS = ("ldam", "cdb")
SHAPES = ("exp", "step")  # long-tail shapes
CDB_VAL_PER_CLASS = 25

# Per-source facts: classes, pool size per class (for class_counts without touching data),
# normalisation constants, and whether a horizontal flip is a valid augmentation.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SOURCE_INFO = {
    "digits": dict(num_classes=10, flip=False, crop_padding=1),
    "mnist": dict(num_classes=10, flip=False, crop_padding=2, mean=(0.1307,), std=(0.3081,)),
    # LDAM-DRW's normalisation constants for CIFAR-10; CIFAR-100's from Difficulty_Net.
    "cifar10": dict(num_classes=10, pool_per_class=5000, flip=True, crop_padding=4,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)),
    "cifar10-jpeg": dict(num_classes=10, pool_per_class=5000, flip=True, crop_padding=4,
                         mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)),
    "cifar100": dict(num_classes=100, pool_per_class=500, flip=True, crop_padding=4,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}
IN_MEMORY_SOURCES = tuple(_SOURCE_INFO)
SPLIT_FILE_SOURCES = {
    # name: (split-file prefix, has a val file usable as validation)
    "imagenet-lt": "ImageNet_LT",
    "places-lt": "Places_LT",
    "inat2018": "iNaturalist18",
}
SOURCES = IN_MEMORY_SOURCES + tuple(SPLIT_FILE_SOURCES)


class DataError(ValueError):
    """Bad data-set request (unknown name, bad imbalance factor, ...)."""


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are not where ltlib looked; the message says how to provide them."""


# --------------------------------------------------------------------------------------------
# Long-tailed class sizes
# --------------------------------------------------------------------------------------------

def long_tailed_counts(n_max: int, num_classes: int, imbalance: float, shape: str = "exp",
                       step_fraction: float = 0.5) -> list[int]:
    """Per-class sizes of a long-tailed training set.

    ``exp``:  n_c = int(n_max · (1/IF)^(c/(C−1)))  (Cao et al. 2019; Cui et al. 2019)
    ``step``: n_max for the first ``step_fraction`` of the classes, int(n_max / IF) for the rest.
    """
    _check_imbalance(imbalance)
    if shape not in SHAPES:
        raise DataError(f"unknown long-tail shape {shape!r}; choose one of {SHAPES}")
    ratio = 1.0 / float(imbalance)
    if shape == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * ratio ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    n_head = int(num_classes * step_fraction)
    return [int(n_max) if c < n_head else int(n_max * ratio) for c in range(num_classes)]


def class_counts(dataset: str, imbalance: float, protocol: str, shape: str = "exp") -> list[int]:
    """Per-class training counts of ``dataset`` ("cifar10"/"cifar100") under ``protocol``.

    Touches no data. ``ldam`` gives the literature's counts (CIFAR-10 IF 100: 12,406 images);
    ``cdb`` holds out 25 images per class first (CIFAR-100 IF 100: 10,302).
    """
    _check_protocol(protocol)
    key = dataset.replace("-jpeg", "")
    if key not in ("cifar10", "cifar100"):
        raise DataError(f"class_counts knows the CIFAR pools only ('cifar10', 'cifar100'), not {dataset!r}")
    info = _SOURCE_INFO[key]
    pool = info["pool_per_class"]
    n_max = pool if protocol == "ldam" else pool - CDB_VAL_PER_CLASS
    return long_tailed_counts(n_max, info["num_classes"], imbalance, shape)


def ldam_validation_cut(dataset: str, imbalance: float, val_per_class: int = CDB_VAL_PER_CLASS,
                        shape: str = "exp") -> list[tuple[int, int, int]]:
    """Under ``ldam`` with a validation split: (class, n_c the protocol selects, n_c left to train) of every class
    the split cuts. The split takes the last ``val_per_class`` indices of each class's shuffled order, so it
    cuts only the classes whose n_c exceeds pool − val_per_class: the head class of CIFAR-10 (5,000 > 4,975),
    two to three classes of CIFAR-100 (pool 500: n_c > 475; IF 10: classes 0-2, IF 100: 0-1)."""
    key = dataset.replace("-jpeg", "")
    pool = _SOURCE_INFO[key]["pool_per_class"]
    counts = class_counts(key, imbalance, "ldam", shape)
    return [(c, n, pool - val_per_class) for c, n in enumerate(counts) if n > pool - val_per_class]


def resolve_val_per_class(source: str, val_per_class: int | None) -> int:
    """Validation images held out per class: 25 (the CDB / Difficulty-Net split) unless given; digits 10."""
    if val_per_class is None:
        return 10 if source == "digits" else CDB_VAL_PER_CLASS  # digits: ~140 per class, keep the tail trainable
    if isinstance(val_per_class, bool) or not isinstance(val_per_class, int) or val_per_class < 0:
        raise DataError(f"val_per_class must be an int >= 0, got {val_per_class!r}")
    return val_per_class


def _check_imbalance(imbalance) -> None:
    if isinstance(imbalance, bool) or not isinstance(imbalance, numbers.Real):
        raise DataError(f"imbalance factor must be a number >= 1 (n_max / n_min), got {imbalance!r}")
    if not np.isfinite(imbalance) or imbalance < 1:
        raise DataError(f"imbalance factor must be >= 1 (n_max / n_min; 1 = balanced), got {imbalance}")


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS} "
                        "('ldam': seeded shuffle per class, 'cdb': 25 held out per class, first-n)")


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------

@dataclass
class ImageSplit:
    """Images as one uint8 tensor (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class LongTailedData:
    """A long-tailed training split, a balanced validation split and the test split."""

    source: str
    protocol: str
    imbalance: float
    shape: str
    class_names: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int
    train_indices: np.ndarray  # indices into the source's training pool
    val_indices: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> list[int]:
        return self.train.counts(self.num_classes)

    def index_checksum(self, which: str = "train") -> str:
        """sha256 (first 16 hex digits) of the selected pool indices, as little-endian int64."""
        idx = self.train_indices if which == "train" else self.val_indices
        return hashlib.sha256(np.asarray(idx, dtype="<i8").tobytes()).hexdigest()[:16]

    def summary(self) -> dict:
        return {"source": self.source, "protocol": self.protocol, "imbalance": self.imbalance,
                "train": len(self.train), "val": len(self.val), "test": len(self.test),
                "classes": self.num_classes, "train_checksum": self.index_checksum("train"),
                "val_checksum": self.index_checksum("val")}


# --------------------------------------------------------------------------------------------
# Protocols: pool (balanced, original per-class order) -> train / val indices
# --------------------------------------------------------------------------------------------

def select_long_tailed(labels: np.ndarray, num_classes: int, imbalance: float, protocol: str,
                       shape: str = "exp", val_per_class: int | None = None,
                       n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_indices, val_indices) into ``labels`` for ``protocol``.

    ``labels`` lists the pool in its original order; each class's images are taken in that order.
    ``n_max`` defaults to the smallest class of the pool (minus the validation images for ``cdb``).
    """
    _check_protocol(protocol)
    _check_imbalance(imbalance)
    labels = np.asarray(labels)
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    smallest = min(len(idx) for idx in per_class)
    val_n = CDB_VAL_PER_CLASS if val_per_class is None else int(val_per_class)
    if val_n >= smallest:
        raise DataError(f"val_per_class={val_n} leaves no training images (smallest class has {smallest}); "
                        "pass a smaller val_per_class")
    if protocol == "cdb":
        counts = long_tailed_counts(n_max or smallest - val_n, num_classes, imbalance, shape)
        train, val = [], []
        for c, idx in enumerate(per_class):
            kept, held = idx[: len(idx) - val_n], idx[len(idx) - val_n:]
            train.append(kept[: counts[c]])
            val.append(held)
    else:
        counts = long_tailed_counts(n_max or smallest, num_classes, imbalance, shape)
        rng = np.random.RandomState(0)  # exactly LDAM-DRW: one generator, classes in order
        train, val = [], []
        for c, idx in enumerate(per_class):
            idx = idx.copy()
            rng.shuffle(idx)
            limit = len(idx) - val_n
            train.append(idx[: min(counts[c], limit)])
            val.append(idx[limit:] if val_n > 0 else idx[:0])
    return np.concatenate(train), np.concatenate(val)


# --------------------------------------------------------------------------------------------
# Sources: each returns a balanced pool and a test set as uint8 NCHW arrays
# --------------------------------------------------------------------------------------------

@dataclass
class _Raw:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]


def _missing(source: str, root: Path, looked_for: Sequence[Path], how: str) -> DataNotFoundError:
    listed = "\n  ".join(str(p) for p in looked_for)
    return DataNotFoundError(
        f"{source}: data not found under the data root {root}.\nLooked for:\n  {listed}\n{how}\n"
        "Set LTLIB_DATA to the folder that holds the data sets (for example LTLIB_DATA=/path/to/data).")


def _digits(source: str, root: Path, download: bool) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    # scikit-learn ships no split: the last 40 images of each class (file order) are the test set.
    test_mask = np.zeros(len(labels), bool)
    for c in range(10):
        test_mask[np.flatnonzero(labels == c)[-40:]] = True
    return _Raw(images[~test_mask], labels[~test_mask], images[test_mask], labels[test_mask],
                [str(c) for c in range(10)])


def _download_guard(source: str, folder: Path, fetch) -> None:
    """Run ``fetch()``; a failed download (no network, a refused host) is one error, and the folders it
    created but left empty are removed again."""
    existed = folder.exists()
    try:
        fetch()
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        if not existed and folder.exists() and not any(p.is_file() for p in folder.rglob("*")):
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise DataNotFoundError(f"{source}: downloading into {folder} failed ({type(error).__name__}: {error}). "
                                "Is there a network? Otherwise copy the files there by hand and run without "
                                "download (unset LTLIB_DOWNLOAD).") from None


def _cifar_pickles(source: str, root: Path, download: bool) -> _Raw:
    """CIFAR-10 / CIFAR-100 in torchvision's layout (the python pickles), read here, downloaded by torchvision.

    Every file is checked against torchvision's md5 list; ``LTLIB_VERIFY_MD5=0`` accepts files in the same
    format that are not the official ones (a subset of your own, the test suite's tiny stand-ins).
    """
    import pickle

    from torchvision import datasets

    cls = datasets.CIFAR10 if source == "cifar10" else datasets.CIFAR100
    folder = root / source
    base = folder / cls.base_folder
    if download:
        _download_guard(source, folder, lambda: (cls(str(folder), train=True, download=True),
                                                 cls(str(folder), train=False, download=True)))
    expected = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    absent = [base / name for name, _ in expected if not (base / name).exists()]
    if absent:
        raise _missing(source, root, absent,
                       f"Download it with ltlib.data.load_long_tailed('{source}', ..., download=True) "
                       "or LTLIB_DOWNLOAD=1 on a machine with a network.")
    if os.environ.get("LTLIB_VERIFY_MD5", "1") != "0":
        from torchvision.datasets.utils import check_integrity

        damaged = [str(base / name) for name, md5 in expected if not check_integrity(str(base / name), md5)]
        if damaged:
            raise DataError(f"{source}: file(s) {damaged} exist but fail torchvision's md5 check (a truncated or "
                            "damaged copy, or not the official files); delete them and download again "
                            "(LTLIB_DOWNLOAD=1), or set LTLIB_VERIFY_MD5=0 for CIFAR-format files of your own")

    def read(name: str) -> dict:
        try:
            with open(base / name, "rb") as fh:
                return pickle.load(fh, encoding="latin1")
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
            raise DataError(f"{base / name} cannot be read ({type(error).__name__}: {error}); copy or download "
                            "it again") from None

    def split(names) -> tuple[np.ndarray, np.ndarray]:
        batches = [read(name) for name, _ in names]
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([b.get("labels", b.get("fine_labels")) for b in batches]).astype(np.int64)
        return np.ascontiguousarray(images), labels

    train_x, train_y = split(cls.train_list)
    test_x, test_y = split(cls.test_list)
    classes = list(read(cls.meta["filename"])[cls.meta["key"]])
    return _Raw(train_x, train_y, test_x, test_y, classes)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _image_folder_files(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for c, name in enumerate(classes):
        names = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise DataError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); the data "
                            "set is incomplete: copy it again, or remove the folder if that class is not meant to be "
                            "there")
        files += names
        labels += [c] * len(names)
    return files, labels, classes


def _decode(files: Sequence[Path]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, SyntaxError) as error:  # truncated / not an image
            raise DataError(f"image {path} cannot be decoded ({type(error).__name__}: {error}); the file is damaged "
                            "or truncated: copy it again from the original data set") from None

    first = read(files[0])
    out = np.empty((len(files), 3, *first.shape[:2]), np.uint8)
    for i, path in enumerate(files):
        image = first if i == 0 else read(path)
        if image.shape != first.shape:
            raise DataError(f"image {path} is {image.shape[1]}x{image.shape[0]}, the others "
                            f"{first.shape[1]}x{first.shape[0]}; every image of the data set must have one size")
        out[i] = image.transpose(2, 0, 1)
    return out


def _cifar10_jpeg(source: str, root: Path, download: bool) -> _Raw:
    folder = root / "cifar10-jpeg"
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        raise _missing("cifar10-jpeg", root, [folder / "train", folder / "test"],
                       "Expected ImageFolder layout cifar10-jpeg/{train,test}/<class>/NNNN.jpg.")
    for split in ("train", "test"):
        present = {p.name for p in (folder / split).iterdir() if p.is_dir()}
        absent = [name for name in CIFAR10_CLASSES if name not in present]
        extra = sorted(present - set(CIFAR10_CLASSES))
        if absent or extra:
            raise DataError(f"cifar10-jpeg: {folder / split} must hold one folder per CIFAR-10 class "
                            f"{list(CIFAR10_CLASSES)}; missing: {[str(folder / split / a) for a in absent]}"
                            f"{f', unexpected: {extra}' if extra else ''}. Copy the data set again.")
    splits = {s: _image_folder_files(folder / s) for s in ("train", "test")}
    # The cache key is the file list itself (relative names and sizes), so a changed folder
    # is decoded again instead of silently reusing stale pixels.
    listing = "\n".join(f"{p.relative_to(folder)}\t{p.stat().st_size}"
                        for s in ("train", "test") for p in splits[s][0])
    key = hashlib.sha256(listing.encode()).hexdigest()[:16]
    cache = cache_dir() / f"cifar10-jpeg-{key}.npz"
    if not cache.exists():
        arrays = {}
        for s in ("train", "test"):
            files, labels, _ = splits[s]
            arrays[f"{s}_x"] = _decode(files)
            arrays[f"{s}_y"] = np.asarray(labels, np.int64)
        atomic_write_bytes(cache, lambda fh: np.savez(fh, **arrays))
    try:
        with np.load(cache) as z:
            return _Raw(z["train_x"], z["train_y"], z["test_x"], z["test_y"], splits["train"][2])
    except Exception as error:  # a truncated or foreign npz: zipfile, pickle and value errors
        raise CorruptFileError(f"decoded-image cache {cache} cannot be read ({type(error).__name__}: {error}); "
                               "delete it: it is decoded again from the JPEG files") from None


IDX_MAGIC = {1: 2049, 3: 2051}  # labels (1-d) and images (3-d), unsigned bytes


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (optionally .gz), checked: magic number, declared shape against the bytes present."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError
        raise DataError(f"{path} cannot be read ({type(error).__name__}: {error}); the file is truncated or not "
                        "what its name says: copy or download it again") from None
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != IDX_MAGIC[ndim]:
        found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
        raise DataError(f"{path} is not an IDX file of {'labels' if ndim == 1 else 'images'} (magic number "
                        f"{found}, expected {IDX_MAGIC[ndim]}); copy or download it again")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path} declares shape {shape} ({expected} bytes) but holds {len(data)} bytes; the file is "
                        "truncated or damaged: copy or download it again")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist_files(root: str | os.PathLike | None = None, download: bool = False) -> list[Path]:
    """Paths of the four MNIST IDX files (training and test), or :class:`DataNotFoundError` naming the absent ones."""
    root = Path(root).expanduser().resolve() if root is not None else data_root()
    folder = root / "mnist"

    def find(stem: str) -> Path | None:
        for base in (folder, folder / "MNIST" / "raw"):
            for suffix in ("", ".gz"):
                if (base / (stem + suffix)).exists():
                    return base / (stem + suffix)
        return None
    paths = [find(s) for s in MNIST_STEMS]
    if any(p is None for p in paths) and download:
        from torchvision import datasets

        _download_guard("mnist", folder, lambda: (datasets.MNIST(str(folder), train=True, download=True),
                                                  datasets.MNIST(str(folder), train=False, download=True)))
        paths = [find(s) for s in MNIST_STEMS]
    if any(p is None for p in paths):
        absent = [folder / (s + ".gz") for s, p in zip(MNIST_STEMS, paths) if p is None]
        raise _missing("mnist", root, absent,
                       "MNIST needs its training and test IDX files (train-*-ubyte and t10k-*-ubyte, "
                       "optionally .gz) in <data root>/mnist/; download=True or LTLIB_DOWNLOAD=1 fetches them.")
    return paths


def _mnist(source: str, root: Path, download: bool) -> _Raw:
    paths = mnist_files(root, download)
    tx, ty, vx, vy = (_read_idx(p, 3 if "images" in p.name else 1) for p in paths)
    for images, labels, (image_path, label_path) in ((tx, ty, paths[:2]), (vx, vy, paths[2:])):
        if len(images) != len(labels):
            raise DataError(f"MNIST: {image_path} holds {len(images)} images but {label_path} {len(labels)} labels; "
                            "one of the files belongs to another split or is damaged")
        if len(labels) and labels.max() > 9:
            raise DataError(f"MNIST: {label_path} holds label {int(labels.max())}; MNIST labels are 0-9")
    return _Raw(tx[:, None].copy(), ty.astype(np.int64), vx[:, None].copy(), vy.astype(np.int64),
                [str(c) for c in range(10)])


_LOADERS = {"digits": _digits, "cifar10": _cifar_pickles, "cifar100": _cifar_pickles,
            "cifar10-jpeg": _cifar10_jpeg, "mnist": _mnist}


def load_long_tailed(source: str, imbalance: float = 100, protocol: str = "ldam", *,
                     shape: str = "exp", val_per_class: int | None = None,
                     root: str | os.PathLike | None = None, download: bool | None = None) -> LongTailedData:
    """Load ``source`` and build its long-tailed training set, validation and test splits.

    ``root`` defaults to :func:`ltlib.paths.data_root` (``$LTLIB_DATA``). ``download`` defaults to
    ``$LTLIB_DOWNLOAD == "1"``; ltlib never substitutes other data for missing files.
    """
    if source in SPLIT_FILE_SOURCES:
        raise DataError(f"{source} is too large to hold in memory; use ltlib.data.load_split_file_set('{source}')")
    if source not in _LOADERS:
        raise DataError(f"unknown data set {source!r}; choose one of {SOURCES}")
    _check_protocol(protocol)
    _check_imbalance(imbalance)
    root = Path(root).expanduser().resolve() if root is not None else data_root()
    if download is None:
        download = os.environ.get("LTLIB_DOWNLOAD") == "1"
    raw = _LOADERS[source](source, root, download)
    info = _SOURCE_INFO[source]
    num_classes = len(raw.class_names)
    val_per_class = resolve_val_per_class(source, val_per_class)
    train_idx, val_idx = select_long_tailed(raw.train_y, num_classes, imbalance, protocol, shape, val_per_class)
    train = ImageSplit(torch.from_numpy(raw.train_x[train_idx]), torch.from_numpy(raw.train_y[train_idx]))
    val = ImageSplit(torch.from_numpy(raw.train_x[val_idx]), torch.from_numpy(raw.train_y[val_idx]))
    test = ImageSplit(torch.from_numpy(np.ascontiguousarray(raw.test_x)), torch.from_numpy(raw.test_y))
    if "mean" in info:
        mean, std = info["mean"], info["std"]
    else:  # sources without conventional constants: statistics of the training split
        pixels = train.images.double() / 255.0
        mean = tuple(pixels.mean(dim=(0, 2, 3)).tolist())
        std = tuple(pixels.std(dim=(0, 2, 3)).tolist())
    return LongTailedData(source, protocol, float(imbalance), shape, list(raw.class_names), train, val, test,
                          tuple(mean), tuple(std), info["flip"], info["crop_padding"], train_idx, val_idx)


# --------------------------------------------------------------------------------------------
# Split-file data sets (ImageNet-LT, Places-LT, iNaturalist 2018): too large for memory
# --------------------------------------------------------------------------------------------

class SplitFileDataset(torch.utils.data.Dataset):
    """Images listed in a split file (``relative/path.jpg label`` per line) under an image root."""

    def __init__(self, image_root: Path, entries: list[tuple[str, int]], transform=None):
        self.image_root, self.entries, self.transform = Path(image_root), entries, transform

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([label for _, label in self.entries], np.int64)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.entries[i]
        with Image.open(self.image_root / path) as im:
            image = im.convert("RGB")
        return (self.transform(image) if self.transform else image), label


def read_split_file(path: Path) -> list[tuple[str, int]]:
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected '<relative image path> <integer label>', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    return entries


def load_split_file_set(source: str, root: str | os.PathLike | None = None, transform_train=None,
                        transform_eval=None, val_per_class: int = 1) -> dict[str, SplitFileDataset]:
    """Train / val / test datasets of ImageNet-LT, Places-LT or iNaturalist 2018.

    Layout: ``<data root>/<source>/`` holds the split files (``ImageNet_LT_train.txt``, ...) and the
    images they name. iNaturalist 2018 has no test list: its official val list is the test set,
    and the balanced validation split holds out ``val_per_class`` training images of each class.
    """
    if source not in SPLIT_FILE_SOURCES:
        raise DataError(f"unknown split-file data set {source!r}; choose one of {tuple(SPLIT_FILE_SOURCES)}")
    root = Path(root).expanduser().resolve() if root is not None else data_root()
    folder, prefix = root / source, SPLIT_FILE_SOURCES[source]
    names = ("train", "val") if source == "inat2018" else ("train", "val", "test")
    files = {n: folder / f"{prefix}_{n}.txt" for n in names}
    absent = [p for p in files.values() if not p.exists()]
    if absent:
        raise _missing(source, root, absent, f"Place the {source} images and its standard split files "
                       f"({', '.join(p.name for p in files.values())}) in {folder}.")
    entries = {n: read_split_file(p) for n, p in files.items()}
    if source == "inat2018":
        counts = np.bincount([label for _, label in entries["train"]])
        budget = {c: min(val_per_class, int(n) - 1) for c, n in enumerate(counts)}
        train, held = [], []
        for path, label in reversed(entries["train"]):
            if budget.get(label, 0) > 0:
                held.append((path, label))
                budget[label] -= 1
            else:
                train.append((path, label))
        entries = {"train": train[::-1], "val": held[::-1], "test": entries["val"]}
    missing = [p for n in entries for p, _ in entries[n][:1] if not (folder / p).exists()]
    if missing:
        raise _missing(source, root, [folder / m for m in missing],
                       "The split files are present but the images they list are not.")
    return {n: SplitFileDataset(folder, e, transform_train if n == "train" else transform_eval)
            for n, e in entries.items()}


# --------------------------------------------------------------------------------------------
# Device-resident batches with on-device augmentation
# --------------------------------------------------------------------------------------------

class DeviceBatches:
    """Batches from one uint8 image tensor kept on ``device``; crop and flip happen there too.

    No DataLoader workers and no per-batch host transfer: an epoch is one ``randperm`` on the
    device and per-batch tensor indexing. The random stream comes from ``generator`` only, so a
    run is reproducible and resumable from the generator's state.
    """

    def __init__(self, split: ImageSplit, mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                 crop_padding: int = 0, flip: bool = False, channels_last: bool = False):
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255.0
        self.crop_padding, self.flip, self.channels_last = int(crop_padding), bool(flip), channels_last

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with zero padding ``crop_padding`` and (optionally) horizontal flip."""
        n, _, h, w = images.shape
        p = self.crop_padding
        if p > 0:
            padded = torch.nn.functional.pad(images, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=self.device, generator=generator)
            dx = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=self.device, generator=generator)
            rows = (torch.arange(h, device=self.device).view(1, 1, h, 1) + dy).expand(n, 1, h, w)
            cols = (torch.arange(w, device=self.device).view(1, 1, 1, w) + dx).expand(n, 1, h, w)
            flat = padded.reshape(n, images.shape[1], -1)
            index = (rows * (w + 2 * p) + cols).reshape(n, 1, h * w).expand(-1, images.shape[1], -1)
            images = flat.gather(2, index).reshape(images.shape)
        if self.flip:
            mask = torch.rand((n, 1, 1, 1), device=self.device, generator=generator) < 0.5
            images = torch.where(mask, images.flip(3), images)
        return images

    def epoch(self, batch_size: int, generator: torch.Generator, augment: bool = True,
              drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), device=self.device, generator=generator)
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start: start + batch_size]
            images = self.images[idx]
            if augment:
                images = self.augment(images, generator)
            yield self._normalise(images), self.labels[idx]

    def sequential(self, batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield (self._normalise(self.images[start: start + batch_size]), self.labels[start: start + batch_size])
