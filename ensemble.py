"""Ensembles: the members' weights for the competition's metric, chosen on the validation images they all
held out (or on the out-of-fold predictions of k-fold runs), and the table that says why.

    w = choose_weights(probs, labels, "macro_f1")   # probs: each member's (N, C) probabilities on the same images
    blend(probs, w.weights)                        # the ensemble's probabilities
    w.thresholds                                   # multi-label: the blend's thresholds, fitted on these images

Multi-label members blend their sigmoid probabilities the same way; labels are then (N, C) multi-hot.

A member is a model with its checkpoint (`Member`; predict.Predictor is one); the models are run elsewhere.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

import data
import metrics
import runs
from checkpoint import ModelSpec
from config import fold_base
from errors import DataError, OptionError


class Member(Protocol):
    """What the ensemble reads of a model: its checkpoint file and contents, and its spec."""
    path: Path
    checkpoint: dict
    spec: ModelSpec

    @property
    def run_dir(self) -> Path: ...

    @property
    def class_names(self) -> list[str]: ...


# Thresholds of `choose_weights` (its docstring says why each is what it is).
MIN_SHARED_IMAGES = 50
MIN_FIT_IMAGES = 200
MAX_FIT_STEPS = 20
MIX_SHARES = (1 / 2, 1 / 3, 1 / 5, 1 / 10)
BOOTSTRAP_RESAMPLES = 500
BOOTSTRAP_CONFIDENCE = 0.9


@dataclass
class Weighting:
    """The members' weights in the ensemble and how they were chosen. `choice` is "single", "equal",
    "best member", "fitted" or "given" (by hand); `reason` says why, for people; `warning` is set when the
    weights could not be fitted. The scores are on the `n_val` shared validation images, for `metric` (None
    where not measured)."""
    weights: np.ndarray
    choice: str
    reason: str
    metric: str
    n_val: int = 0
    member_scores: list[float] | None = None
    score: float | None = None
    warning: str = ""
    thresholds: np.ndarray | None = None  # multi-label: fitted for the blend on these images (None: not fitted)


def equal_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def _best_index(metric: str, scores: list[float]) -> int:
    """The first of the best scores."""
    return int(np.argmax(scores) if metrics.higher_is_better(metric) else np.argmin(scores))


def fit_ensemble_weights(probs: list[np.ndarray], labels: np.ndarray, metric: str,
                         max_steps: int = MAX_FIT_STEPS) -> np.ndarray:
    """Non-negative weights summing to 1 by greedy forward selection with replacement (Caruana et al. 2004,
    "Ensemble selection from libraries of models"): start from the best member alone; each step mixes (again)
    one member into the running blend, `(1 - a) * blend + a * member`, choosing the member and the share `a`
    among MIX_SHARES that score best, and only when that strictly improves the metric; at most `max_steps`
    steps. (Caruana's own step, an equal vote per pick, is the share 1/(picks + 1); offering smaller shares
    from the start lets a weaker but different member in with a small weight.) The fit never scores below
    the best member on these images (multi-label: deciding at 0.5; `choose_weights` compares at fitted
    thresholds)."""
    scores = [metrics.score(metric, p, labels) for p in probs]
    best = _best_index(metric, scores)
    weights = np.eye(len(probs))[best]
    blended, current = probs[best], scores[best]
    for _ in range(max_steps):
        trials = [(m, a) for m in range(len(probs)) for a in MIX_SHARES if weights[m] < 1]
        trial_scores = [metrics.score(metric, (1 - a) * blended + a * probs[m], labels) for m, a in trials]
        pick = _best_index(metric, trial_scores)
        if not metrics.better(metric, trial_scores[pick], current):
            break
        m, a = trials[pick]
        weights = (1 - a) * weights + a * np.eye(len(probs))[m]
        blended, current = (1 - a) * blended + a * probs[m], trial_scores[pick]
    return weights


def bootstrap_win_rate(metric: str, probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, thresholds_a: np.ndarray | None = None,
                       thresholds_b: np.ndarray | None = None) -> float:
    """The share of bootstrap resamples of the images (drawn with replacement, the same draw for both) on
    which `probs_a` scores strictly better than `probs_b` (multi-label: deciding at `thresholds_a` and
    `thresholds_b`): how sure a difference on these images is."""
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(resamples):
        idx = rng.integers(0, len(labels), len(labels))
        wins += metrics.better(metric, metrics.score(metric, probs_a[idx], labels[idx], thresholds_a),
                               metrics.score(metric, probs_b[idx], labels[idx], thresholds_b))
    return wins / resamples


@dataclass
class _Candidate:
    """A blend of the members: its weights, its probabilities, and its score on the shared images at the
    thresholds it would be submitted with (multi-label: fitted on these images; None for single-label)."""
    weights: np.ndarray
    probs: np.ndarray
    score: float
    thresholds: np.ndarray | None


def _candidate(probs: list[np.ndarray], weights: np.ndarray, labels: np.ndarray, metric: str) -> _Candidate:
    """The blend of `weights`, scored as it would be submitted: multi-label labels (N, C) decide with thresholds
    fitted for it on these images (metrics.fit_thresholds), so candidates compare at their own thresholds."""
    blended = blend(probs, weights)
    thresholds = metrics.fit_thresholds(metric, blended, labels) if labels.ndim == 2 else None
    return _Candidate(weights, blended, metrics.score(metric, blended, labels, thresholds), thresholds)


def _simple_choice(probs: list[np.ndarray], labels: np.ndarray, metric: str, members: list[_Candidate]):
    """(the candidate, its choice, its name, how it compares) of the simple choice: equal weights when they score
    at least the best member, else the best member alone."""
    best = members[_best_index(metric, [m.score for m in members])]
    equal = _candidate(probs, equal_weights(len(probs)), labels, metric)
    versus = f"equal weights score {equal.score:.4f}, the best member {best.score:.4f}"
    if metrics.better(metric, best.score, equal.score):
        return best, "best member", "the best member alone", versus
    return equal, "equal", "equal weights", versus


def choose_weights(probs: list[np.ndarray], labels: np.ndarray, metric: str) -> Weighting:
    """Weights for members whose probabilities `probs` on the same validation images with `labels` are known.

    The simple choice is equal weights when they score at least the best member, else the best member alone.
    Weights fitted by `fit_ensemble_weights` replace it only when the fit is clearly better, since weights
    fitted to a small validation set fit its noise (and the score they report is then optimistic):
    - fewer than MIN_SHARED_IMAGES (50) images: the simple choice, and a warning with each member's score: one
      image is 2% or more of such a set, so even that choice is uncertain (the same minimum as for the images
      that runs with different splits share);
    - fewer than MIN_FIT_IMAGES (200) images: the simple choice, no fit (one image moves accuracy by more than
      0.5%, as much as the differences a fit chases);
    - the fit must beat the simple choice in at least BOOTSTRAP_CONFIDENCE (90%) of BOOTSTRAP_RESAMPLES (500)
      bootstrap resamples of the images: for accuracy on 400 images, fixing 3 images net without breaking any
      passes, fixing one does not (it is not drawn in 37% of resamples);
    - at most MAX_FIT_STEPS (20) greedy steps, each mixing in a member with a share of 1/2, 1/3, 1/5 or 1/10.
    Every choice scores at least the best member on these images. Multi-label labels (N, C): each member, equal
    weights and the fitted weights are scored with thresholds fitted for them on these images (the greedy search
    itself decides at 0.5), and the chosen blend keeps its thresholds: the comparison is at the thresholds
    submitted."""
    n = len(labels)
    members = [_candidate(probs, np.eye(len(probs))[m], labels, metric) for m in range(len(probs))]
    scores = [m.score for m in members]
    simple, simple_choice, simple_name, versus = _simple_choice(probs, labels, metric, members)

    def chosen(pick: _Candidate, choice, reason, warning="") -> Weighting:
        return Weighting(pick.weights, choice, reason, metric, n, scores, pick.score, warning, pick.thresholds)

    if n < MIN_SHARED_IMAGES:
        return chosen(simple, simple_choice, f"{simple_name}, not fitted: {versus}",
                      f"WARNING: the members share only {n} validation images (fewer than {MIN_SHARED_IMAGES}): "
                      f"{simple_name} by their scores there, which are uncertain: "
                      + ", ".join(f"{s:.4f}" for s in scores) + " in the order given; check the ensemble on the "
                      "test images' answers (a solution file) or on more validation images")
    if n < MIN_FIT_IMAGES:
        return chosen(simple, simple_choice,
                      f"{simple_name}, not fitted: {n} shared validation images are too few to fit weights on "
                      f"(fewer than {MIN_FIT_IMAGES}); {versus}")
    fitted = _candidate(probs, fit_ensemble_weights(probs, labels, metric), labels, metric)
    if not metrics.better(metric, fitted.score, simple.score):
        return chosen(simple, simple_choice,
                      f"{simple_name}: fitted weights score {fitted.score:.4f}, no better; {versus}")
    wins = bootstrap_win_rate(metric, fitted.probs, simple.probs, labels, thresholds_a=fitted.thresholds,
                              thresholds_b=simple.thresholds)
    if wins < BOOTSTRAP_CONFIDENCE:
        return chosen(simple, simple_choice,
                      f"{simple_name}: fitted weights score {fitted.score:.4f} but beat it in only {wins:.0%} of "
                      f"{BOOTSTRAP_RESAMPLES} bootstrap resamples (< {BOOTSTRAP_CONFIDENCE:.0%}), within the noise; "
                      f"{versus}")
    return chosen(fitted, "fitted",
                  f"fitted (greedy selection), better than {simple_name} ({simple.score:.4f}) in {wins:.0%} of "
                  f"{BOOTSTRAP_RESAMPLES} bootstrap resamples; {versus}")


def given_weights(weights, n: int) -> np.ndarray:
    """Weights given by hand, one per member in the order given, non-negative, normalised to sum 1."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != n:
        raise OptionError(f"{len(w)} weight(s) for {n} models: give one per model, in the order the models are "
                          "given", option="weights", value=",".join(f"{v:g}" for v in w))
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise OptionError("weights must be non-negative numbers, not all 0", option="weights",
                          value=",".join(f"{v:g}" for v in w))
    return w / w.sum()


