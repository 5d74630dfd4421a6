"""metrics.py against hand-computed values and scikit-learn (the reference): the single-label metrics, log loss
as Kaggle computes it, ROC AUC, quadratic kappa, MAP@K, the multi-label decisions and their metrics, NaN where a
metric is undefined, the fitted thresholds, the positive class, and which score is better."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as sk

import errors
import metrics
from conftest import ROOT
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
    assert metrics.METRICS[:4] == ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")
    assert [metrics.higher_is_better(m) for m in metrics.METRICS] == [True, True, True, False, True, True, True, True]
    assert metrics.higher_is_better("map@5")
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


def softmax_rows(rng, labels, classes, signal=1.5) -> np.ndarray:
    logits = rng.normal(0, 1, (len(labels), classes))
    logits[np.arange(len(labels)), labels] += signal
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def test_single_label_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    probs = softmax_rows(rng, labels, 5)
    predicted = probs.argmax(1)
    assert metrics.score("accuracy", probs, labels) == pytest.approx(sk.accuracy_score(labels, predicted))
    assert metrics.score("balanced_accuracy", probs, labels) == pytest.approx(
        sk.balanced_accuracy_score(labels, predicted))
    assert metrics.score("macro_f1", probs, labels) == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert metrics.score("log_loss", probs, labels) == pytest.approx(sk.log_loss(labels, probs), rel=1e-9)
    assert metrics.score("roc_auc", probs, labels) == pytest.approx(
        sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert metrics.score("quadratic_kappa", probs, labels) == pytest.approx(
        sk.cohen_kappa_score(labels, predicted, weights="quadratic"))
    # one class per image: the mean F-beta per image is the share of right images
    assert metrics.score("f1_samples", probs, labels) == metrics.score("f2_samples", probs, labels) == pytest.approx(
        metrics.score("accuracy", probs, labels))
    assert metrics.score("map@1", probs, labels) == pytest.approx(metrics.score("accuracy", probs, labels))


def test_roc_auc_by_hand():
    # two classes: column 1 against label 1; pairs (positive, negative) ranked right: 0.35 > 0.1, 0.8 > both
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    binary = np.stack([1 - positive, positive], 1)
    assert metrics.score("roc_auc", binary, np.array([0, 0, 1, 1])) == pytest.approx(3 / 4)
    # three classes, class 2 absent from the labels: the mean over classes 0 and 1, 3/4 each
    probs = np.array([[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    assert metrics.score("roc_auc", probs, np.array([0, 0, 1, 1])) == pytest.approx(3 / 4)


def test_quadratic_kappa_by_hand():
    # labels 0 1 2, predicted 0 2 2; weights (i - j)^2 / 4: observed 1/4, expected 5/4, kappa = 1 - 1/5
    labels = np.array([0, 1, 2])
    assert metrics.score("quadratic_kappa", one_hot([0, 2, 2]), labels) == pytest.approx(0.8)
    assert metrics.score("quadratic_kappa", one_hot([0, 1, 2]), labels) == pytest.approx(1.0)
    # classes absent from both still set the scale: grades 0 and 3 of 4 confused cost the most
    worst = metrics.score("quadratic_kappa", np.eye(4)[[3, 0]], np.array([0, 3]))
    assert worst == pytest.approx(sk.cohen_kappa_score([0, 3], [3, 0], weights="quadratic", labels=range(4)))
    assert worst < 0


def test_map_at_k_by_hand():
    # single-label, MAP@3: the true class ranked first (1), third (1/3), fourth (0)
    probs = np.array([[0.4, 0.3, 0.2, 0.1], [0.4, 0.2, 0.3, 0.1], [0.4, 0.3, 0.1, 0.2]])
    labels = np.array([0, 1, 2])
    assert metrics.score("map@3", probs, labels) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert metrics.score("map@4", probs, labels) == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    assert metrics.score("map@10", probs, labels) == metrics.score("map@4", probs, labels)  # K beyond C: all of them
    # multi-label, MAP@3: true {0, 2} ranked 1st and 3rd: (1 + 2/3) / 2; true {3} ranked 4th: 0;
    # true {1} ranked 2nd: 1/2; four true tags, the top 3 all true: 3 / min(4, 3) = 1
    probs = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.9, 0.8, 0.05], [0.1, 0.8, 0.9, 0.3], [0.9, 0.8, 0.7, 0.6]])
    tags = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=np.uint8)
    assert metrics.score("map@3", probs, tags) == pytest.approx((5 / 6 + 0 + 1 / 2 + 1) / 4)


# four images, tags a b c; at 0.5 the decisions are {a, c}, {b} (none passes: the most probable), {a, c}, {c}
TAG_PROBS = np.array([[0.9, 0.2, 0.6], [0.3, 0.4, 0.1], [0.7, 0.1, 0.8], [0.2, 0.3, 0.45]])
TAGS = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.uint8)


def test_decisions_take_the_most_probable_tag_when_none_passes():
    expected = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(metrics.decide(TAG_PROBS, None), expected)
    np.testing.assert_array_equal(metrics.decide(TAG_PROBS, [0.5, 0.5, 0.5]), expected)
    np.testing.assert_array_equal(metrics.decide(TAG_PROBS, [0.95, 0.05, 0.95]),  # per-class thresholds
                                  [[0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(metrics.decide(TAG_PROBS, 0.99), np.eye(3, dtype=bool)[[0, 1, 2, 2]])


def test_multi_label_metrics_by_hand():
    assert metrics.score("accuracy", TAG_PROBS, TAGS) == pytest.approx(3 / 4)  # image 2 misses b
    # image 2: tp 2, 2 decided, 3 true; F-beta = (1 + b^2) tp / (b^2 true + decided)
    assert metrics.score("f2_samples", TAG_PROBS, TAGS) == pytest.approx((3 + 10 / 14) / 4)
    assert metrics.score("f1_samples", TAG_PROBS, TAGS) == pytest.approx((3 + 4 / 5) / 4)
    # per tag: a 1, b: true in 2 images, decided in 1 of them: 2/3, c 1
    assert metrics.score("macro_f1", TAG_PROBS, TAGS) == pytest.approx((1 + 2 / 3 + 1) / 3)
    # per tag balanced accuracy: a 1, b (1/2 + 2/2) / 2, c: recall 1, the one negative decided no: 1
    assert metrics.score("balanced_accuracy", TAG_PROBS, TAGS) == pytest.approx((1 + 3 / 4 + 1) / 3)
    # AUC per tag: a 1, b: 0.4 beats both negatives, 0.1 neither: 1/2, c 1
    assert metrics.score("roc_auc", TAG_PROBS, TAGS) == pytest.approx((1 + 1 / 2 + 1) / 3)
    never = np.c_[TAG_PROBS, np.full(4, 0.05)], np.c_[TAGS, np.zeros(4, np.uint8)]
    assert metrics.score("roc_auc", *never) == pytest.approx(5 / 6)  # a tag without positives has no AUC
    expected = np.mean([sk.log_loss(TAGS[:, j], TAG_PROBS[:, j]) for j in range(3)])  # mean binary log loss
    assert metrics.score("log_loss", TAG_PROBS, TAGS) == pytest.approx(expected, rel=1e-12)
    # thresholds change the decisions: b at 0.05 decides b everywhere, a and c at 0.95 never (image 2: b alone)
    assert metrics.score("accuracy", TAG_PROBS, TAGS, [0.95, 0.05, 0.95]) == pytest.approx(1 / 4)
    decided = metrics.decide(TAG_PROBS, [0.95, 0.05, 0.95]).astype(int)
    assert metrics.score("f2_samples", TAG_PROBS, TAGS, [0.95, 0.05, 0.95]) == pytest.approx(
        sk.fbeta_score(TAGS, decided, beta=2, average="samples"))


def test_kappa_needs_single_label_data():
    with pytest.raises(OptionError, match="multi-label") as e:
        metrics.score("quadratic_kappa", TAG_PROBS, TAGS)
    assert e.value.option == "metric"
    assert metrics.check_metric("quadratic_kappa") == "quadratic_kappa"
    with pytest.raises(OptionError):
        metrics.check_metric("quadratic_kappa", multi_label=True)
    assert metrics.check_metric("f2_samples", multi_label=True) == "f2_samples"


def test_undefined_metrics_are_nan_not_errors():
    one_outcome = np.array([0, 0, 0])
    assert math.isnan(metrics.score("roc_auc", one_hot([0, 1, 0], 2), one_outcome))
    assert math.isnan(metrics.score("roc_auc", one_hot([0, 1, 2]), one_outcome))  # one class of three present
    assert math.isnan(metrics.score("roc_auc", TAG_PROBS, np.ones_like(TAGS)))  # every tag on every image
    assert math.isnan(metrics.score("quadratic_kappa", one_hot([1, 1]), np.array([1, 1])))  # no spread at all
    broken = np.full((3, 3), np.nan)
    for metric in metrics.METRICS + ("map@3",):
        assert math.isnan(metrics.score(metric, broken, np.array([0, 1, 2]))), metric
    # the trainer keeps NaN scores: NaN is never better, and any score is better than NaN
    for metric in ("accuracy", "log_loss"):
        assert not metrics.better(metric, math.nan, 0.5) and not metrics.better(metric, math.nan, math.nan)
        assert metrics.better(metric, 0.5, math.nan)


def test_check_metric_lists_the_choices():
    for name in metrics.METRICS + ("map@1", "map@5", "map@12"):
        assert metrics.check_metric(name) == name
    assert [metrics.top_k(m) for m in ("map@1", "map@5", "map@12", "accuracy")] == [1, 5, 12, None]
    for bad in ("auc", "map@0", "map@", "map@k", "map@-1", "map@05", "MAP@5", ""):
        with pytest.raises(OptionError) as e:
            metrics.check_metric(bad)
        assert e.value.option == "metric" and f"unknown metric {bad!r}" in str(e.value)
        assert all(name in str(e.value) for name in metrics.METRICS) and "map@K (K >= 1" in str(e.value)
    assert errors.flag(e.value.option) == "--metric"
    with pytest.raises(OptionError):
        metrics.higher_is_better("f3_samples")


def test_which_metrics_need_scores_and_thresholds():
    assert [m for m in metrics.METRICS + ("map@5",) if metrics.needs_score(m)] == ["log_loss", "roc_auc"]
    assert [m for m in metrics.METRICS + ("map@5",) if metrics.uses_thresholds(m)] == [
        "accuracy", "balanced_accuracy", "macro_f1", "f1_samples", "f2_samples"]


def test_positive_class():
    assert metrics.positive_class(["0", "1"]) == 1
    assert metrics.positive_class(["1", "0"]) == 0
    assert metrics.positive_class(["False", "True"]) == 1
    assert metrics.positive_class(["YES", "no"]) == 0
    assert metrics.positive_class(["benign", "malignant"]) == 1  # no such name: the second in natural order
    assert metrics.positive_class([0, 1]) == 1


def generated_tags(seed=0, n=600, tags=6):
    """Sigmoid probabilities that underrate the true tags, as a model trained on rare tags does: 0.5 misses many."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, tags)) < rng.uniform(0.1, 0.4, tags)).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, tags, n)] = 1  # every image has a tag
    probs = 1 / (1 + np.exp(-(rng.normal(-2.0, 1.0, (n, tags)) + 2.2 * labels)))
    return probs, labels


