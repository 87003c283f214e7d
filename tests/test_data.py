"""ltlib.data: long-tailed class sizes, the two protocols, every source loader and DeviceBatches.

All data except the one real-data test is made here, in tmp_path: tiny JPEG trees, IDX files,
split files and fake torchvision CIFAR classes. Expected values are worked out by hand or by an
independent re-implementation (LDAM-DRW's selection loop, the CDB split) written in this file.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ltlib import data as ltdata
from ltlib.data import (
    CIFAR10_CLASSES,
    DataError,
    DataNotFoundError,
    DeviceBatches,
    ImageSplit,
    class_counts,
    load_long_tailed,
    load_split_file_set,
    long_tailed_counts,
    read_split_file,
    select_long_tailed,
)

# --------------------------------------------------------------------------------------------
# Helpers: independent re-implementations and tiny made-up data sets
# --------------------------------------------------------------------------------------------


def ldam_reference(targets: np.ndarray, imb_factor: float, img_max: int | None = None):
    """kaidic/LDAM-DRW ``imbalance_cifar.py``: get_img_num_per_cls('exp') + gen_imbalanced_data.

    Returns (selected indices in class order, each class's shuffled index list, per-class counts).
    Uses NumPy's *global* generator seeded 0, exactly as the original code does. ``img_max`` is
    ``len(data) / cls_num`` there (a balanced pool); pass it for an unbalanced pool.
    """
    classes = np.unique(targets)
    cls_num = len(classes)
    if img_max is None:
        img_max = len(targets) // cls_num
    img_num_per_cls = [int(img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))) for cls_idx in range(cls_num)]
    np.random.seed(0)
    selected, shuffled = [], []
    for the_class, the_img_num in zip(classes, img_num_per_cls):
        idx = np.where(targets == the_class)[0]
        np.random.shuffle(idx)
        shuffled.append(idx.copy())
        selected.append(idx[:the_img_num])
    return np.concatenate(selected), shuffled, img_num_per_cls


def interleaved_labels(num_classes: int, per_class: int, seed: int = 2024) -> np.ndarray:
    """A balanced label array whose classes are mixed in an irregular order."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def flat_jpeg(path: Path, rgb, size: int = 32) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), tuple(int(v) for v in rgb)).save(path, quality=95)


def jpeg_colour(class_index: int, file_index: int, split: str):
    """Flat colour that encodes (class, file number, split): survives JPEG to within a few levels."""
    return (10 + 20 * class_index, 5 * file_index, 60 if split == "train" else 200)


def make_cifar10_jpeg_tree(root: Path, train_per_class: int = 40, test_per_class: int = 3) -> Path:
    folder = root / "cifar10-jpeg"
    for c, name in enumerate(CIFAR10_CLASSES):
        for i in range(train_per_class):
            flat_jpeg(folder / "train" / name / f"{i:04d}.jpg", jpeg_colour(c, i, "train"))
        for i in range(test_per_class):
            flat_jpeg(folder / "test" / name / f"{i:04d}.jpg", jpeg_colour(c, i, "test"))
    return folder


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (unsigned byte data), gzipped when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def assert_missing_message(err: BaseException, root: Path) -> None:
    message = str(err)
    assert str(root.resolve()) in message
    assert "LTLIB_DATA" in message


# --------------------------------------------------------------------------------------------
# Class sizes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, imbalance, protocol, total", [
    ("cifar10", 100, "ldam", 12406),
    ("cifar100", 100, "ldam", 10847),
    ("cifar100", 10, "ldam", 19573),
    ("cifar100", 100, "cdb", 10302),
    ("cifar100", 10, "cdb", 18591),
])
def test_class_counts_totals_match_the_literature(dataset, imbalance, protocol, total):
    counts = class_counts(dataset, imbalance, protocol)
    assert sum(counts) == total
    assert all(type(n) is int for n in counts)
    assert len(counts) == (10 if dataset == "cifar10" else 100)
    assert counts == sorted(counts, reverse=True)


def test_class_counts_head_and_tail():
    # ldam: the head keeps the whole pool (5000 / 500), the tail n_max / IF.
    assert class_counts("cifar10", 100, "ldam")[0] == 5000
    assert class_counts("cifar10", 100, "ldam")[-1] == 50
    assert class_counts("cifar100", 100, "ldam")[-1] == 5
    # cdb: 25 per class held out first, so the head is 475 and the tail int(475 / 100) = 4.
    assert class_counts("cifar100", 100, "cdb")[0] == 475
    assert class_counts("cifar100", 100, "cdb")[-1] == 4
    # The JPEG copy of CIFAR-10 has the same pool.
    assert class_counts("cifar10-jpeg", 100, "ldam") == class_counts("cifar10", 100, "ldam")


