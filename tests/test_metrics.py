import math

import pytest
import torch

from camlt.metrics import (
    evaluate_predictions,
    expected_calibration_error,
    frequency_thirds,
    per_class_accuracy,
    shot_groups,
)


def test_shot_groups_by_training_count_boundaries():
    groups = shot_groups([101, 100, 20, 19, 500, 5])
    assert groups == {"many": [0, 4], "medium": [1, 2], "few": [3, 5]}


def test_head_middle_tail_three_four_three():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    thirds = frequency_thirds(list(reversed(counts)))  # classes given in reverse frequency
    assert thirds == {"head": [9, 8, 7], "middle": [6, 5, 4, 3], "tail": [2, 1, 0]}


def test_per_class_accuracy_by_hand():
    preds = torch.tensor([0, 1, 1, 2, 2, 0])
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    assert per_class_accuracy(preds, targets, 4) == [0.5, 1.0, pytest.approx(2 / 3), None]


def test_ece_by_hand():
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55])  # two bins
    correct = torch.tensor([True, False, True, True])
    # bin 0.95: acc 0.5, conf 0.95 -> 0.45 * 0.5; bin 0.55: acc 1, conf 0.55 -> 0.45 * 0.5
    assert expected_calibration_error(conf, correct) == pytest.approx(0.45)


def test_ece_bin_edges_are_right_closed():
    # 1/15 belongs to the first bin (0, 1/15]; together with 0.05 the bin's mean is used
    conf = torch.tensor([1 / 15, 0.05])
    correct = torch.tensor([False, False])
    assert expected_calibration_error(conf, correct) == pytest.approx((1 / 15 + 0.05) / 2)


def test_evaluate_predictions_groups():
    counts = [300, 50, 10]
    logits = torch.tensor(
        [[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 0, 5.0]]
    )
    targets = torch.tensor([0, 0, 1, 1, 2, 1])
    m = evaluate_predictions(logits, targets, counts)
    assert m["overall"] == pytest.approx(4 / 6)
    assert m["many"] == 1.0 and m["medium"] == pytest.approx(1 / 3) and m["few"] == 1.0
    assert m["head"] == 1.0 and m["middle"] == pytest.approx(1 / 3) and m["tail"] == 1.0
    p = torch.softmax(torch.tensor([5.0, 0, 0]), 0).max().item()
    assert m["ece"] == pytest.approx(abs(4 / 6 - p))
    assert not math.isnan(m["ece"])