def test_fitted_thresholds_improve_f2_over_one_half():
    probs, labels = generated_tags()
    thresholds = metrics.fit_thresholds("f2_samples", probs, labels)
    assert thresholds.shape == (6,)
    fitted, default = metrics.score("f2_samples", probs, labels, thresholds), metrics.score("f2_samples", probs, labels)
    assert fitted > default + 0.05
    assert (thresholds < 0.5).all()  # F2 weighs misses four times: lower thresholds
    # no single class's threshold moved along the grid scores better: coordinate ascent settled
    for c in range(6):
        for moved in (metrics.THRESHOLD_GRID if c == 0 else (thresholds[c] - 0.01, thresholds[c] + 0.01, 0.05, 0.95)):
            trial = thresholds.copy()
            trial[c] = moved
            assert metrics.score("f2_samples", probs, labels, trial) <= fitted + 1e-12


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "macro_f1", "f1_samples", "f2_samples"])
def test_fitted_thresholds_are_per_class_grid_values_and_never_score_worse(metric):
    probs, labels = generated_tags(seed=1, n=400, tags=20)
    thresholds = metrics.fit_thresholds(metric, probs, labels)
    assert thresholds.shape == (20,) and ((thresholds >= 0.05) & (thresholds <= 0.95)).all()
    np.testing.assert_allclose(thresholds, np.round(thresholds, 2))
    assert metrics.score(metric, probs, labels, thresholds) >= metrics.score(metric, probs, labels)
    fitted = metrics.score(metric, probs, labels, thresholds)
    assert fitted >= max(metrics.score(metric, probs, labels, np.full(20, t)) for t in (0.05, 0.2, 0.5, 0.8, 0.95))
    for c in range(3):
        for moved in (thresholds[c] - 0.01, thresholds[c] + 0.01, 0.05, 0.95):
            trial = thresholds.copy()
            trial[c] = moved
            assert metrics.score(metric, probs, labels, trial) <= fitted + 1e-12, (c, moved)