def weigh_given(weights: np.ndarray, probs: list[np.ndarray] | None, labels: np.ndarray | None,
                metric: str) -> Weighting:
    """Weights given by hand (`given_weights`), scored with each member on the shared validation images when their
    `probs` and `labels` are known (multi-label: the blend's thresholds fitted there)."""
    reason = "given by hand: " + ", ".join(f"{v:.3g}" for v in weights)
    if probs is None:
        return Weighting(weights, "given", reason, metric)
    scores = [_candidate(probs, np.eye(len(probs))[m], labels, metric).score for m in range(len(probs))]
    pick = _candidate(probs, weights, labels, metric)
    return Weighting(weights, "given", reason, metric, len(labels), scores, pick.score, thresholds=pick.thresholds)


def models_used(w: Weighting, names: list[str]) -> str:
    """Which of the members (`names`, in order) the ensemble uses, with their weights, and why any is left out:
    "the 2 models: A (weight 0.5), B (weight 0.5)" or "1 of 2 models: A (weight 1.0); B left out: ..."."""
    used = [f"{name} (weight {round(float(v), 3)})" for name, v in zip(names, w.weights) if v > 0]
    left = [name for name, v in zip(names, w.weights) if v <= 0]
    if not left:
        return f"the {len(names)} models: {', '.join(used)}" if len(names) > 1 else f"1 model: {used[0]}"
    return (f"{len(used)} of {len(names)} models: {', '.join(used)}; {', '.join(left)} left out: weight 0 "
            f"({w.reason})")


