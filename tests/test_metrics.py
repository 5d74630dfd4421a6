"""metrics.py against hand-computed values: the hard-label metrics, log loss as Kaggle computes it, and which
score is better."""
from __future__ import annotations

import numpy as np
import pytest

import metrics
from errors import OptionError


def one_hot(predicted, classes=3) -> np.ndarray:
    return np.eye(classes)[predicted]


def test_hard_label_metrics_with_a_class_never_predicted():
    labels = np.array([0, 0, 1, 1, 2])
    probs = one_hot([0, 1, 1, 1, 0]) * 0.7 + 0.1  # argmax as one-hot; class 2 is never predicted
    assert metrics.score("accuracy", probs, labels) == pytest.approx(3 / 5)
    # recall per class: 1/2, 2/2, 0/1
    assert metrics.score("balanced_accuracy", probs, labels) == pytest.approx((0.5 + 1 + 0) / 3)
    # F1 = 2TP / (2TP + FP + FN): class 0: 2/(2+1+1), class 1: 4/(4+1+0), class 2: no true positive, 0
    assert metrics.score("macro_f1", probs, labels) == pytest.approx((0.5 + 0.8 + 0) / 3)


def test_a_class_only_predicted_counts_for_f1_not_for_balanced_accuracy():
    labels = np.array([0, 0, 1])
    probs = one_hot([0, 2, 1])
    assert metrics.score("balanced_accuracy", probs, labels) == pytest.approx((0.5 + 1) / 2)
    assert metrics.score("macro_f1", probs, labels) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_log_loss_clips_and_renormalises_like_kaggle():
    labels = np.array([0, 0])
    probs = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])  # the second row gives its true class 0
    eps = 1e-15
    expected = -(np.log(0.5 / (1 + eps)) + np.log(eps / (1 + eps))) / 2  # clipped, then rows summed to 1 again
    assert metrics.score("log_loss", probs, labels) == pytest.approx(expected, rel=1e-12)
    assert 17.6 < expected < 17.7  # finite: one confident mistake costs -log(1e-15) = 34.5
    assert 0 <= metrics.score("log_loss", one_hot([0, 0]), labels) < 1e-12
    # rows that do not sum to 1 are renormalised: a scaled row scores the same
    assert metrics.score("log_loss", probs[:1] * 3, labels[:1]) == pytest.approx(np.log(2))


def test_which_score_is_better():
    assert [metrics.higher_is_better(m) for m in metrics.METRICS] == [True, True, True, False]
    assert metrics.better("accuracy", 0.9, 0.8) and not metrics.better("accuracy", 0.8, 0.8)
    assert metrics.better("log_loss", 0.2, 0.3) and not metrics.better("log_loss", 0.3, 0.2)
    with pytest.raises(OptionError, match="unknown metric 'auc'"):
        metrics.score("auc", one_hot([0]), np.array([0]))


def test_accuracy_of_hard_labels_is_the_accuracy_of_their_probabilities():
    labels = np.array([0, 0, 1, 1, 2])
    probs = one_hot([0, 1, 1, 1, 0]) * 0.7 + 0.1
    assert metrics.accuracy(probs.argmax(1), labels) == metrics.score("accuracy", probs, labels) == pytest.approx(3 / 5)
    assert metrics.accuracy(["cat", "dog", "cat"], ["cat", "cat", "cat"]) == pytest.approx(2 / 3)  # names, too
    with pytest.raises(ValueError):
        metrics.accuracy([], [])
