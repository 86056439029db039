"""Metrics against values computed by hand (MMSA definitions, sklearn-style weighted F1)."""

import math

import numpy as np
import pytest

from model.training.metrics import (
    accuracy,
    classification_metrics,
    confusion_matrix,
    pearson,
    regression_metrics,
    weighted_f1,
)


def test_accuracy_and_confusion_matrix():
    true = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    assert accuracy(true, pred) == pytest.approx(3 / 5)
    assert confusion_matrix(true, pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_weighted_f1_by_hand():
    # class 0: TP=1 FP=1 FN=1 -> F1 = 2/4 = 0.5, support 2
    # class 1: TP=2 FP=1 FN=0 -> F1 = 4/5 = 0.8, support 2
    # class 2: TP=0 FP=0 FN=1 -> F1 = 0,         support 1
    true = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    assert weighted_f1(true, pred, 3) == pytest.approx((0.5 * 2 + 0.8 * 2 + 0 * 1) / 5)


def test_weighted_f1_perfect_and_all_wrong():
    assert weighted_f1([0, 1, 1], [0, 1, 1]) == pytest.approx(1.0)
    assert weighted_f1([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(0.0)


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_regression_metrics_mmsa_definitions():
    true = np.array([-2.6, -0.4, 0.0, 0.8, 2.2])
    pred = np.array([-1.8, 0.3, -0.2, 1.4, 2.9])
    m = regression_metrics(pred, true)
    # Has0: true >= 0 -> [F, F, T, T, T]; pred >= 0 -> [F, T, F, T, T]: 3/5 right.
    assert m["has0_acc2"] == pytest.approx(3 / 5)
    # Non0 drops the true 0: true > 0 -> [F, F, T, T]; pred > 0 -> [F, T, T, T]: 3/4 right.
    assert m["non0_acc2"] == pytest.approx(3 / 4)
    # Non0 F1: class False TP=1 FP=0 FN=1 -> 2/3 (support 2); class True TP=2 FP=1 FN=0 -> 0.8 (support 2).
    assert m["non0_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # Acc-7: round(clip(., -3, 3)): true [-3, 0, 0, 1, 2], pred [-2, 0, 0, 1, 3] -> 3/5.
    assert m["acc7"] == pytest.approx(3 / 5)
    # Acc-3: round(clip(., -1, 1)): true [-1, 0, 0, 1, 1], pred [-1, 0, 0, 1, 1] -> 5/5.
    assert m["acc3"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(np.mean([0.8, 0.7, 0.2, 0.6, 0.7]))
    assert m["corr"] == pytest.approx(np.corrcoef(pred, true)[0, 1])
    assert m["n"] == 5


def test_classification_metrics_three_sentiment_classes():
    labels = ["negative", "neutral", "positive"]
    true = np.array([0, 1, 2, 2, 1, 0])
    scores = np.array([
        [0.9, 0.05, 0.05],  # negative -> negative
        [0.4, 0.5, 0.1],  # neutral -> neutral (but negative beats positive)
        [0.1, 0.2, 0.7],  # positive -> positive
        [0.5, 0.3, 0.2],  # positive -> negative
        [0.1, 0.3, 0.6],  # neutral -> positive
        [0.2, 0.6, 0.3],  # negative -> neutral (positive beats negative)
    ])
    m = classification_metrics(scores, true, labels)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["acc3"] == m["accuracy"]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    # Two-class predictions from the negative/positive columns only: [N, N, P, N, P, P].
    # Has0 truth (positive vs not): [0, 0, 1, 1, 0, 0] -> right at items 0, 1, 2: 3/6.
    assert m["has0_acc2"] == pytest.approx(3 / 6)
    # Non0 keeps true negatives/positives (items 0, 2, 3, 5): truth [0, 1, 1, 0], pred [0, 1, 0, 1] -> 2/4.
    assert m["non0_acc2"] == pytest.approx(2 / 4)


def test_classification_metrics_binary():
    m = classification_metrics(np.array([[2.0, -1.0], [0.0, 1.0], [0.5, 0.2]]), np.array([0, 1, 1]),
                               ["negative", "positive"])
    assert m["acc2"] == pytest.approx(2 / 3)
    assert "has0_acc2" not in m  # only defined for negative/neutral/positive labels
    assert m["confusion_matrix"] == [[1, 0], [1, 1]]