def test_exp_counts_follow_the_formula():
    # n_c = int(n_max * (1/IF)^(c/(C-1))), worked out for n_max 60, C 5, IF 10:
    # 60, 60*0.5623=33.7, 60*0.3162=18.97, 60*0.1778=10.67, 60*0.1=6
    assert long_tailed_counts(60, 5, 10) == [60, 33, 18, 10, 6]
    assert long_tailed_counts(60, 5, 1) == [60] * 5
    assert long_tailed_counts(7, 1, 10) == [7]


def test_step_profile():
    assert long_tailed_counts(500, 10, 10, "step") == [500] * 5 + [50] * 5
    assert long_tailed_counts(100, 4, 4, "step", step_fraction=0.25) == [100, 25, 25, 25]
    assert class_counts("cifar10", 100, "ldam", shape="step") == [5000] * 5 + [50] * 5
    assert class_counts("cifar100", 10, "cdb", shape="step") == [475] * 50 + [47] * 50
    with pytest.raises(DataError, match="shape"):
        long_tailed_counts(500, 10, 10, "linear")


# --------------------------------------------------------------------------------------------
# Protocol "ldam"
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("imbalance", [10, 100])
def test_ldam_selection_equals_ldam_drw_loop(imbalance, numpy_global_state):
    labels = interleaved_labels(5, 60)
    expected, _, expected_counts = ldam_reference(labels, 1.0 / imbalance)
    train, val = select_long_tailed(labels, 5, imbalance, "ldam", val_per_class=0)
    np.testing.assert_array_equal(train, expected)
    assert len(val) == 0
    assert np.bincount(labels[train], minlength=5).tolist() == expected_counts


def test_ldam_selection_does_not_touch_numpy_global_state():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    select_long_tailed(interleaved_labels(3, 20), 3, 10, "ldam", val_per_class=0)
    assert np.random.random() == before


def test_ldam_validation_is_the_tail_of_each_shuffled_class(numpy_global_state):
    labels = interleaved_labels(5, 60)
    _, shuffled, counts = ldam_reference(labels, 1.0 / 10)
    train, val = select_long_tailed(labels, 5, 10, "ldam")  # default val_per_class: 25
    expected_val = np.concatenate([order[-25:] for order in shuffled])
    # Only the head class (60 wanted) is cut, to 60 - 25 = 35 images.
    expected_train = np.concatenate([order[:min(n, 60 - 25)] for order, n in zip(shuffled, counts)])
    np.testing.assert_array_equal(val, expected_val)
    np.testing.assert_array_equal(train, expected_train)
    assert not set(train.tolist()) & set(val.tolist())
    assert np.bincount(labels[val], minlength=5).tolist() == [25] * 5
    assert np.bincount(labels[train], minlength=5).tolist() == [35, 33, 18, 10, 6]


def test_ldam_custom_val_per_class(numpy_global_state):
    labels = interleaved_labels(4, 30)
    _, shuffled, _ = ldam_reference(labels, 1.0 / 10)
    train, val = select_long_tailed(labels, 4, 10, "ldam", val_per_class=3)
    np.testing.assert_array_equal(val, np.concatenate([order[-3:] for order in shuffled]))
    assert np.bincount(labels[val], minlength=4).tolist() == [3] * 4
    assert not set(train.tolist()) & set(val.tolist())


def test_ldam_subset_at_if10_contains_subset_at_if100():
    labels = interleaved_labels(6, 200, seed=7)
    train100, _ = select_long_tailed(labels, 6, 100, "ldam", val_per_class=0)
    train10, _ = select_long_tailed(labels, 6, 10, "ldam", val_per_class=0)
    for c in range(6):
        small = set(train100[labels[train100] == c].tolist())
        large = set(train10[labels[train10] == c].tolist())
        assert small <= large
        assert len(small) < len(large) or c == 0


def test_ldam_n_max_override():
    labels = interleaved_labels(3, 50)
    train, _ = select_long_tailed(labels, 3, 4, "ldam", val_per_class=0, n_max=40)
    # 40, 40 * 0.5 = 20, 40 * 0.25 = 10
    assert np.bincount(labels[train], minlength=3).tolist() == [40, 20, 10]


# --------------------------------------------------------------------------------------------
# Protocol "cdb"
# --------------------------------------------------------------------------------------------

def test_cdb_split_is_first_n_in_file_order():
    labels = interleaved_labels(5, 60, seed=11)
    train, val = select_long_tailed(labels, 5, 10, "cdb")
    # n_max = 60 - 25 = 35; 35 * (0.1)^(c/4) = 35, 19.68, 11.07, 6.22, 3.5
    expected_counts = [35, 19, 11, 6, 3]
    per_class = [np.flatnonzero(labels == c) for c in range(5)]
    np.testing.assert_array_equal(val, np.concatenate([idx[-25:] for idx in per_class]))
    np.testing.assert_array_equal(train, np.concatenate([idx[:n] for idx, n in zip(per_class, expected_counts)]))
    assert np.bincount(labels[train], minlength=5).tolist() == expected_counts
    assert np.bincount(labels[val], minlength=5).tolist() == [25] * 5
    assert not set(train.tolist()) & set(val.tolist())


