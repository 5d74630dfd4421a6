"""The competition's metric: one score of class probabilities against true labels, for the trainer's
validation (`--metric`, the run config's "metric"), the ensemble's weights (ensemble.py) and predict.py's reports.

    score("macro_f1", probs, labels)      # probs: (N, C) probabilities, labels: (N,) class indices
    accuracy(predicted, labels)           # hard labels: class indices, or names as in a submission
    better("log_loss", 0.21, 0.25)        # True: lower is better for log loss

The hard-label metrics score the argmax of each row. Balanced accuracy is the mean recall over the classes
present in the labels; macro F1 the mean per-class F1 over the classes present in the labels or the
predictions (a class without a true positive has F1 0); both as scikit-learn computes them. Log loss is
computed the way Kaggle does: probabilities clipped to [1e-15, 1 - 1e-15] and renormalised per row, so one
confident mistake costs about 34.5, not infinity.
"""
from __future__ import annotations

import numpy as np

from errors import OptionError

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")
LOG_LOSS_EPS = 1e-15


def higher_is_better(metric: str) -> bool:
    _check(metric)
    return metric != "log_loss"


def better(metric: str, a: float, b: float) -> bool:
    """Whether score `a` is strictly better than `b` (NaN is never better)."""
    return a > b if higher_is_better(metric) else a < b


def accuracy(predicted, labels) -> float:
    """The share of `predicted` labels equal to the true `labels` (class indices, or class names), N > 0."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.ndim != 1 or predicted.shape != labels.shape or len(labels) == 0:
        raise ValueError(f"expected predicted and true labels (N,) with N > 0, got {predicted.shape} and "
                         f"{labels.shape}")
    return float((predicted == labels).mean())


def score(metric: str, probs: np.ndarray, labels: np.ndarray) -> float:
    """`metric` of probabilities (N, C) against integer labels (N,)."""
    _check(metric)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (len(probs),) or len(probs) == 0:
        raise ValueError(f"expected probabilities (N, C) and labels (N,) with N > 0, got {probs.shape} and "
                         f"{labels.shape}")
    n, classes = probs.shape
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must be class indices in [0, {classes}), got {labels.min()}..{labels.max()}")
    labels = labels.astype(np.int64)
    if metric == "log_loss":
        clipped = np.clip(probs, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        clipped /= clipped.sum(1, keepdims=True)
        return float(-np.log(clipped[np.arange(n), labels]).mean())
    predicted = probs.argmax(1)
    if metric == "accuracy":
        return accuracy(predicted, labels)
    true_count = np.bincount(labels, minlength=classes)
    predicted_count = np.bincount(predicted, minlength=classes)
    hits = np.bincount(labels[predicted == labels], minlength=classes)
    if metric == "balanced_accuracy":
        present = true_count > 0
        return float((hits[present] / true_count[present]).mean())
    seen = (true_count + predicted_count) > 0  # macro_f1: 2TP / (2TP + FP + FN) = 2TP / (true + predicted)
    return float((2 * hits[seen] / (true_count[seen] + predicted_count[seen])).mean())


def _check(metric: str):
    if metric not in METRICS:
        raise OptionError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")
