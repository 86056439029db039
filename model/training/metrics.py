"""Evaluation metrics, following MMSA's definitions (thuiar/MMSA, utils/metricsTop.py).

Regression on scores in [-3, 3] (MOSI/MOSEI):
  * Has0 Acc-2 / F1: negative = score < 0, non-negative = score >= 0, on all items;
  * Non0 Acc-2 / F1: positive vs negative, items whose true score is exactly 0 left out;
  * Acc-3 / Acc-5 / Acc-7: scores clipped to [-1, 1] / [-2, 2] / [-3, 3], then rounded;
  * MAE and Pearson correlation.
Classification (labels in negative→positive order when the labels are sentiments):
  * accuracy (Acc-N for N classes), weighted F1, a confusion matrix;
  * with negative/neutral/positive labels, MMSA's Has0 / Non0 Acc-2 from the
    negative and positive logits: Has0 counts neutral as non-positive; Non0
    leaves neutral items out. (MMSA's code compares Non0 truths coded 0/2 with
    predictions coded 0/1; we compare positive-vs-negative as intended.)
F1 is weighted by class support, as sklearn's ``average='weighted'``.
"""

from __future__ import annotations

import numpy as np

SENTIMENT_ORDER = ("negative", "neutral", "positive")


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    denom = predicted + actual
    # F1 = 2TP / (2TP + FP + FN); 0 where a class is neither present nor predicted (sklearn's zero_division=0).
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def weighted_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if not len(y_true):
        return float("nan")
    n = n_classes or int(max(y_true.max(), y_pred.max()) + 1)
    matrix = confusion_matrix(y_true, y_pred, n)
    support = matrix.sum(axis=1)
    return float((per_class_f1(matrix) * support).sum() / support.sum())


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")  # undefined for constant inputs
    return float(np.corrcoef(x, y)[0, 1])


def _multiclass_acc(pred, true, bound: float) -> float:
    # MMSA: clip to [-bound, bound], then round to the nearest integer class.
    return accuracy(np.round(np.clip(true, -bound, bound)), np.round(np.clip(pred, -bound, bound)))


def regression_metrics(pred, true) -> dict:
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    non_zero = true != 0
    has0_true, has0_pred = true >= 0, pred >= 0
    non0_true, non0_pred = true[non_zero] > 0, pred[non_zero] > 0
    return {
        "has0_acc2": accuracy(has0_true, has0_pred),
        "has0_f1": weighted_f1(has0_true, has0_pred, 2),
        "non0_acc2": accuracy(non0_true, non0_pred),
        "non0_f1": weighted_f1(non0_true, non0_pred, 2),
        "acc3": _multiclass_acc(pred, true, 1.0),
        "acc5": _multiclass_acc(pred, true, 2.0),
        "acc7": _multiclass_acc(pred, true, 3.0),
        "mae": float(np.abs(pred - true).mean()) if len(true) else float("nan"),
        "corr": pearson(pred, true),
        "n": int(len(true)),
    }


def classification_metrics(logits_or_probs, true, labels: list[str]) -> dict:
    """Metrics from per-class scores [N, L] and true class indices [N]."""
    scores = np.asarray(logits_or_probs, dtype=float)
    true = np.asarray(true, dtype=np.int64)
    pred = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(true, pred, len(labels))
    out = {
        "accuracy": accuracy(true, pred),
        "weighted_f1": weighted_f1(true, pred, len(labels)),
        "confusion_matrix": matrix.tolist(),
        "labels": list(labels),
        "n": int(len(true)),
    }
    if len(labels) == 2:
        out["acc2"] = out["accuracy"]
    if tuple(labels) == SENTIMENT_ORDER:
        neg, neu, pos = 0, 1, 2
        out["acc3"] = out["accuracy"]
        pred2 = scores[:, [neg, pos]].argmax(axis=1)  # 1 = positive
        has0_true = (true == pos).astype(np.int64)
        out["has0_acc2"] = accuracy(has0_true, pred2)
        out["has0_f1"] = weighted_f1(has0_true, pred2, 2)
        keep = true != neu
        out["non0_acc2"] = accuracy(has0_true[keep], pred2[keep])
        out["non0_f1"] = weighted_f1(has0_true[keep], pred2[keep], 2)
    return out
