"""Damaged or incomplete data: one clear error naming the file and the fix, never a silently wrong data set."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from test_data import _mnist_arrays, make_cifar10_jpeg_tree, write_idx

from ltlib.data import CIFAR10_CLASSES, DataError, load_long_tailed
from ltlib.io import CorruptFileError


@pytest.fixture
def jpeg_tree(tmp_path):
    return make_cifar10_jpeg_tree(tmp_path, train_per_class=30, test_per_class=2)


def load_jpeg(tmp_path):
    return load_long_tailed("cifar10-jpeg", 10, "ldam", root=tmp_path, val_per_class=2)


def test_a_class_folder_missing_from_the_training_split_is_named(tmp_path, jpeg_tree):
    shutil.rmtree(jpeg_tree / "train" / "cat")
    with pytest.raises(DataError, match=r"missing: \[.*train/cat'\]"):
        load_jpeg(tmp_path)


def test_a_class_missing_only_from_the_test_split_cannot_shift_the_labels(tmp_path, jpeg_tree):
    """Before: the test labels from that class on were off by one and wrong results were written."""
    shutil.rmtree(jpeg_tree / "test" / "dog")
    with pytest.raises(DataError, match=r"test must hold one folder per CIFAR-10 class.*test/dog"):
        load_jpeg(tmp_path)


def test_an_unexpected_class_folder_is_refused(tmp_path, jpeg_tree):
    shutil.copytree(jpeg_tree / "train" / "cat", jpeg_tree / "train" / "kitten")
    with pytest.raises(DataError, match=r"unexpected: \['kitten'\]"):
        load_jpeg(tmp_path)


def test_an_empty_class_folder_points_at_the_data(tmp_path, jpeg_tree):
    for image in (jpeg_tree / "train" / "frog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"train/frog holds no images.*copy it again") as info:
        load_jpeg(tmp_path)
    assert "val_per_class" not in str(info.value)


def test_a_truncated_jpeg_is_named_with_the_fix(tmp_path, jpeg_tree):
    image = jpeg_tree / "train" / "ship" / "0003.jpg"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DataError, match=r"0003\.jpg cannot be decoded .*damaged or truncated: copy it again"):
        load_jpeg(tmp_path)


def test_a_corrupt_decoded_cache_is_named_with_the_fix(tmp_path, jpeg_tree, isolated_cache):
    load_jpeg(tmp_path)
    (cache,) = isolated_cache.glob("cifar10-jpeg-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"decoded-image cache .*cannot be read.*delete it"):
        load_jpeg(tmp_path)


def mnist_files(tmp_path, **overrides):
    train_x, train_y, test_x, test_y = _mnist_arrays()
    arrays = {"train-images-idx3-ubyte.gz": train_x, "train-labels-idx1-ubyte.gz": train_y,
              "t10k-images-idx3-ubyte.gz": test_x, "t10k-labels-idx1-ubyte.gz": test_y, **overrides}
    for name, array in arrays.items():
        write_idx(tmp_path / "mnist" / name, array)
    return tmp_path / "mnist"


def test_mnist_images_and_labels_of_different_lengths_are_refused(tmp_path):
    _, train_y, _, _ = _mnist_arrays()
    mnist_files(tmp_path, **{"train-labels-idx1-ubyte.gz": train_y[:-3]})
    with pytest.raises(DataError, match=r"holds 80 images but .*train-labels-idx1-ubyte\.gz 77 labels"):
        load_long_tailed("mnist", 10, "ldam", root=tmp_path, val_per_class=2)


def test_an_idx_file_with_the_wrong_magic_number_is_refused(tmp_path):
    folder = mnist_files(tmp_path)
    _, train_y, _, _ = _mnist_arrays()
    write_idx(folder / "train-images-idx3-ubyte.gz", train_y)  # a labels file under the images' name
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is not an IDX file of images.*2049"):
        load_long_tailed("mnist", 10, "ldam", root=tmp_path, val_per_class=2)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "short"])
def test_a_damaged_gzip_is_named_with_the_fix(tmp_path, damage):
    folder = mnist_files(tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    data = target.read_bytes()
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        target.write_bytes(b"this is not gzip at all")
    else:  # a valid gzip of a cut-off IDX payload
        target.write_bytes(gzip.compress(gzip.decompress(data)[:-50]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz .*(truncated|not what its name says)"):
        load_long_tailed("mnist", 10, "ldam", root=tmp_path, val_per_class=2)


def test_the_ten_cifar10_classes_are_the_expected_folders():
    assert sorted(CIFAR10_CLASSES) == list(CIFAR10_CLASSES)
    assert len(set(CIFAR10_CLASSES)) == 10 and np.all([c.isalpha() for c in CIFAR10_CLASSES])
