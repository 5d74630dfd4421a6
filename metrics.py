"""The competition's metric: one score of probabilities against true labels, for the trainer's validation
(`--metric`, the run config's "metric"), the fitted multi-label thresholds, the ensemble's weights (ensemble.py)
and predict.py's reports.

    score("macro_f1", probs, labels)      # probs (N, C); labels (N,) class indices or (N, C) multi-hot
    score("f2_samples", probs, tags, thresholds)  # multi-label: the decisions of `decide(probs, thresholds)`
    accuracy(predicted, labels)           # hard labels: class indices, or names as in a submission
    better("log_loss", 0.21, 0.25)        # True: lower is better for log loss

Single-label probabilities are softmax rows, scored through their argmax where a metric needs a class; multi-label
ones are independent sigmoid probabilities (labels.ndim == 2 says which), scored through the decisions
`decide(probs, thresholds)`: the tags over their threshold (0.5 unless fitted by `fit_thresholds`), or the most
probable tag when none is. scikit-learn computes every metric it has; Kaggle's names in quotes:

- accuracy: "Categorization Accuracy", the share of right argmax classes; multi-label: subset accuracy (every tag
  of an image right).
- balanced_accuracy: mean recall over the classes present in the labels; multi-label: the mean over tags of each
  tag's binary balanced accuracy.
- macro_f1: "Macro F1", the mean per-class F1 over the classes in the labels or predictions (a class without a
  true positive has F1 0); multi-label: over every tag, of the decisions.
- log_loss: "Multi-class Log Loss", Kaggle's way: probabilities clipped to [1e-15, 1 - 1e-15] and rows renormalised,
  so one confident mistake costs about 34.5, not infinity (written here: scikit-learn no longer clips at 1e-15);
  multi-label: the mean binary log loss over every image and tag ("Mean Column-wise Log Loss").
- roc_auc: "AUC" (area under the ROC curve); two classes: column 1 against label 1 (class names are in natural
  order, so "1", "true", "yes", "malignant" after "0", "false", "no", "benign"; predict.py names the positive class
  with `positive_class`); more classes or tags: "Mean Column-wise AUC", the macro mean of one-vs-rest AUCs over the
  classes that have both outcomes in the labels.
- quadratic_kappa: "Quadratic Weighted Kappa" of the argmax against the label, class indices as the ordinal scale
  (natural order puts numeric class names in numeric order); single-label only.
- f1_samples, f2_samples: "Mean F1 / Mean F2 Score", the F-beta of each image's decisions averaged over images
  (single-label: of the argmax, which makes them accuracy).
- map@K (any K >= 1): "MAP@K", mean over images of sum_k P(k) rel(k) / min(#true, K) over the K most probable
  classes (written here: scikit-learn has none).

A metric undefined on these labels (AUC with one outcome, kappa with one class in all) scores NaN rather than
raising, and NaN is never `better`.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np

from errors import OptionError

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "roc_auc", "quadratic_kappa", "f1_samples",
           "f2_samples")
LOG_LOSS_EPS = 1e-15
DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = np.round(np.arange(0.05, 0.95 + 1e-9, 0.01), 2)
THRESHOLD_PASSES = 3  # each pass revisits every class; the search stops early after a pass that moves none
POSITIVE_NAMES = ("1", "true", "yes")
_MAP_AT_K = re.compile(r"map@([1-9][0-9]*)")
_DECISION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "f1_samples", "f2_samples")
_SINGLE_LABEL_ONLY = ("quadratic_kappa",)
_BETA = {"f1_samples": 1.0, "f2_samples": 2.0}


# ----------------------------------------------------------------------------------------------
# Which metric, and which way is better
# ----------------------------------------------------------------------------------------------

def _sk():
    """scikit-learn's metrics, imported when first scored: the import takes seconds of every run's start-up."""
    from sklearn import metrics as sk
    return sk


def check_metric(metric: str, multi_label: bool | None = None) -> str:
    """`metric` if it is one of METRICS or map@K (K >= 1), else an OptionError listing the choices; with
    `multi_label=True`, also an error for a metric that needs single-label data."""
    if metric not in METRICS and not _MAP_AT_K.fullmatch(str(metric)):
        raise OptionError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)} or map@K (K >= 1, "
                          "e.g. map@5)", option="metric", value=metric or None)
    if multi_label and metric in _SINGLE_LABEL_ONLY:
        raise OptionError(f"{metric} scores one class per image and these labels are multi-label: choose one of "
                          f"{', '.join(m for m in METRICS if m not in _SINGLE_LABEL_ONLY)} or map@K",
                          option="metric", value=metric)
    return metric


def top_k(metric: str) -> int | None:
    """K of "map@K", else None."""
    match = _MAP_AT_K.fullmatch(check_metric(metric))
    return int(match.group(1)) if match else None


def higher_is_better(metric: str) -> bool:
    return check_metric(metric) != "log_loss"


def better(metric: str, a: float, b: float) -> bool:
    """Whether score `a` is strictly better than `b`: NaN is never better, and any number is better than NaN
    (a first epoch whose score is undefined does not stay the best)."""
    if math.isnan(a) or math.isnan(b):
        return not math.isnan(a)
    return a > b if higher_is_better(metric) else a < b


def needs_score(metric: str) -> bool:
    """Whether the metric judges probabilities rather than labels (a submission of scores, not classes)."""
    return check_metric(metric) in ("roc_auc", "log_loss")


def uses_thresholds(metric: str) -> bool:
    """Whether the metric scores multi-label decisions (tags over their thresholds), so thresholds are fitted."""
    return check_metric(metric) in _DECISION_METRICS


def positive_class(class_names) -> int:
    """The index of the positive class of a binary problem: the class named 1, true or yes (in any case), else
    the second in natural order (index 1)."""
    names = [str(name).strip().lower() for name in class_names]
    for wanted in POSITIVE_NAMES:
        if wanted in names:
            return names.index(wanted)
    return 1 if len(names) > 1 else 0


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------

def accuracy(predicted, labels) -> float:
    """The share of `predicted` labels equal to the true `labels` (class indices, or class names), N > 0."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.ndim != 1 or predicted.shape != labels.shape or len(labels) == 0:
        raise ValueError(f"expected predicted and true labels (N,) with N > 0, got {predicted.shape} and "
                         f"{labels.shape}")
    return float(np.mean(predicted == labels))