def test_thresholds_stay_at_one_half_where_they_do_not_count():
    probs, labels = generated_tags(n=50)
    for metric in ("log_loss", "roc_auc", "map@3"):
        np.testing.assert_array_equal(metrics.fit_thresholds(metric, probs, labels), np.full(6, 0.5))
    rng = np.random.default_rng(0)
    single = rng.integers(0, 4, 30)
    np.testing.assert_array_equal(metrics.fit_thresholds("accuracy", softmax_rows(rng, single, 4), single),
                                  np.full(4, 0.5))
    np.testing.assert_array_equal(metrics.fit_thresholds("f2_samples", np.full((5, 6), np.nan), labels[:5]),
                                  np.full(6, 0.5))


def test_accuracy_by_hand_agrees_with_scikit_learn_and_a_plain_run_does_not_import_it():
    accuracy_score = sk.accuracy_score
    rng = np.random.default_rng(0)
    probs, labels = rng.dirichlet(np.ones(4), 50), rng.integers(0, 4, 50)
    assert metrics.score("accuracy", probs, labels) == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    tags, truth = rng.random((50, 3)), (rng.random((50, 3)) > 0.5).astype(np.uint8)
    decided = (tags > 0.5).astype(np.uint8)
    assert metrics.score("accuracy", tags, truth, [0.5] * 3) == pytest.approx(accuracy_score(truth, decided))
    assert metrics.accuracy(["a", "b", "b"], ["a", "b", "c"]) == pytest.approx(2 / 3)
    # scikit-learn takes seconds to import: the trainer and an accuracy-scored epoch leave it out
    code = ("import sys, numpy as np, trainer, metrics; metrics.score('accuracy', np.eye(3), np.arange(3)); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