def test_cdb_is_deterministic_and_ignores_seeds():
    labels = interleaved_labels(4, 40, seed=3)
    np.random.seed(1)
    a = select_long_tailed(labels, 4, 10, "cdb")
    np.random.seed(2)
    b = select_long_tailed(labels, 4, 10, "cdb")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("protocol", ["ldam", "cdb"])
def test_validation_that_leaves_no_training_images_is_an_error(protocol):
    # 12 images per class cannot give 12 (or 25) validation images and still train.
    labels = interleaved_labels(3, 12)
    for val_per_class in (12, 25):
        with pytest.raises(DataError):
            select_long_tailed(labels, 3, 10, protocol, val_per_class=val_per_class)


# --------------------------------------------------------------------------------------------
# Bad requests
# --------------------------------------------------------------------------------------------

def test_unknown_data_set(tmp_path):
    with pytest.raises(DataError, match="unknown data set") as info:
        load_long_tailed("svhn", 100, "ldam", root=tmp_path)
    assert "cifar10" in str(info.value)
    with pytest.raises(DataError):
        class_counts("svhn", 100, "ldam")
    with pytest.raises(DataError, match="unknown split-file"):
        load_split_file_set("cifar10", root=tmp_path)


def test_split_file_sources_are_not_loaded_into_memory(tmp_path):
    with pytest.raises(DataError, match="load_split_file_set"):
        load_long_tailed("imagenet-lt", 100, "ldam", root=tmp_path)


def test_unknown_protocol(tmp_path):
    with pytest.raises(DataError, match="unknown protocol") as info:
        load_long_tailed("digits", 100, "random", root=tmp_path)
    assert "ldam" in str(info.value) and "cdb" in str(info.value)
    with pytest.raises(DataError, match="unknown protocol"):
        class_counts("cifar10", 100, "LDAM")
    with pytest.raises(DataError, match="unknown protocol"):
        select_long_tailed(np.arange(20) % 2, 2, 10, "first")


@pytest.mark.parametrize("imbalance", [0.5, 0, -10, float("nan"), float("inf")])
def test_imbalance_below_one_or_not_finite(imbalance, tmp_path):
    with pytest.raises(DataError, match="imbalance factor"):
        class_counts("cifar10", imbalance, "ldam")
    with pytest.raises(DataError, match="imbalance factor"):
        load_long_tailed("digits", imbalance, "ldam", root=tmp_path)
    with pytest.raises(DataError, match="imbalance factor"):
        select_long_tailed(np.arange(20) % 2, 2, imbalance, "cdb", val_per_class=2)


@pytest.mark.parametrize("imbalance", ["100", None, True, [100]])
def test_imbalance_of_wrong_type(imbalance, tmp_path):
    with pytest.raises(DataError, match="imbalance factor"):
        class_counts("cifar100", imbalance, "ldam")
    with pytest.raises(DataError, match="imbalance factor"):
        load_long_tailed("digits", imbalance, "ldam", root=tmp_path)


def test_imbalance_one_is_balanced():
    assert class_counts("cifar10", 1, "ldam") == [5000] * 10
    assert class_counts("cifar100", 1.0, "cdb") == [475] * 100