def blend(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted mean of the members' probabilities (weights sum to 1)."""
    return sum(w * p for w, p in zip(weights, probs) if w > 0)


def shared_val_files(checkpoints: list[dict]) -> list[str]:
    """The validation images (paths relative to the data folder) that every checkpoint held out, in the first
    one's order: all of them when the runs share one split (same data, seed and validation share), else those
    they have in common when there are at least MIN_SHARED_IMAGES; otherwise none."""
    held_out = [set(c["val_files"]) for c in checkpoints]
    common = set.intersection(*held_out)
    if all(s == common for s in held_out) or len(common) >= MIN_SHARED_IMAGES:
        return [rel for rel in checkpoints[0]["val_files"] if rel in common]
    return []


def validation_images(members: list[Member], data_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The files and labels of the validation images every checkpoint held out (`shared_val_files`), read
    from the training images of `data_dir`."""
    first = members[0].checkpoint
    shared = shared_val_files([p.checkpoint for p in members])
    if not shared:
        without = [str(p.path) for p in members if not p.checkpoint["val_files"]]
        if without:
            raise DataError(f"{', '.join(without)} trained without a validation split", option="val_split",
                            value=0)
        raise DataError(f"{' and '.join(str(p.path) for p in members)} hold out different validation images "
                        f"(another seed, validation share or data?), fewer than {MIN_SHARED_IMAGES} of them in common")
    config = first["config"]
    found = training_images(data_dir, config)
    by_rel = {Path(os.path.relpath(f, data_dir)).as_posix(): i for i, f in enumerate(found.files)}
    missing = [rel for rel in shared if rel not in by_rel]
    if missing:
        raise DataError(f"{len(missing)} validation image(s) of {members[0].path} are not training images of "
                        f"{data_dir} (trained on {config.get('data')!r}?):{data.listing(missing)}")
    rows = [by_rel[rel] for rel in shared]
    texts = [data.label_text(found.labels[i], found.class_names, found.multi_label) for i in rows]
    return [found.files[i] for i in rows], read_labels(texts, members[0], f"{data_dir}")


def training_images(data_dir: Path, config: dict) -> data.LabelledImages:
    """The training images of `data_dir` as the run of `config` found them: its labels file, image folder,
    columns and multi-label setting."""
    return data.find_labelled_images(data_dir, config.get("id_col") or None, config.get("label_col") or None,
                                     labels_file=config.get("labels") or None,
                                     train_dir=config.get("train_dir") or None, multi_label=config.get("multi_label"))


def read_labels(texts: list[str], member: Member, where: str) -> np.ndarray:
    """Labels as CSVs write them (data.label_text) in the member's classes: (N,) class indices, or (N, C)
    multi-hot for a multi-label model."""
    return data.parse_labels(texts, member.class_names, member.spec.multi_label, where)


def ensemble_thresholds(members: list[Member], weights: np.ndarray) -> np.ndarray | None:
    """A multi-label ensemble's thresholds without validation images to fit them on: the members' own (0.5 for a
    member without), weighted as their probabilities are; None for single-label models."""
    if not members[0].spec.multi_label:
        return None
    own = [np.asarray(m.spec.thresholds or [metrics.DEFAULT_THRESHOLD] * len(m.class_names), dtype=np.float64)
           for m in members]
    weights = np.asarray(weights, dtype=np.float64)
    return sum(w * t for w, t in zip(weights, own)) / weights.sum()


def are_folds(members: list[Member]) -> bool:
    """Whether the members are different folds of one k-fold run (same data, seed and number of folds)."""
    configs = [p.checkpoint["config"] for p in members]
    key = {(c.get("folds", 0), c.get("seed"), c.get("data"), c.get("arch")) for c in configs}
    folds = [c.get("fold", 0) for c in configs]
    return len(key) == 1 and configs[0].get("folds", 0) > 1 and len(set(folds)) == len(folds)


def fold_groups(members: list[Member]) -> list[tuple[Path, list[int]]] | None:
    """When the members are the complete fold sets of two or more k-fold runs, each with its out-of-fold file:
    [(that file, the indices of that run's members)], else None."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(members):
        c = p.checkpoint["config"]
        base = fold_base(c)
        if base is None:
            return None
        groups.setdefault((str(p.run_dir.parent / f"{base}-oof.csv"), c["folds"]), []).append(i)
    complete = all(len({members[i].checkpoint["config"]["fold"] for i in indices}) == folds == len(indices)
                   for (_, folds), indices in groups.items())
    if len(groups) < 2 or not complete or not all(Path(path).is_file() for path, _ in groups):
        return None
    return [(Path(path), indices) for (path, _), indices in groups.items()]


def fold_thresholds(members: list[Member]) -> np.ndarray | None:
    """The tags' thresholds that a multi-label k-fold run fitted on its out-of-fold predictions (RUNS/BASE-oof.json),
    for the blend of its folds; None for single-label models or without that file."""
    path = oof_summary_path(members)
    if not members[0].spec.multi_label or path is None:
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    thresholds = summary.get("thresholds") if isinstance(summary, dict) else None
    return np.asarray(thresholds, dtype=np.float64) if thresholds and len(thresholds) == len(members[0].class_names) \
        else None


def out_of_fold_weights(members: list[Member], groups: list[tuple[Path, list[int]]], metric: str) -> Weighting:
    """Weights of k-fold runs fitted (by `choose_weights`) on their out-of-fold predictions, which cover every
    training image once; each run's weight is shared equally by its folds."""
    class_names = members[0].class_names
    tables = []
    for path, _ in groups:
        files, labels, names, probs = runs.read_predictions(path)
        if names != class_names:
            raise DataError(f"{path}: other classes than the models'")
        tables.append(dict(zip(files, zip(labels, probs))))
    shared = sorted(set.intersection(*(set(t) for t in tables)), key=data.natural_key)
    if not shared:
        raise DataError(f"the out-of-fold files {', '.join(str(p) for p, _ in groups)} share no images: "
                        "were the runs trained on the same data?")
    labels = read_labels([tables[0][f][0] for f in shared], members[0], str(groups[0][0]))
    group_probs = [np.array([t[f][1] for f in shared]) for t in tables]
    chosen = choose_weights(group_probs, labels, metric)
    weights, scores = np.zeros(len(members)), [0.0] * len(members)
    for (_, indices), weight, score in zip(groups, chosen.weights, chosen.member_scores):
        for i in indices:
            weights[i], scores[i] = weight / len(indices), score
    return Weighting(weights, chosen.choice, f"on the out-of-fold predictions of {len(groups)} k-fold runs (their "
                     f"folds share each run's weight; without TTA): {chosen.reason}", metric, chosen.n_val, scores,
                     chosen.score, chosen.warning, chosen.thresholds)


def fold_scores(members: list[Member], metric: str) -> list[float | None]:
    """Each fold's best validation score for `metric`, as its run recorded it (None where not recorded): the
    folds of one k-fold run are weighted equally, and these scores say how each did on the images it held out.
    A fold trained for another metric is scored on its validation predictions (val_predictions.csv) instead."""
    scores = []
    for m in members:
        recorded = recorded_val_score(m.checkpoint, metric)
        scores.append(recorded if recorded is not None else _predictions_score(m, metric))
    return scores


def _predictions_score(member: Member, metric: str) -> float | None:
    """`metric` on the member's validation predictions at its best epoch (multi-label: at its own thresholds)."""
    path = member.run_dir / "val_predictions.csv"
    try:
        _, texts, names, probs = runs.read_predictions(path)
        if names != member.class_names or not texts:
            return None
        thresholds = np.asarray(member.spec.thresholds) if member.spec.multi_label and member.spec.thresholds else None
        return float(metrics.score(metric, np.array(probs), read_labels(texts, member, str(path)), thresholds))
    except (OSError, ValueError):
        return None


def recorded_val_score(checkpoint: dict, metric: str) -> float | None:
    """A run's best validation score for `metric` as it recorded it (checkpoint "best_val_score", else the best
    epoch's "val_score"; "best_val_acc" for accuracy); None when the run was trained for another metric."""
    value = None
    if metric == checkpoint["config"].get("metric", "accuracy"):
        value = checkpoint.get("best_val_score")
        if value is None:
            rows = [r for r in checkpoint.get("history", []) if r.get("epoch") == checkpoint.get("best_epoch")]
            value = rows[0].get("val_score") if rows else None
    if value is None and metric == "accuracy":
        value = checkpoint.get("best_val_acc")
    # best_val_acc is -1 before a first epoch; other metrics (kappa) may be negative
    usable = isinstance(value, (int, float)) and math.isfinite(value) and (metric != "accuracy" or value >= 0)
    return float(value) if usable else None


def oof_summary_path(members: list[Member]) -> Path | None:
    """RUNS/BASE-oof.json of the k-fold run whose folds are `members` (None when the first is not named as a fold)."""
    base = fold_base(members[0].checkpoint["config"])
    return members[0].run_dir.parent / f"{base}-oof.json" if base is not None else None


def recorded_val_scores(checkpoint: dict) -> str:
    """A member's own best validation score as its run recorded it: its accuracy, and the run's metric when
    that is another and was recorded (checkpoint "best_val_score", else the best epoch's "val_score")."""
    metric = checkpoint["config"].get("metric", "accuracy")
    scores = [(m, recorded_val_score(checkpoint, m)) for m in dict.fromkeys(("accuracy", metric))]
    parts = [f"{m} {value:.4f}" for m, value in scores if value is not None]
    return ", ".join(parts) or "none recorded (no validation split)"


def format_weighting(w: Weighting, members: list[Member], tta: bool) -> str:
    """The weights table: each member's validation score and weight, then the ensemble's and why."""
    names = [f"{p.path} ({p.spec.arch})" for p in members]
    width = max(len("weighted ensemble"), *(len(n) for n in names))
    column = f"val {w.metric}"

    def value(v):
        return f"{v:.4f}" if v is not None else "-"

    where = (f" on {w.n_val} validation images shared by the {len(members)} models{', TTA' if tta else ''}"
             if w.n_val else "")
    lines = [f"ensemble weights for {w.metric}{where}:", f"  {'model':<{width}}  {column:>{len(column)}}  weight"]
    for i, name in enumerate(names):
        lines.append(f"  {name:<{width}}  {value(w.member_scores[i] if w.member_scores else None):>{len(column)}}"
                     f"  {w.weights[i]:6.3f}")
    lines.append(f"  {'weighted ensemble':<{width}}  {value(w.score):>{len(column)}}")
    lines.append(f"  weights: {w.reason}")
    return "\n".join(lines)