def decide(probs: np.ndarray, thresholds=None) -> np.ndarray:
    """Multi-label decisions (N, C) bool: the tags whose probability is over their threshold (`thresholds` (C,),
    or one number; 0.5 by default), and the most probable tag for an image where none is."""
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    decisions = probs > thresholds
    empty = np.flatnonzero(~decisions.any(1))
    decisions[empty, probs[empty].argmax(1)] = True
    return decisions


def score(metric: str, probs: np.ndarray, labels: np.ndarray, thresholds=None) -> float:
    """`metric` of probabilities (N, C) against labels: class indices (N,), or multi-hot (N, C) for multi-label
    data, whose decisions use `thresholds` (C,) (default 0.5). NaN where the metric is undefined on these labels
    or the probabilities are not finite."""
    check_metric(metric)
    probs, labels = _checked(probs, labels)
    if not np.isfinite(probs).all():
        return math.nan
    with warnings.catch_warnings():  # undefined cases are NaN or 0 by choice; scikit-learn's warnings say so too
        warnings.simplefilter("ignore")
        if labels.ndim == 2:
            return float(_multi_label_score(metric, probs, labels, thresholds))
        return float(_single_label_score(metric, probs, labels))


def _checked(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or labels.shape not in ((len(probs),), probs.shape) or len(probs) == 0:
        raise ValueError(f"expected probabilities (N, C) and labels (N,) or (N, C) with N > 0, got {probs.shape} "
                         f"and {labels.shape}")
    if labels.ndim == 2:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("multi-label labels must be 0/1")
        return probs, labels.astype(np.uint8)
    classes = probs.shape[1]
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must be class indices in [0, {classes}), got {labels.min()}..{labels.max()}")
    return probs, labels.astype(np.int64)


def _single_label_score(metric: str, probs: np.ndarray, labels: np.ndarray) -> float:
    n, classes = probs.shape
    if metric == "log_loss":
        clipped = np.clip(probs, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        clipped /= clipped.sum(1, keepdims=True)
        return -np.log(clipped[np.arange(n), labels]).mean()
    if metric == "roc_auc" and classes == 2:
        return _binary_auc(labels == 1, probs[:, 1])
    if metric == "roc_auc" or metric.startswith("map@"):
        truth = np.eye(classes, dtype=np.uint8)[labels]
        return _macro_auc(truth, probs) if metric == "roc_auc" else _map_at_k(truth, probs, top_k(metric))
    predicted = probs.argmax(1)
    if metric == "accuracy":  # by hand (`accuracy`): scikit-learn's import would cost every run seconds
        return accuracy(predicted, labels)
    if metric == "balanced_accuracy":
        return _sk().balanced_accuracy_score(labels, predicted)
    if metric == "macro_f1":
        return _sk().f1_score(labels, predicted, average="macro", zero_division=0)
    if metric == "quadratic_kappa":
        kappa = _sk().cohen_kappa_score(labels, predicted, weights="quadratic", labels=np.arange(classes))
        return kappa if np.isfinite(kappa) else math.nan
    one_hot = np.eye(classes, dtype=np.uint8)
    return _sk().fbeta_score(one_hot[labels], one_hot[predicted], beta=_BETA[metric], average="samples",
                             zero_division=0)


def _multi_label_score(metric: str, probs: np.ndarray, labels: np.ndarray, thresholds) -> float:
    check_metric(metric, multi_label=True)
    if metric == "log_loss":
        clipped = np.clip(probs, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        return -np.where(labels == 1, np.log(clipped), np.log1p(-clipped)).mean()
    if metric == "roc_auc":
        return _macro_auc(labels, probs)
    if metric.startswith("map@"):
        return _map_at_k(labels, probs, top_k(metric))
    decisions = decide(probs, thresholds).astype(np.uint8)
    if metric == "accuracy":  # exact match of every tag, as scikit-learn's subset accuracy
        return float(np.mean(np.all(decisions == labels, axis=1)))
    if metric == "balanced_accuracy":
        return np.mean([_sk().balanced_accuracy_score(labels[:, j], decisions[:, j]) for j in range(labels.shape[1])])
    if metric == "macro_f1":
        return _sk().f1_score(labels, decisions, average="macro", zero_division=0)
    return _sk().fbeta_score(labels, decisions, beta=_BETA[metric], average="samples", zero_division=0)


def _binary_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    if truth.all() or not truth.any():
        return math.nan
    return _sk().roc_auc_score(truth, scores)


def _macro_auc(truth: np.ndarray, probs: np.ndarray) -> float:
    """The mean one-vs-rest AUC over the columns of `truth` (N, C) that hold both outcomes."""
    positives = truth.sum(0)
    both = (positives > 0) & (positives < len(truth))
    if not both.any():
        return math.nan
    return _sk().roc_auc_score(truth[:, both], probs[:, both], average="macro")


def _map_at_k(truth: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Kaggle's MAP@K of the K most probable classes of each row (ties: the lower class index first) against
    the true classes `truth` (N, C); a row without any true class scores 0."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    relevant = np.take_along_axis(truth, top, axis=1).astype(np.float64)
    precision = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    found = np.minimum(truth.sum(1), k)
    return np.mean(np.divide((precision * relevant).sum(1), found, out=np.zeros(len(truth)), where=found > 0))


# ----------------------------------------------------------------------------------------------
# Multi-label thresholds
# ----------------------------------------------------------------------------------------------

def fit_thresholds(metric: str, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class thresholds (C,) that make `decide(probs, thresholds)` score best by `metric` on these images:
    the best common threshold of THRESHOLD_GRID, then coordinate ascent over the grid, one class at a time, for
    at most THRESHOLD_PASSES passes (a change must strictly improve the score). 0.5 everywhere for single-label
    labels and for metrics that do not score decisions."""
    check_metric(metric)
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    thresholds = np.full(probs.shape[1] if probs.ndim == 2 else 0, DEFAULT_THRESHOLD)
    if labels.ndim != 2 or not uses_thresholds(metric) or len(probs) == 0 or not np.isfinite(probs).all():
        return thresholds
    probs, labels = _checked(probs, labels)
    search = _ThresholdSearch(metric, probs, labels)
    common = [search.value(np.full(probs.shape[1], t)) for t in THRESHOLD_GRID]
    if np.isfinite(common).any():
        thresholds[:] = THRESHOLD_GRID[int(np.nanargmax(common))]
    for _ in range(THRESHOLD_PASSES):
        changed = False
        for c in range(probs.shape[1]):
            changed |= search.improve(thresholds, c)
        if not changed:
            break
    return thresholds


class _ThresholdSearch:
    """Coordinate ascent for one class's threshold at a time. Moving class c's threshold only switches c on or
    off in each image (and an image left without any tag takes its most probable one), so each image adds one of
    two contributions to the metric's sums; binning the images by the grid value their probability of c passes
    scores every grid value at once, in one look at the images rather than one full score per grid value."""

    def __init__(self, metric: str, probs: np.ndarray, labels: np.ndarray):
        self.metric, self.probs, self.labels = metric, probs, labels.astype(bool)
        self.n_true, self.tag_true = labels.sum(1), labels.sum(0)  # per image, per tag
        self.top = probs.argmax(1)
        self.top_right = self.labels[np.arange(len(probs)), self.top]
        self.per_image = metric in ("accuracy", "f1_samples", "f2_samples")

    def value(self, thresholds: np.ndarray) -> float:
        """The metric of `decide(self.probs, thresholds)`; it equals `score` of them."""
        decisions = decide(self.probs, thresholds)
        hits = decisions & self.labels
        if self.per_image:
            return float(self._image_values(hits.sum(1), decisions.sum(1)).mean())
        return float(self._tag_value(hits.sum(0)[None], decisions.sum(0)[None])[0])

    def _image_values(self, tp: np.ndarray, decided: np.ndarray) -> np.ndarray:
        """Each image's share of the metric, from its true positives and decided tags (N,)."""
        if self.metric == "accuracy":  # no tag wrong: false positives + misses = decided + true - 2 tp = 0
            return (decided + self.n_true - 2 * tp == 0).astype(np.float64)
        beta2 = _BETA[self.metric] ** 2
        return (1 + beta2) * tp / (beta2 * self.n_true + decided)  # every image decides a tag: never 0 / 0

    def _tag_value(self, tp: np.ndarray, decided: np.ndarray) -> np.ndarray:
        """The metric (G,) from each candidate's true positives and decided images per tag (G, C)."""
        n_true = self.tag_true[None]
        if self.metric == "macro_f1":
            sums = n_true + decided
            return np.divide(2 * tp, sums, out=np.zeros(sums.shape), where=sums > 0).mean(1)
        n_false = len(self.probs) - n_true
        recall = np.divide(tp, n_true, out=np.zeros(tp.shape), where=n_true > 0)
        specificity = np.divide(n_false - (decided - tp), n_false, out=np.zeros(tp.shape), where=n_false > 0)
        return ((recall + specificity) / np.maximum((n_true > 0).astype(int) + (n_false > 0), 1)).mean(1)

    def improve(self, thresholds: np.ndarray, c: int) -> bool:
        """Move class `c`'s threshold to the grid value that scores best, when it strictly beats the current one."""
        values = self._candidates(thresholds, c)
        current = int(np.abs(THRESHOLD_GRID - thresholds[c]).argmin())
        best = int(np.nanargmax(values)) if np.isfinite(values).any() else current
        if not values[best] > values[current] + 1e-12:
            return False
        thresholds[c] = THRESHOLD_GRID[best]
        return True

    def _candidates(self, thresholds: np.ndarray, c: int) -> np.ndarray:
        """The metric (G,) for every grid value of class c's threshold, the others kept."""
        over = self.probs > thresholds
        over[:, c] = False  # the other tags' decisions, before the fallback
        others, other_tp = over.sum(1), (over & self.labels).sum(1)
        alone = others == 0  # images that decide c alone when c passes, else their most probable tag
        truth_c = self.labels[:, c]
        passes = np.searchsorted(THRESHOLD_GRID, self.probs[:, c])  # c is on for the grid values below this

        def on_from(delta: np.ndarray) -> np.ndarray:  # (G, ...): the sum of delta over the images c is on in
            width = delta.shape[1] if delta.ndim == 2 else 1
            index = (passes[:, None] * width + np.arange(width)).ravel()
            binned = np.bincount(index, delta.ravel(), (len(THRESHOLD_GRID) + 1) * width).reshape(-1, width)
            on = np.cumsum(binned[::-1], axis=0)[::-1][1:]
            return on if delta.ndim == 2 else on[:, 0]

        if self.per_image:
            off = self._image_values(np.where(alone, self.top_right, other_tp), np.where(alone, 1, others))
            on = self._image_values(other_tp + truth_c, others + 1)
            return (off.sum() + on_from(on - off)) / len(self.probs)
        to_top = np.eye(self.probs.shape[1])[self.top] * alone[:, None]  # what an alone image adds when c is off
        counts = []
        for base, own, fallen in (((over & self.labels).sum(0), truth_c, to_top * self.top_right[:, None]),
                                  (over.sum(0), 1.0, to_top)):
            delta = -fallen
            delta[:, c] += own
            counts.append(base + fallen.sum(0) + on_from(delta))
        return self._tag_value(*counts)
