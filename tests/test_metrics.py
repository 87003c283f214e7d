"""ltlib.metrics: confusion matrix, per-class accuracy, many / medium / few groups, summaries."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltlib.metrics import ShotThresholds, confusion_matrix, per_class_accuracy, summarize


def test_confusion_matrix_rows_are_true_columns_predicted():
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    targets = torch.tensor([0, 1, 2, 2, 1, 2])
    cm = confusion_matrix(predictions, targets, 4)
    expected = [[1, 0, 0, 0],   # true 0: predicted 0
                [1, 1, 0, 0],   # true 1: predicted 1 and 0
                [0, 1, 2, 0],   # true 2: predicted 1, 2, 2
                [0, 0, 0, 0]]   # class 3 never occurs
    assert cm.tolist() == expected
    assert cm.dtype == torch.int64
    assert int(cm.sum()) == len(targets)


def test_confusion_matrix_accepts_int32_and_empty_input():
    cm = confusion_matrix(torch.tensor([1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32), 2)
    assert cm.tolist() == [[0, 1], [0, 0]]
    empty = confusion_matrix(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64), 3)
    assert empty.shape == (3, 3) and int(empty.sum()) == 0


def test_per_class_accuracy_with_an_absent_class():
    cm = np.array([[3, 1, 0],
                   [0, 0, 0],
                   [2, 2, 4]])
    acc = per_class_accuracy(cm)
    assert acc[0] == pytest.approx(3 / 4)
    assert math.isnan(acc[1])
    assert acc[2] == pytest.approx(4 / 8)
    np.testing.assert_array_equal(per_class_accuracy(torch.tensor(cm)), acc)


def test_shot_groups_boundaries():
    counts = [101, 100, 20, 19, 5000, 1, 21, 99]
    groups = ShotThresholds().groups(counts)
    assert groups == {"many": [0, 4], "medium": [1, 2, 6, 7], "few": [3, 5]}
    # every class in exactly one group
    assert sorted(sum(groups.values(), [])) == list(range(len(counts)))


def test_custom_shot_thresholds():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT, IF 100
    assert ShotThresholds().groups(counts)["few"] == []
    groups = ShotThresholds(many_above=1500, few_below=200).groups(counts)
    assert groups == {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}


def test_summarize_by_hand():
    cm = np.array([[8, 2, 0, 0],    # class 0: 80 %
                   [1, 3, 0, 0],    # class 1: 75 %
                   [0, 1, 1, 0],    # class 2: 50 %
                   [0, 0, 3, 1]])   # class 3: 25 %
    train_counts = [500, 150, 50, 10]
    out = summarize(cm, train_counts)
    assert out["top1"] == pytest.approx(100 * 13 / 20)
    assert out["balanced"] == pytest.approx(100 * (0.8 + 0.75 + 0.5 + 0.25) / 4)
    assert out["many"] == pytest.approx(100 * (0.8 + 0.75) / 2)
    assert out["medium"] == pytest.approx(50.0)
    assert out["few"] == pytest.approx(25.0)
    assert out["per_class"] == [80.0, 75.0, 50.0, 25.0]
    assert summarize(torch.tensor(cm), train_counts)["top1"] == pytest.approx(out["top1"])


def test_summarize_empty_group_is_nan():
    cm = np.array([[3, 1], [1, 1]])
    out = summarize(cm, [300, 50])  # no class under 20 images
    assert math.isnan(out["few"])
    assert out["many"] == pytest.approx(75.0)
    assert out["medium"] == pytest.approx(50.0)


def test_summarize_absent_test_class():
    cm = np.array([[2, 0, 0], [0, 0, 0], [1, 0, 1]])
    out = summarize(cm, [200, 150, 5])
    assert out["per_class"] == [100.0, None, 50.0]
    assert out["balanced"] == pytest.approx(75.0)  # NaN class left out
    assert out["many"] == pytest.approx(100.0)      # classes 0 and 1, class 1 without test images
    assert out["few"] == pytest.approx(50.0)
    assert out["top1"] == pytest.approx(100 * 3 / 4)