def test_missing_cifar10_jpeg(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_long_tailed("cifar10-jpeg", 100, "ldam", root=tmp_path)
    assert_missing_message(info.value, tmp_path)
    assert "cifar10-jpeg" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_missing_data_uses_ltlib_data_as_default_root(tmp_path, monkeypatch):
    root = tmp_path / "my-data"
    root.mkdir()
    monkeypatch.setenv("LTLIB_DATA", str(root))
    with pytest.raises(DataNotFoundError) as info:
        load_long_tailed("cifar10-jpeg", 100, "ldam")
    assert_missing_message(info.value, root)


def test_missing_mnist(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_long_tailed("mnist", 10, "ldam", root=tmp_path)
    assert_missing_message(info.value, tmp_path)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert stem in str(info.value)


def test_missing_cifar10_pickles(tmp_path):
    # Real torchvision, no download: "Dataset not found" must become ltlib's DataNotFoundError.
    with pytest.raises(DataNotFoundError) as info:
        load_long_tailed("cifar10", 100, "ldam", root=tmp_path, download=False)
    assert_missing_message(info.value, tmp_path)
    assert "cifar-10-batches-py" in str(info.value)


def test_missing_imagenet_lt(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_split_file_set("imagenet-lt", root=tmp_path)
    assert_missing_message(info.value, tmp_path)
    assert "ImageNet_LT_train.txt" in str(info.value)


# --------------------------------------------------------------------------------------------
# Loader: digits (scikit-learn)
# --------------------------------------------------------------------------------------------

def test_digits_loader(tmp_path, numpy_global_state):
    from sklearn.datasets import load_digits

    data = load_long_tailed("digits", 10, "ldam", root=tmp_path)
    bunch = load_digits()
    labels = bunch.target
    images = np.clip(np.rint(bunch.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
    # Independent split: the last 40 images of each class (file order) are the test set.
    test_idx = np.sort(np.concatenate([np.flatnonzero(labels == c)[-40:] for c in range(10)]))
    pool_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    pool_y = labels[pool_idx]

    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8
        assert tuple(split.images.shape[1:]) == (1, 8, 8)
        assert split.labels.dtype == torch.int64
        assert split.images.shape[0] == split.labels.shape[0]

    # Test split: exactly the held-out images, 40 per class.
    assert len(data.test) == 400
    np.testing.assert_array_equal(data.test.images[:, 0].numpy(), images[test_idx])
    np.testing.assert_array_equal(data.test.labels.numpy(), labels[test_idx])

    # Train / val: pool indices map back to distinct original images, never a test image.
    train_orig, val_orig = pool_idx[data.train_indices], pool_idx[data.val_indices]
    assert len(set(train_orig)) == len(train_orig) and len(set(val_orig)) == len(val_orig)
    assert not set(train_orig) & set(val_orig)
    assert not (set(train_orig) | set(val_orig)) & set(test_idx)
    np.testing.assert_array_equal(data.train.images[:, 0].numpy(), images[train_orig])
    np.testing.assert_array_equal(data.train.labels.numpy(), labels[train_orig])
    np.testing.assert_array_equal(data.val.labels.numpy(), labels[val_orig])
    assert len(data.train) + len(data.val) + len(data.test) <= len(labels)

    # Sizes: digits keeps 10 validation images per class (the last 10 of each shuffled class);
    # the long tail follows LDAM's loop with n_max = the smallest pool class, capped at size - 10.
    assert data.val.counts(10) == [10] * 10
    smallest = int(np.bincount(pool_y).min())
    _, shuffled, wanted = ldam_reference(pool_y, 0.1, img_max=smallest)
    expected_train = np.concatenate([order[:min(n, len(order) - 10)] for order, n in zip(shuffled, wanted)])
    np.testing.assert_array_equal(data.train_indices, expected_train)
    np.testing.assert_array_equal(data.val_indices, np.concatenate([order[-10:] for order in shuffled]))
    assert data.train_counts[0] > data.train_counts[-1]

    # digits has no conventional normalisation constants: they come from the training split.
    pixels = data.train.images.double() / 255.0
    assert data.mean == pytest.approx((float(pixels.mean()),), rel=1e-6)
    assert data.std[0] == pytest.approx(float(pixels.std()), rel=1e-6)


# --------------------------------------------------------------------------------------------
# Loader: cifar10-jpeg (ImageFolder of JPEGs, decoded once into a cache)
# --------------------------------------------------------------------------------------------

def test_cifar10_jpeg_loader(tmp_path, isolated_cache):
    make_cifar10_jpeg_tree(tmp_path)
    data = load_long_tailed("cifar10-jpeg", 10, "ldam", root=tmp_path, val_per_class=5)

    assert data.class_names == list(CIFAR10_CLASSES)
    assert data.train.images.dtype == torch.uint8
    assert tuple(data.train.images.shape[1:]) == (3, 32, 32)
    assert tuple(data.test.images.shape) == (30, 3, 32, 32)
    assert data.test.counts(10) == [3] * 10
    assert data.val.counts(10) == [5] * 10
    # 40 per class: head capped at 40 - 5, then int(40 * 0.1^(c/9)).
    assert data.train_counts == [min(int(40 * 0.1 ** (c / 9)), 35) for c in range(10)]

    # Pool order is class folders sorted, then file names: pool index i is class i // 40, file i % 40.
    def check(split: ImageSplit, pool_indices, split_name: str):
        for k, i in enumerate(np.asarray(pool_indices)):
            c, f = divmod(int(i), 40)
            assert int(split.labels[k]) == c
            colour = split.images[k].double().mean(dim=(1, 2)).numpy()
            np.testing.assert_allclose(colour, jpeg_colour(c, f, split_name), atol=4)
    check(data.train, data.train_indices, "train")
    check(data.val, data.val_indices, "train")
    for k in range(len(data.test)):
        c, f = divmod(k, 3)
        assert int(data.test.labels[k]) == c
        colour = data.test.images[k].double().mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(colour, jpeg_colour(c, f, "test"), atol=4)
    assert len(list(isolated_cache.glob("cifar10-jpeg-*.npz"))) == 1


def test_cifar10_jpeg_cache_is_reused_and_keyed_on_the_files(tmp_path, isolated_cache, monkeypatch):
    folder = make_cifar10_jpeg_tree(tmp_path, train_per_class=8, test_per_class=2)
    first = load_long_tailed("cifar10-jpeg", 2, "cdb", root=tmp_path, val_per_class=2)
    caches = list(isolated_cache.glob("cifar10-jpeg-*.npz"))
    assert len(caches) == 1

    class DecodedAgain(AssertionError):
        pass

    def no_decode(files):
        raise DecodedAgain(f"decoded {len(files)} files again")

    real_decode = ltdata._decode
    monkeypatch.setattr(ltdata, "_decode", no_decode)
    second = load_long_tailed("cifar10-jpeg", 2, "cdb", root=tmp_path, val_per_class=2)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.images, second.test.images)
    assert torch.equal(first.train.labels, second.train.labels)

    # A new file changes the cache key: the folder must be decoded again.
    flat_jpeg(folder / "train" / "airplane" / "0008.jpg", (1, 2, 3))
    with pytest.raises(DecodedAgain):
        load_long_tailed("cifar10-jpeg", 2, "cdb", root=tmp_path, val_per_class=2)
    monkeypatch.setattr(ltdata, "_decode", real_decode)
    third = load_long_tailed("cifar10-jpeg", 1, "cdb", root=tmp_path, val_per_class=2)
    assert len(list(isolated_cache.glob("cifar10-jpeg-*.npz"))) == 2
    # 9 airplanes now: 2 held out, and IF 1 keeps n_max = smallest class - 2 = 6 of every class.
    assert third.val.counts(10) == [2] * 10
    assert len(third.train_indices) == 60
    assert int(third.val_indices[1]) == 8  # the new file is the last airplane of the pool


def test_cifar10_jpeg_cache_never_goes_to_the_repository(tmp_path, isolated_cache):
    from ltlib.paths import ROOT

    make_cifar10_jpeg_tree(tmp_path, train_per_class=2, test_per_class=1)
    before = set((ROOT / "cache").glob("cifar10-jpeg-*.npz")) if (ROOT / "cache").is_dir() else set()
    load_long_tailed("cifar10-jpeg", 1, "cdb", root=tmp_path, val_per_class=1)
    after = set((ROOT / "cache").glob("cifar10-jpeg-*.npz")) if (ROOT / "cache").is_dir() else set()
    assert after == before
    assert len(list(isolated_cache.glob("cifar10-jpeg-*.npz"))) == 1


# --------------------------------------------------------------------------------------------
# Loader: cifar10 / cifar100 from torchvision's pickle layout (tiny files written by the test)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickle_loader(source, num_classes, tmp_path, monkeypatch):
    from fakedata import cifar_pixels, write_cifar

    monkeypatch.setenv("LTLIB_VERIFY_MD5", "0")  # the stand-in files are not the official ones
    write_cifar(tmp_path, source, per_class_train=12, per_class_test=2)
    data = load_long_tailed(source, 10, "ldam", root=tmp_path, val_per_class=2)
    expected_names = [f"class{c}" for c in range(10)] if source == "cifar10" else [f"class{c:03d}" for c in range(100)]
    assert data.class_names == expected_names
    assert data.train.images.dtype == torch.uint8 and tuple(data.train.images.shape[1:]) == (3, 32, 32)
    pool = cifar_pixels(12 * num_classes, 0).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(data.train.images.numpy(), pool[data.train_indices])
    assert data.train.images.is_contiguous()
    np.testing.assert_array_equal(data.test.images.numpy(), cifar_pixels(2 * num_classes, 100).reshape(-1, 3, 32, 32))
    assert data.val.counts(num_classes) == [2] * num_classes
    assert data.test.counts(num_classes) == [2] * num_classes
    assert data.train_counts[0] == 10  # 12 per class, 2 held out


def test_cifar_files_that_fail_the_md5_check_are_named_as_damaged(tmp_path):
    from fakedata import write_cifar

    folder = write_cifar(tmp_path, "cifar10", per_class_train=2, per_class_test=1)
    with pytest.raises(DataError, match=r"fail torchvision's md5 check.*LTLIB_VERIFY_MD5=0") as info:
        load_long_tailed("cifar10", 10, "ldam", root=tmp_path, val_per_class=1)
    assert str(folder / "data_batch_1") in str(info.value)
    assert not isinstance(info.value, DataNotFoundError)


def test_missing_cifar_files_are_named(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_long_tailed("cifar100", 100, "cdb", root=tmp_path)
    assert_missing_message(info.value, tmp_path)
    assert "cifar-100-python" in str(info.value)


def test_download_without_a_network_is_one_error_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    monkeypatch.setattr(tv_utils, "urlretrieve", offline, raising=False)
    with pytest.raises(DataNotFoundError, match=r"downloading into .* failed .*Is there a network"):
        load_long_tailed("cifar10", 10, "ldam", root=tmp_path, download=True)
    assert not (tmp_path / "cifar10").exists()


# --------------------------------------------------------------------------------------------
# Loader: MNIST from IDX files
# --------------------------------------------------------------------------------------------

def _mnist_arrays(per_class_train: int = 8, per_class_test: int = 3):
    train_y = interleaved_labels(10, per_class_train, seed=9).astype(np.uint8)
    test_y = interleaved_labels(10, per_class_test, seed=10).astype(np.uint8)
    train_x = ((np.arange(len(train_y))[:, None, None] * 3 + np.arange(28)[None, :, None]
                + 2 * np.arange(28)[None, None, :]) % 256).astype(np.uint8)
    test_x = (255 - (np.arange(len(test_y))[:, None, None] + np.zeros((1, 28, 28), int)) % 256).astype(np.uint8)
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize("layout, suffix", [("", ".gz"), ("MNIST/raw", ""), ("MNIST/raw", ".gz")])
def test_mnist_loader(layout, suffix, tmp_path):
    train_x, train_y, test_x, test_y = _mnist_arrays()
    base = tmp_path / "mnist" / layout
    write_idx(base / f"train-images-idx3-ubyte{suffix}", train_x)
    write_idx(base / f"train-labels-idx1-ubyte{suffix}", train_y)
    write_idx(base / f"t10k-images-idx3-ubyte{suffix}", test_x)
    write_idx(base / f"t10k-labels-idx1-ubyte{suffix}", test_y)

    data = load_long_tailed("mnist", 4, "cdb", root=tmp_path, val_per_class=2)
    assert data.train.images.dtype == torch.uint8
    assert tuple(data.train.images.shape[1:]) == (1, 28, 28)
    np.testing.assert_array_equal(data.train.images[:, 0].numpy(), train_x[data.train_indices])
    np.testing.assert_array_equal(data.train.labels.numpy(), train_y[data.train_indices])
    np.testing.assert_array_equal(data.val.images[:, 0].numpy(), train_x[data.val_indices])
    np.testing.assert_array_equal(data.test.images[:, 0].numpy(), test_x)
    np.testing.assert_array_equal(data.test.labels.numpy(), test_y)
    assert data.test.labels.dtype == torch.int64
    # cdb: 8 - 2 = 6 per class, then int(6 * 0.25^(c/9)): 6 at the head, 1 at the tail.
    assert data.train_counts[0] == 6 and data.train_counts[-1] == 1
    assert data.val.counts(10) == [2] * 10


def test_mnist_with_only_the_test_files_names_the_missing_training_files(tmp_path):
    _, _, test_x, test_y = _mnist_arrays()
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", test_y)
    with pytest.raises(DataNotFoundError) as info:
        load_long_tailed("mnist", 10, "ldam", root=tmp_path, download=False)
    message = str(info.value)
    assert_missing_message(info.value, tmp_path)
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    looked_for = message.split("Looked for:")[1].split("MNIST needs")[0]
    assert "t10k" not in looked_for  # the files that are there are not reported missing


# --------------------------------------------------------------------------------------------
# Split-file data sets: ImageNet-LT, Places-LT, iNaturalist 2018
# --------------------------------------------------------------------------------------------

def _write_split(folder: Path, name: str, entries) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{path} {label}\n" for path, label in entries))
    for path, label in entries:
        target = folder / path
        if not target.exists():
            flat_jpeg(target, (label * 40 % 256, 0, 0), size=4)


@pytest.mark.parametrize("source, prefix", [("imagenet-lt", "ImageNet_LT"), ("places-lt", "Places_LT")])
def test_split_file_sets_with_test_list(source, prefix, tmp_path):
    folder = tmp_path / source
    splits = {
        "train": [("train/a/0.jpg", 0), ("train/b/0.jpg", 1), ("train/a/1.jpg", 0), ("train/a b/2.jpg", 2)],
        "val": [("val/0.jpg", 0), ("val/1.jpg", 1), ("val/2.jpg", 2)],
        "test": [("test/0.jpg", 0), ("test/1.jpg", 1), ("test/2.jpg", 2), ("test/3.jpg", 2)],
    }
    for split, entries in splits.items():
        _write_split(folder, f"{prefix}_{split}.txt", entries)

    sets = load_split_file_set(source, root=tmp_path, transform_train=lambda im: ("train", im.size),
                               transform_eval=lambda im: ("eval", im.size))
    assert set(sets) == {"train", "val", "test"}
    for split, entries in splits.items():
        assert sets[split].entries == entries
        np.testing.assert_array_equal(sets[split].labels, [label for _, label in entries])
        assert len(sets[split]) == len(entries)
    assert sets["train"][3] == (("train", (4, 4)), 2)  # path with a space
    assert sets["test"][0] == (("eval", (4, 4)), 0)
    plain = load_split_file_set(source, root=tmp_path)
    image, label = plain["val"][1]
    assert label == 1 and image.mode == "RGB" and image.size == (4, 4)


def test_inat2018_val_list_is_test_and_train_holdout_is_val(tmp_path):
    folder = tmp_path / "inat2018"
    train = [("t/0.jpg", 0), ("t/1.jpg", 1), ("t/2.jpg", 0), ("t/3.jpg", 2), ("t/4.jpg", 0),
             ("t/5.jpg", 2), ("t/6.jpg", 0), ("t/7.jpg", 0)]
    val = [("v/0.jpg", 0), ("v/1.jpg", 1), ("v/2.jpg", 2)]
    _write_split(folder, "iNaturalist18_train.txt", train)
    _write_split(folder, "iNaturalist18_val.txt", val)

    sets = load_split_file_set("inat2018", root=tmp_path, val_per_class=2)
    assert set(sets) == {"train", "val", "test"}
    assert sets["test"].entries == val
    # class 0 (5 images): its last 2 in file order are held out; class 1 (1 image) keeps its only one;
    # class 2 (2 images) gives 1, keeping 1 for training. Both lists stay in file order.
    assert sets["val"].entries == [("t/5.jpg", 2), ("t/6.jpg", 0), ("t/7.jpg", 0)]
    assert sets["train"].entries == [("t/0.jpg", 0), ("t/1.jpg", 1), ("t/2.jpg", 0), ("t/3.jpg", 2), ("t/4.jpg", 0)]

    default = load_split_file_set("inat2018", root=tmp_path)  # val_per_class = 1
    assert default["val"].entries == [("t/5.jpg", 2), ("t/7.jpg", 0)]
    assert len(default["train"]) == len(train) - 2


def test_inat2018_missing_split_files(tmp_path):
    (tmp_path / "inat2018").mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_split_file_set("inat2018", root=tmp_path)
    assert_missing_message(info.value, tmp_path)
    assert "iNaturalist18_train.txt" in str(info.value) and "iNaturalist18_val.txt" in str(info.value)


def test_split_files_without_their_images(tmp_path):
    folder = tmp_path / "places-lt"
    folder.mkdir()
    for split in ("train", "val", "test"):
        (folder / f"Places_LT_{split}.txt").write_text(f"{split}/missing.jpg 0\n")
    with pytest.raises(DataNotFoundError) as info:
        load_split_file_set("places-lt", root=tmp_path)
    assert "missing.jpg" in str(info.value)
    assert_missing_message(info.value, tmp_path)


@pytest.mark.parametrize("line", ["train/a.jpg", "train/a.jpg x", "train/a.jpg 1.5", "7"])
def test_malformed_split_line(line, tmp_path):
    folder = tmp_path / "imagenet-lt"
    _write_split(folder, "ImageNet_LT_train.txt", [("train/ok.jpg", 0)])
    (folder / "ImageNet_LT_train.txt").write_text(f"train/ok.jpg 0\n\n{line}\n")
    for split in ("val", "test"):
        _write_split(folder, f"ImageNet_LT_{split}.txt", [("train/ok.jpg", 0)])
    with pytest.raises(DataError, match=r"ImageNet_LT_train\.txt:3"):
        load_split_file_set("imagenet-lt", root=tmp_path)
    with pytest.raises(DataError):
        read_split_file(folder / "ImageNet_LT_train.txt")


def test_read_split_file(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("a/b.jpg 3\n\nc d/e.JPEG 12  \nf.jpg -1\n")
    assert read_split_file(path) == [("a/b.jpg", 3), ("c d/e.JPEG", 12), ("f.jpg", -1)]


def test_split_file_default_root_is_ltlib_data(tmp_path, monkeypatch):
    folder = tmp_path / "imagenet-lt"
    for split in ("train", "val", "test"):
        _write_split(folder, f"ImageNet_LT_{split}.txt", [(f"{split}/0.jpg", 1)])
    monkeypatch.setenv("LTLIB_DATA", str(tmp_path))
    sets = load_split_file_set("imagenet-lt")
    assert sets["train"].image_root == folder.resolve()


# --------------------------------------------------------------------------------------------
# Real data (skipped unless $LTLIB_DATA holds cifar10-jpeg)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_cifar10_jpeg_ldam_if100(real_data_folder, user_cache, monkeypatch):
    real_data_folder("cifar10-jpeg")
    if user_cache:  # reuse the caller's decoded cache (CI sets LTLIB_CACHE); else the temporary one
        monkeypatch.setenv("LTLIB_CACHE", user_cache)
    data = load_long_tailed("cifar10-jpeg", 100, "ldam")  # root from $LTLIB_DATA
    expected = class_counts("cifar10", 100, "ldam")
    counts = data.train_counts
    assert counts[0] == 5000 - 25  # the head gives up its 25 validation images
    assert counts[1:] == expected[1:]
    assert data.val.counts(10) == [25] * 10
    assert data.test.counts(10) == [1000] * 10
    assert tuple(data.train.images.shape[1:]) == (3, 32, 32)
    assert data.class_names == list(CIFAR10_CLASSES)


# --------------------------------------------------------------------------------------------
# DeviceBatches
# --------------------------------------------------------------------------------------------

def _indexed_split(n: int, channels: int = 1, size: int = 3) -> ImageSplit:
    images = (torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1) + 1).expand(n, channels, size, size).contiguous()
    return ImageSplit(images, torch.arange(n, dtype=torch.int64))


@pytest.mark.parametrize("augment", [False, True])
def test_epoch_visits_every_index_once(augment):
    split = _indexed_split(23)
    batches = DeviceBatches(split, mean=(0.0,), std=(1.0,), device="cpu", crop_padding=0, flip=True)
    seen, sizes = [], []
    for images, labels in batches.epoch(5, torch.Generator().manual_seed(0), augment=augment):
        sizes.append(len(labels))
        seen += labels.tolist()
        # images stay paired with their labels: pixel value (index + 1) / 255 after normalisation
        expected = (labels.float() + 1).view(-1, 1, 1, 1) / 255.0
        torch.testing.assert_close(images, expected.expand_as(images))
    assert sorted(seen) == list(range(23))
    assert sizes == [5, 5, 5, 5, 3]
    assert seen != list(range(23))  # shuffled


def test_epoch_drop_last():
    batches = DeviceBatches(_indexed_split(23), (0.0,), (1.0,), "cpu")
    seen = [labels.tolist() for _, labels in batches.epoch(5, torch.Generator().manual_seed(1), drop_last=True)]
    assert [len(b) for b in seen] == [5, 5, 5, 5]
    flat = sum(seen, [])
    assert len(set(flat)) == 20


def test_normalisation_uses_mean_and_std():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    batches = DeviceBatches(ImageSplit(images, torch.tensor([0])), mean=(0.5, 0.2), std=(0.25, 0.4), device="cpu")
    out, _ = next(batches.sequential())
    expected = torch.tensor([[[[(0 / 255 - 0.5) / 0.25, (1 - 0.5) / 0.25]],
                              [[(0.2 - 0.2) / 0.4, (0.4 - 0.2) / 0.4]]]])
    torch.testing.assert_close(out, expected)


def test_sequential_keeps_order():
    batches = DeviceBatches(_indexed_split(7), (0.0,), (1.0,), "cpu")
    labels = torch.cat([lab for _, lab in batches.sequential(3)])
    assert labels.tolist() == list(range(7))


def test_same_seed_same_batches():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (17, 3, 6, 6), dtype=torch.uint8, generator=g)
    split = ImageSplit(images, torch.arange(17))
    batches = DeviceBatches(split, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), "cpu", crop_padding=2, flip=True)

    def run(seed):
        return list(batches.epoch(4, torch.Generator().manual_seed(seed)))
    a, b, c = run(42), run(42), run(43)
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def _windows(image: torch.Tensor, p: int):
    """Every (2p+1)x(2p+1)-offset window of the zero-padded image: {(dy, dx): window}."""
    c, h, w = image.shape
    padded = torch.zeros((c, h + 2 * p, w + 2 * p), dtype=image.dtype)
    padded[:, p:p + h, p:p + w] = image
    return {(dy, dx): padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)}


@pytest.mark.parametrize("flip", [True, False])
def test_augment_is_a_padded_crop_with_optional_flip(flip):
    p, n = 2, 60
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (n, 3, 7, 5), dtype=torch.uint8, generator=g)
    batches = DeviceBatches(ImageSplit(images, torch.zeros(n, dtype=torch.int64)), (0, 0, 0), (1, 1, 1), "cpu",
                            crop_padding=p, flip=flip)
    out = batches.augment(images, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == images.dtype
    offsets, flips = set(), []
    for i in range(n):
        matches = [(offset, flipped) for offset, window in _windows(images[i], p).items()
                   for flipped in (False, True)
                   if torch.equal(out[i], window.flip(2) if flipped else window)]
        assert matches, f"image {i} is no padded crop{' (or its mirror)' if flip else ''}"
        if not flip:
            assert any(not flipped for _, flipped in matches), f"image {i} was flipped with flip=False"
            assert all(not flipped for _, flipped in matches)
        offsets.add(matches[0][0])
        flips.append(matches[0][1])
    assert len(offsets) > 1  # the crop really moves
    if flip:
        assert 0 < sum(flips) < n  # some images flipped, some not
    else:
        assert not any(flips)


def test_augment_without_padding_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = DeviceBatches(ImageSplit(images, torch.zeros(4, dtype=torch.int64)), (0, 0, 0), (1, 1, 1), "cpu")
    assert torch.equal(batches.augment(images, torch.Generator().manual_seed(0)), images)
