"""From trained runs to a submission the competition accepts; probabilities for blending; a check of a
model on labelled data. Everything about a model comes from its checkpoint; images are read by data.py.

    python predict.py runs/cnn --data data/fashion-mnist                        # -> submission.csv
    python predict.py runs/cnn --data data/fashion-mnist --solution data/fashion-mnist/solution.csv
                                          # ... and print its accuracy (one model's is saved as its run's test acc)
    python predict.py runs/cnn runs/resnet --data DIR --tta --probs probs.csv   # ensemble, flip TTA, probabilities
    python predict.py runs/cnn runs/resnet --data DIR --metric macro_f1         # weights fitted for macro F1
    python predict.py runs/cnn runs/resnet --data DIR --weights equal           # the plain average
    python predict.py runs/cnn --data DIR --eval                                # check on the run's validation split
    python predict.py runs/cnn --data DIR --eval --solution DIR/solution.csv    # check on the labelled test set

A run folder means its best.pt. With DIR/sample_submission.csv the submission keeps its header, its rows and
their order (ids with or without the file extension); without one it lists every image of DIR/test/ in natural
order under the header `id,label`. --eval writes no submission: it prints accuracy and per-class
precision/recall and saves confusion_matrix.png and wrong.png (the most confidently wrong images) in the run
folder of the first checkpoint.

An ensemble's members are weighted for the competition's metric (--metric; default: the metric the first
checkpoint's run was trained for) on the validation images they all held out: fitted weights where they
clearly beat the simpler choice, else equal weights when these score at least the best member, else the best
member alone; never below the best member there. A table shows each member's score and weight, and why.
Members trained on other splits (or with --val-split 0) get equal weights, with a warning; so does
--weights equal. --solution prints the submission's accuracy and, when the metric is another, the metric.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import data
import metrics
import runs
from checkpoint import ModelSpec, load_checkpoint, model_from_checkpoint, read_spec
from errors import DataError, UsageError, explain
from fileio import atomic_write
from runtime import setup_runtime

log = logging.getLogger("imgcomp")

DEFAULT_HEADER = ["id", "label"]
TEST_IMAGES_HINT = "every test image needs a prediction: replace or fix them"


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

@dataclass
class Predictor:
    """One checkpoint, its spec, and its model on the device in the compute format it was trained with."""
    path: Path
    checkpoint: dict
    spec: ModelSpec
    model: nn.Module

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def has_tta(self) -> bool:
        """--tta adds mirrored images only for models trained with flips."""
        return self.spec.hflip

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names


def checkpoint_path(path: str | Path) -> Path:
    """A run folder means its best.pt; anything else is taken as a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise DataError(f"run folder {path} has no best.pt (has the run finished an epoch?)")
        return path / "best.pt"
    return path


def load_models(paths: list[str], device: torch.device) -> list[Predictor]:
    """Load each checkpoint (without executing code) and build its model; all must share one class list."""
    predictors = []
    for given in paths:
        path = checkpoint_path(given)
        ckpt = load_checkpoint(path)
        spec = read_spec(ckpt)
        model = model_from_checkpoint(ckpt, path).to(device, memory_format=spec.compute.memory_format).eval()
        predictors.append(Predictor(path, ckpt, spec, model))
        log.info("%s: %s, %d classes, %dpx x %d channel(s), epoch %d, %s", path, spec.arch, len(spec.class_names),
                 spec.img_size, spec.channels, ckpt["epoch"], spec.compute)
    first = predictors[0]
    for p in predictors[1:]:
        if p.class_names != first.class_names:
            raise DataError(f"cannot ensemble checkpoints trained on different classes:\n"
                            f"  {first.path}: {first.class_names}\n  {p.path}: {p.class_names}")
    return predictors


# ----------------------------------------------------------------------------------------------
# Which rows: the sample submission, or every test image
# ----------------------------------------------------------------------------------------------

def read_id_csv(path: str | Path) -> data.CsvTable:
    """A CSV of (id, value, ...) rows such as sample_submission.csv or solution.csv: the first column is the
    id, the second the label."""
    table = data.read_csv(path)
    if len(table.header) < 2:
        raise DataError(f"{path}: the header {table.header} has {len(table.header)} column(s); expected id and label")
    return table


def ids_of(table: data.CsvTable) -> list[str]:
    return [row[0] for row in table.rows]


def values_of(table: data.CsvTable) -> list[str]:
    return [row[1] for row in table.rows]


def submission_rows(data_dir: Path) -> tuple[list[str], list[str], list[Path]]:
    """(header, ids, image files) of the submission: the sample's when DIR/sample_submission.csv exists,
    else every test image in natural order, ids without extension."""
    index = data.index_test_images(data_dir)  # also: a clear error when test/ is missing or empty
    test_dir, files = index.folder, index.files
    sample_path = data_dir / "sample_submission.csv"
    if sample_path.is_file():
        sample = read_id_csv(sample_path)
        if len(sample.header) != 2:
            raise DataError(f"{sample_path}: {len(sample.header)} columns {sample.header}; "
                            "predict.py writes an id and one prediction column")
        if not sample.rows:
            raise DataError(f"{sample_path}: no rows")
        return sample.header, ids_of(sample), data.match_ids(ids_of(sample), sample.lines, index, sample_path,
                                                             complete=True)
    ids = [os.path.splitext(Path(os.path.relpath(f, test_dir)).as_posix())[0] for f in files]
    if len(set(ids)) != len(ids):
        clashes = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise DataError(f"{test_dir}: several images share an id once the extension is dropped:{data.listing(clashes)}\n"
                        f"add a sample_submission.csv naming them")
    log.info("no %s: predicting every image of %s with the header %s", sample_path, test_dir, ",".join(DEFAULT_HEADER))
    return list(DEFAULT_HEADER), ids, files


# ----------------------------------------------------------------------------------------------
# Probabilities
# ----------------------------------------------------------------------------------------------

class ImageCache:
    """Decoded images per (size, channels): an ensemble decodes once per input size, through data.py's
    on-disk cache (in `cache_dir`, chosen by data.cache_dir_for)."""

    def __init__(self, cache_dir: Path, progress: bool):
        self.cache_dir, self.progress = cache_dir, progress
        self.arrays: dict[tuple, data.ImageArray] = {}

    def pixels(self, files: list[Path], img_size: int, channels: int, hint: str = TEST_IMAGES_HINT) -> np.ndarray:
        key = (tuple(files), img_size, channels)
        if key not in self.arrays:
            images = data.load_images(files, img_size, channels, self.cache_dir, progress=self.progress)
            images.raise_if_bad(hint)
            self.arrays[key] = images
        return self.arrays[key].pixels


@torch.no_grad()
def model_probs(p: Predictor, pixels: np.ndarray, device: torch.device, batch_size: int, tta: bool) -> np.ndarray:
    """Softmax probabilities (N, classes) of one model, averaged over the TTA views; batched, in the
    precision and memory format the model was trained with."""
    out = np.zeros((len(pixels), len(p.class_names)), dtype=np.float64)
    preprocess = p.spec.preprocess()
    for x, idx in data.batches(pixels, None, np.arange(len(pixels)), batch_size, device):
        views = data.tta_views(x, tta and p.has_tta)
        total = 0
        for view in views:
            with p.spec.compute.autocast(device):
                logits = p.model(preprocess(view))
            total = total + logits.float().softmax(1)
        out[idx.cpu().numpy()] = (total / len(views)).double().cpu().numpy()
    if not np.isfinite(out).all():
        raise DataError(f"{p.path} gives NaN or infinite probabilities for {int((~np.isfinite(out).all(1)).sum())} "
                        "image(s): the model is broken (a diverged run?); no submission was written")
    return out


def member_probs(predictors: list[Predictor], files: list[Path], images: ImageCache, device: torch.device,
                 batch_size: int, tta: bool, hint: str = TEST_IMAGES_HINT) -> list[np.ndarray]:
    """Each model's probabilities for `files`, each model at its own image size and channels."""
    return [model_probs(p, images.pixels(files, p.spec.img_size, p.spec.channels, hint), device, batch_size, tta)
            for p in predictors]


def blend(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted mean of the members' probabilities (weights sum to 1)."""
    return sum(w * p for w, p in zip(weights, probs) if w > 0)


def predict_probs(predictors: list[Predictor], files: list[Path], images: ImageCache, device: torch.device,
                  batch_size: int, tta: bool, weights: np.ndarray | None = None) -> np.ndarray:
    """The ensemble's probabilities for `files`: the weighted mean of each model's softmax (equal weights by
    default), each model at its own image size and channels; a model of weight 0 is not run."""
    weights = equal_weights(len(predictors)) if weights is None else np.asarray(weights, dtype=np.float64)
    used = [(p, w) for p, w in zip(predictors, weights) if w > 0]
    return blend(member_probs([p for p, _ in used], files, images, device, batch_size, tta), [w for _, w in used])


# ----------------------------------------------------------------------------------------------
# Writing and scoring
# ----------------------------------------------------------------------------------------------

def check_submission(table: data.CsvTable, header: list[str], ids: list[str], class_names: list[str]):
    """The submission as read back from disk: the expected header, one row per id in the expected order,
    no duplicates, every value a known class."""
    where, written = table.path, ids_of(table)
    if table.header != header:
        raise DataError(f"{where}: header {table.header} differs from the expected {header}")
    if len(set(written)) != len(written):
        raise DataError(f"{where}: duplicate ids")
    if written != ids:
        raise DataError(f"{where}: {len(written)} rows do not match the {len(ids)} expected ids in order")
    unknown = sorted(set(values_of(table)) - set(class_names))
    if unknown:
        raise DataError(f"{where}: values that are not classes: {unknown}")


def write_submission(path: Path, header: list[str], ids: list[str], predictions: list[str], class_names: list[str]):
    """Write the submission atomically, after checking what was written reads back as intended."""
    path = Path(path)

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(zip(ids, predictions))
        written = read_id_csv(tmp)
        written.path = path
        check_submission(written, header, ids, class_names)
        if values_of(written) != list(predictions):
            raise DataError(f"{path}: the predictions do not read back as written")

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def write_probs(path: Path, id_column: str, ids: list[str], probs: np.ndarray, class_names: list[str]):
    """Per-class probabilities, one column per class (named as in training), for blending later."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([id_column, *class_names])
            for ident, row in zip(ids, probs):
                w.writerow([ident, *(f"{v:.6f}" for v in row)])

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), write)


def score(submission_csv: str | Path, solution_csv: str | Path) -> float:
    """Accuracy of a submission against a solution CSV (id, label), matching rows by id."""
    sub, sol = read_id_csv(submission_csv), read_id_csv(solution_csv)
    predicted = {}
    for ident, value, line in zip(ids_of(sub), values_of(sub), sub.lines):
        if ident.strip() in predicted:
            raise DataError(f"{sub.path} line {line}: duplicate id {ident!r}")
        predicted[ident.strip()] = value.strip()
    wanted = [i.strip() for i in ids_of(sol)]
    missing = [i for i in wanted if i not in predicted]
    extra = sorted(set(predicted) - set(wanted), key=data.natural_key)
    if missing or extra:
        raise DataError(f"{sub.path} and {sol.path} hold different ids: {len(missing)} missing from the "
                        f"submission{data.listing(missing, 5) if missing else ''}; {len(extra)} not in the "
                        f"solution{data.listing(extra, 5) if extra else ''}")
    if not wanted:
        raise DataError(f"{sol.path}: no rows")
    return sum(predicted[i] == v.strip() for i, v in zip(wanted, values_of(sol))) / len(wanted)


# ----------------------------------------------------------------------------------------------
# Checking a model on labelled data
# ----------------------------------------------------------------------------------------------

def shared_val_files(checkpoints: list[dict]) -> list[str]:
    """The validation images (paths relative to the data folder) that every checkpoint held out, in the first
    one's order: all of them when the runs share one split (same data, --seed and --val-split), else those
    they have in common when there are at least MIN_SHARED_IMAGES; otherwise none."""
    held_out = [set(c["val_files"]) for c in checkpoints]
    common = set.intersection(*held_out)
    if all(s == common for s in held_out) or len(common) >= MIN_SHARED_IMAGES:
        return [rel for rel in checkpoints[0]["val_files"] if rel in common]
    return []


def validation_images(predictors: list[Predictor], data_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The files and labels of the validation images every checkpoint held out (`shared_val_files`), read
    from the training images of `data_dir`."""
    first = predictors[0].checkpoint
    shared = shared_val_files([p.checkpoint for p in predictors])
    if not shared:
        without = [str(p.path) for p in predictors if not p.checkpoint["val_files"]]
        if without:
            raise DataError(f"{', '.join(without)} trained without a validation split (--val-split 0)")
        raise DataError(f"{' and '.join(str(p.path) for p in predictors)} hold out different validation images "
                        f"(other --seed, --val-split or data?), fewer than {MIN_SHARED_IMAGES} of them in common")
    config = first["config"]
    found = data.find_labelled_images(data_dir, config.get("id_col") or None, config.get("label_col") or None)
    by_rel = {Path(os.path.relpath(f, data_dir)).as_posix(): i for i, f in enumerate(found.files)}
    missing = [rel for rel in shared if rel not in by_rel]
    if missing:
        raise DataError(f"{len(missing)} validation image(s) of {predictors[0].path} are not training images of "
                        f"{data_dir} (trained on {config.get('data')!r}?):{data.listing(missing)}")
    rows = [by_rel[rel] for rel in shared]
    names = [found.class_names[found.labels[i]] for i in rows]
    return [found.files[i] for i in rows], label_indices(names, predictors[0].class_names, f"{data_dir}")


def solution_images(solution: Path, data_dir: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """The test images named by a solution CSV (sample format) and their labels."""
    table = read_id_csv(solution)
    if not table.rows:
        raise DataError(f"{solution}: no rows")
    files = data.match_ids(ids_of(table), table.lines, data.index_test_images(data_dir), solution)
    return files, label_indices([v.strip() for v in values_of(table)], class_names, str(solution), table.lines)


def label_indices(names: list[str], class_names: list[str], where: str, lines=None) -> np.ndarray:
    """Class names -> indices into the model's `class_names`; a name the model never saw is an error."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [f"line {lines[k]}: {n!r}" if lines else repr(n) for k, n in enumerate(names) if n not in index]
    if unknown:
        raise DataError(f"{where}: {len(unknown)} label(s) are not among the model's classes {class_names}:"
                        f"{data.listing(unknown)}")
    return np.array([index[n] for n in names], dtype=np.int64)


def evaluate_labels(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, the confusion matrix (rows: true class, columns: predicted) and per-class precision/recall."""
    n = len(class_names)
    predicted = probs.argmax(1)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    correct = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = correct / confusion.sum(0)  # NaN for a class never predicted
        recall = correct / confusion.sum(1)
    return {"accuracy": float(correct.sum() / max(len(labels), 1)), "confusion": confusion,
            "precision": precision, "recall": recall, "support": confusion.sum(1), "predicted": predicted}


def format_report(result: dict, class_names: list[str], what: str) -> str:
    """Accuracy (and the metric, when it is another), then one line of precision, recall and support per class."""
    width = max(12, *(len(n) for n in class_names))
    lines = [f"accuracy {result['accuracy']:.4f} on {int(result['support'].sum())} images ({what})"]
    if result.get("metric", "accuracy") != "accuracy":
        lines.append(f"{result['metric']} {result['score']:.4f}")
    lines.append(f"{'class':<{width}}  precision  recall  support")
    for name, p, r, s in zip(class_names, result["precision"], result["recall"], result["support"]):
        lines.append(f"{name:<{width}}  {_number(p):>9}  {_number(r):>6}  {s:7d}")
    return "\n".join(lines)


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"  # precision of a class never predicted


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path):
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    _pyplot().close(fig)


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str):
    """The confusion matrix as a heat map with counts; rows are the true classes."""
    plt = _pyplot()
    n = len(class_names)
    side = min(20, 3 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        limit = confusion.max() / 2
        for (i, j), v in np.ndenumerate(confusion):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > limit else "black")
    fig.tight_layout()
    _save(fig, path)


def plot_wrong(pixels: np.ndarray, probs: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
               count: int = 16):
    """A grid of the `count` wrong predictions made with the highest confidence, with true and predicted labels."""
    plt = _pyplot()
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:count]
    cols = max(1, min(4, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if len(wrong) == 0:
        axes[0, 0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    for ax, i in zip(axes.flat, wrong):
        img = np.asarray(pixels[i])
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.transpose(1, 2, 0))
        ax.set_title(f"true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} ({probs[i, predicted[i]]:.0%})",
                     fontsize=8)
    fig.suptitle("most confidently wrong")
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Ensemble weights
# ----------------------------------------------------------------------------------------------

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
    "best member" or "fitted"; `reason` says why, for people; `warning` is set when the weights could not be
    fitted. The scores are on the `n_val` shared validation images, for `metric` (None where not measured)."""
    weights: np.ndarray
    choice: str
    reason: str
    metric: str
    n_val: int = 0
    member_scores: list[float] | None = None
    score: float | None = None
    warning: str = ""


def equal_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def _best_index(metric: str, scores: list[float]) -> int:
    """The first of the best scores."""
    return int(np.argmax(scores) if metrics.higher_is_better(metric) else np.argmin(scores))


def fit_weights(probs: list[np.ndarray], labels: np.ndarray, metric: str, max_steps: int = MAX_FIT_STEPS) -> np.ndarray:
    """Non-negative weights summing to 1 by greedy forward selection with replacement (Caruana et al. 2004,
    "Ensemble selection from libraries of models"): start from the best member alone; each step mixes (again)
    one member into the running blend, `(1 - a) * blend + a * member`, choosing the member and the share `a`
    among MIX_SHARES that score best, and only when that strictly improves the metric; at most `max_steps`
    steps. (Caruana's own step, an equal vote per pick, is the share 1/(picks + 1); offering smaller shares
    from the start lets a weaker but different member in with a small weight.) The fit never scores below
    the best member on these images."""
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
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """The share of bootstrap resamples of the images (drawn with replacement, the same draw for both) on
    which `probs_a` scores strictly better than `probs_b`: how sure a difference on these images is."""
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(resamples):
        idx = rng.integers(0, len(labels), len(labels))
        wins += metrics.better(metric, metrics.score(metric, probs_a[idx], labels[idx]),
                               metrics.score(metric, probs_b[idx], labels[idx]))
    return wins / resamples


def choose_weights(probs: list[np.ndarray], labels: np.ndarray, metric: str) -> Weighting:
    """Weights for members whose probabilities `probs` on the same validation images with `labels` are known.

    The simple choice is equal weights when they score at least the best member, else the best member alone.
    Weights fitted by `fit_weights` replace it only when the fit is clearly better, since weights fitted to a
    small validation set fit its noise (and the score they report is then optimistic):
    - fewer than MIN_SHARED_IMAGES (50) images: the simple choice, and a warning with each member's score: one
      image is 2% or more of such a set, so even that choice is uncertain (the same minimum as for the images
      that runs with different splits share);
    - fewer than MIN_FIT_IMAGES (200) images: the simple choice, no fit (one image moves accuracy by more than
      0.5%, as much as the differences a fit chases);
    - the fit must beat the simple choice in at least BOOTSTRAP_CONFIDENCE (90%) of BOOTSTRAP_RESAMPLES (500)
      bootstrap resamples of the images: for accuracy on 400 images, fixing 3 images net without breaking any
      passes, fixing one does not (it is not drawn in 37% of resamples);
    - at most MAX_FIT_STEPS (20) greedy steps, each mixing in a member with a share of 1/2, 1/3, 1/5 or 1/10.
    Every choice scores at least the best member on these images."""
    n = len(labels)
    scores = [metrics.score(metric, p, labels) for p in probs]
    best = _best_index(metric, scores)
    equal = equal_weights(len(probs))
    equal_score = metrics.score(metric, blend(probs, equal), labels)
    versus = f"equal weights score {equal_score:.4f}, the best member {scores[best]:.4f}"
    if metrics.better(metric, scores[best], equal_score):
        simple, simple_choice, simple_score = np.eye(len(probs))[best], "best member", scores[best]
        simple_name = "the best member alone"
    else:
        simple, simple_choice, simple_score, simple_name = equal, "equal", equal_score, "equal weights"

    def chosen(weights, choice, score, reason, warning="") -> Weighting:
        return Weighting(weights, choice, reason, metric, n, scores, score, warning)

    if n < MIN_SHARED_IMAGES:
        return chosen(simple, simple_choice, simple_score, f"{simple_name}, not fitted: {versus}",
                      f"WARNING: the members share only {n} validation images (fewer than {MIN_SHARED_IMAGES}): "
                      f"{simple_name} by their scores there, which are uncertain: " + ", ".join(f"{s:.4f}" for s in scores)
                      + " in the order given; check with --solution or more validation images")
    if n < MIN_FIT_IMAGES:
        return chosen(simple, simple_choice, simple_score,
                      f"{simple_name}, not fitted: {n} shared validation images are too few to fit weights on "
                      f"(fewer than {MIN_FIT_IMAGES}); {versus}")
    fitted = fit_weights(probs, labels, metric)
    fitted_probs = blend(probs, fitted)
    fitted_score = metrics.score(metric, fitted_probs, labels)
    if not metrics.better(metric, fitted_score, simple_score):
        return chosen(simple, simple_choice, simple_score,
                      f"{simple_name}: fitted weights score {fitted_score:.4f}, no better; {versus}")
    wins = bootstrap_win_rate(metric, fitted_probs, blend(probs, simple), labels)
    if wins < BOOTSTRAP_CONFIDENCE:
        return chosen(simple, simple_choice, simple_score,
                      f"{simple_name}: fitted weights score {fitted_score:.4f} but beat it in only {wins:.0%} of "
                      f"{BOOTSTRAP_RESAMPLES} bootstrap resamples (< {BOOTSTRAP_CONFIDENCE:.0%}), within the noise; "
                      f"{versus}")
    return chosen(fitted, "fitted", fitted_score,
                  f"fitted (greedy selection), better than {simple_name} ({simple_score:.4f}) in {wins:.0%} of "
                  f"{BOOTSTRAP_RESAMPLES} bootstrap resamples; {versus}")


def ensemble_weights(predictors: list[Predictor], data_dir: Path, images: ImageCache, device: torch.device,
                     batch_size: int, tta: bool, metric: str, mode: str = "fit") -> Weighting:
    """The members' weights: for `mode` "fit", chosen by `choose_weights` on the validation images they all
    held out (read from the training images of `data_dir`, each model at its own size, with TTA when asked),
    else (`mode` "equal", or without shared validation images: with a warning) equal weights."""
    if len(predictors) == 1:
        return Weighting(np.ones(1), "single", "one model", metric)
    equal = equal_weights(len(predictors))
    if mode == "equal":
        return Weighting(equal, "equal", "equal weights (--weights equal)", metric)
    if are_folds(predictors):
        return Weighting(equal, "equal", "equal weights: the folds of one k-fold run, each trained on most of the "
                                         "data (their out-of-fold score is in RUNS/NAME-oof.json)", metric)
    groups = fold_groups(predictors)
    if groups:
        return out_of_fold_weights(predictors, groups, metric)
    try:
        files, labels = validation_images(predictors, data_dir)
        probs = member_probs(predictors, files, images, device, batch_size, tta,
                             hint="the ensemble's weights are fitted on them: fix them, or pass --weights equal")
    except DataError as e:
        own = "; ".join(f"{p.path}: {recorded_val_scores(p.checkpoint)}" for p in predictors)
        return Weighting(equal, "equal", "equal weights, not fitted", metric,
                         warning=f"WARNING: the ensemble's weights could not be fitted ({e}): using equal weights. "
                                 f"Each member's own best validation score: {own}")
    return choose_weights(probs, labels, metric)


def are_folds(predictors: list[Predictor]) -> bool:
    """Whether the members are different folds of one --folds K run (same data, seed and K)."""
    configs = [p.checkpoint["config"] for p in predictors]
    key = {(c.get("folds", 0), c.get("seed"), c.get("data"), c.get("arch")) for c in configs}
    folds = [c.get("fold", 0) for c in configs]
    return len(key) == 1 and configs[0].get("folds", 0) > 1 and len(set(folds)) == len(folds)


def fold_groups(predictors: list[Predictor]) -> list[tuple[Path, list[int]]] | None:
    """When the members are the complete fold sets of two or more k-fold runs, each with its out-of-fold file:
    [(that file, the members of that run)], else None."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(predictors):
        c = p.checkpoint["config"]
        if c.get("folds", 0) < 2 or not str(c.get("name", "")).endswith(f"-f{c.get('fold')}"):
            return None
        base = c["name"][:-len(f"-f{c['fold']}")]
        groups.setdefault((str(p.run_dir.parent / f"{base}-oof.csv"), c["folds"]), []).append(i)
    complete = all(len({predictors[i].checkpoint["config"]["fold"] for i in members}) == folds == len(members)
                   for (_, folds), members in groups.items())
    if len(groups) < 2 or not complete or not all(Path(path).is_file() for path, _ in groups):
        return None
    return [(Path(path), members) for (path, _), members in groups.items()]


def out_of_fold_weights(predictors: list[Predictor], groups: list[tuple[Path, list[int]]], metric: str) -> Weighting:
    """Weights of k-fold runs fitted (by `choose_weights`) on their out-of-fold predictions, which cover every
    training image once; each run's weight is shared equally by its folds."""
    class_names = predictors[0].class_names
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
    labels = label_indices([tables[0][f][0] for f in shared], class_names, str(groups[0][0]))
    group_probs = [np.array([t[f][1] for f in shared]) for t in tables]
    chosen = choose_weights(group_probs, labels, metric)
    weights, scores = np.zeros(len(predictors)), [0.0] * len(predictors)
    for (_, members), weight, score in zip(groups, chosen.weights, chosen.member_scores):
        for i in members:
            weights[i], scores[i] = weight / len(members), score
    return Weighting(weights, chosen.choice, f"on the out-of-fold predictions of {len(groups)} k-fold runs (their "
                     f"folds share each run's weight; without TTA): {chosen.reason}", metric, chosen.n_val, scores,
                     chosen.score, chosen.warning)


def recorded_val_scores(checkpoint: dict) -> str:
    """A member's own best validation score as its run recorded it: its accuracy, and the run's metric when
    that is another and was recorded (checkpoint "best_val_score", else the best epoch's "val_score")."""
    parts = []
    accuracy = checkpoint.get("best_val_acc")
    if isinstance(accuracy, (int, float)) and math.isfinite(accuracy) and accuracy >= 0:
        parts.append(f"accuracy {accuracy:.4f}")
    metric = checkpoint["config"].get("metric", "accuracy")
    if metric != "accuracy":
        value = checkpoint.get("best_val_score")
        if value is None:
            rows = [r for r in checkpoint.get("history", []) if r.get("epoch") == checkpoint.get("best_epoch")]
            value = rows[0].get("val_score") if rows else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{metric} {value:.4f}")
    return ", ".join(parts) or "none recorded (no validation split)"


def format_weighting(w: Weighting, predictors: list[Predictor], tta: bool) -> str:
    """The weights table: each member's validation score and weight, then the ensemble's and why."""
    names = [f"{p.path} ({p.spec.arch})" for p in predictors]
    width = max(len("weighted ensemble"), *(len(n) for n in names))
    column = f"val {w.metric}"

    def value(v):
        return f"{v:.4f}" if v is not None else "-"

    where = (f" on {w.n_val} validation images shared by the {len(predictors)} models{', TTA' if tta else ''}"
             if w.n_val else "")
    lines = [f"ensemble weights for {w.metric}{where}:", f"  {'model':<{width}}  {column:>{len(column)}}  weight"]
    for i, name in enumerate(names):
        lines.append(f"  {name:<{width}}  {value(w.member_scores[i] if w.member_scores else None):>{len(column)}}"
                     f"  {w.weights[i]:6.3f}")
    lines.append(f"  {'weighted ensemble':<{width}}  {value(w.score):>{len(column)}}")
    lines.append(f"  weights: {w.reason}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", metavar="RUN_OR_CKPT",
                        help="run folders (their best.pt) or checkpoint files; several make an ensemble")
    parser.add_argument("--data", required=True, help="dataset folder (test/, sample_submission.csv)")
    parser.add_argument("--out", default=None, help="submission file to write (default: submission.csv)")
    parser.add_argument("--tta", action="store_true", help="average with horizontally flipped images "
                                                            "(models trained with flips)")
    parser.add_argument("--probs", default=None, metavar="FILE", help="also write per-class probabilities here")
    parser.add_argument("--solution", default=None, metavar="FILE",
                        help="answers (id, label) of the test images: print the submission's accuracy, "
                             "or with --eval check the model on them")
    parser.add_argument("--eval", action="store_true", help="check the model on labelled data (the run's validation "
                                                           "split, or --solution) instead of writing a submission")
    parser.add_argument("--metric", default=None, choices=metrics.METRICS,
                        help="the competition's metric: an ensemble's weights are fitted for it, and --solution/--eval "
                             "report it (default: the metric the first checkpoint's run was trained for)")
    parser.add_argument("--weights", default="fit", choices=["fit", "equal"],
                        help="an ensemble's weights: fitted on the validation images its members share (never "
                             "below the best member there), or equal")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--cache-dir", default="", help="where decoded images are cached (default: next to them)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar while decoding images")
    return parser


def run_eval(args, predictors: list[Predictor], images: ImageCache, device: torch.device, weighting: Weighting) -> dict:
    """--eval: report on the validation split or the --solution images, and save the figures."""
    data_dir, first = Path(args.data), predictors[0]
    class_names = first.class_names
    if args.solution:
        files, labels = solution_images(Path(args.solution), data_dir, class_names)
        what = f"{args.solution}"
    else:
        try:
            files, labels = validation_images(predictors, data_dir)
        except DataError as e:
            raise DataError(f"{e}: check the model(s) with --solution FILE instead") from None
        what = (f"validation split of {first.path}" if len(predictors) == 1 else
                f"the validation images shared by the {len(predictors)} models")
        if weighting.choice == "fitted":
            what += ", the images the weights were fitted on: optimistic"
    probs = predict_probs(predictors, files, images, device, args.batch_size, args.tta, weighting.weights)
    result = evaluate_labels(probs, labels, class_names)
    result.update(metric=weighting.metric, score=metrics.score(weighting.metric, probs, labels))
    print(format_report(result, class_names, what + (", TTA" if args.tta else "")))
    title = " + ".join(p.spec.arch for p in predictors) + f": accuracy {result['accuracy']:.2%}"
    pixels = images.pixels(files, first.spec.img_size, first.spec.channels)
    try:  # the report is printed: a run folder we cannot write in (read-only) costs only the figures
        plot_confusion(result["confusion"], class_names, first.run_dir / "confusion_matrix.png", title)
        plot_wrong(pixels, probs, labels, class_names, first.run_dir / "wrong.png")
        print(f"saved {first.run_dir / 'confusion_matrix.png'} and {first.run_dir / 'wrong.png'}")
    except OSError as e:
        log.warning("could not save the figures in %s: %s", first.run_dir, e)
    if args.solution:
        record_test_acc(predictors, result["accuracy"], args.tta)
    return result


def record_test_acc(predictors: list[Predictor], accuracy: float, tta: bool):
    """The runs table's test accuracy (with TTA in a column of its own) belongs to a single model's run; an
    ensemble's belongs to none. A model trained without flips gets no TTA: its score is the plain one."""
    if len(predictors) == 1 and (predictors[0].run_dir / "run.json").is_file():
        key = "test_acc_tta" if tta and predictors[0].has_tta else "test_acc"
        runs.update_run_info(predictors[0].run_dir, **{key: accuracy})


def run_predict(args, predictors: list[Predictor], images: ImageCache, device: torch.device,
                weighting: Weighting) -> Path:
    """Write the submission (and --probs), and score it when --solution is given."""
    data_dir, class_names = Path(args.data), predictors[0].class_names
    header, ids, files = submission_rows(data_dir)
    probs = predict_probs(predictors, files, images, device, args.batch_size, args.tta, weighting.weights)
    out = Path(args.out or "submission.csv")
    write_submission(out, header, ids, [class_names[i] for i in probs.argmax(1)], class_names)
    print(f"wrote {out}: {len(ids)} rows, {len(predictors)} model(s){', TTA' if args.tta else ''}")
    if args.probs:
        write_probs(Path(args.probs), header[0], ids, probs, class_names)
        print(f"wrote {args.probs}: probabilities of {len(class_names)} classes")
    if args.solution:
        accuracy = score(out, args.solution)
        print(f"accuracy against {args.solution}: {accuracy:.4f}")
        if weighting.metric != "accuracy":
            value = solution_score(weighting.metric, probs, files, Path(args.solution), data_dir, class_names)
            print(f"{weighting.metric} against {args.solution}: {value:.4f}")
        record_test_acc(predictors, accuracy, args.tta)
    return out


def solution_score(metric: str, probs: np.ndarray, files: list[Path], solution: Path, data_dir: Path,
                   class_names: list[str]) -> float:
    """`metric` of the submission's probabilities `probs` (rows: `files`) against a solution CSV, its ids
    matched to test images as for the submission. The hard-label metrics score the probabilities' argmax,
    which is what the submission holds."""
    solution_files, labels = solution_images(solution, data_dir, class_names)
    row = {f: i for i, f in enumerate(files)}
    missing = [str(f) for f in solution_files if f not in row]
    if missing:
        raise DataError(f"{solution}: {len(missing)} image(s) are not in the submission:{data.listing(missing, 5)}")
    return metrics.score(metric, probs[[row[f] for f in solution_files]], labels)


def run_metric(args, predictors: list[Predictor]) -> str:
    """--metric, else the metric the first checkpoint's run was trained for (accuracy for runs from before
    there was a choice)."""
    if args.metric:
        return args.metric
    metric = predictors[0].checkpoint["config"].get("metric", "accuracy")
    if metric not in metrics.METRICS:
        raise DataError(f"{predictors[0].path} was trained for the metric {metric!r}, which this predict.py does not "
                        f"know: choose one with --metric ({', '.join(metrics.METRICS)})")
    return metric


def check_outputs(args):
    """Refuse an output that would destroy an input of this command (a checkpoint, the dataset's files, the
    sample or the solution), the other output, a folder, or a file a CSV never is: before anything is written."""
    data_dir = Path(args.data)
    inputs = {Path(c if not Path(c).is_dir() else Path(c) / "best.pt"): "a checkpoint" for c in args.checkpoints}
    inputs.update({data_dir / "train.csv": "the training labels", data_dir / "sample_submission.csv": "the sample",
                   **({Path(args.solution): "--solution"} if args.solution else {})})
    image_dirs = [data_dir / d for d in ("train", "test", "images")]
    outputs = [(flag, Path(value)) for flag, value in (("--out", args.out or "submission.csv"), ("--probs", args.probs))
               if value]
    for flag, path in outputs:
        if path.is_dir():
            raise DataError(f"{flag} {path} is a folder: name the file to write (e.g. {path / 'submission.csv'})")
        for given, what in inputs.items():
            if _same_file(path, given):
                raise DataError(f"{flag} {path} is {what} of this command: writing it would destroy it; "
                                "choose another file")
        for folder in image_dirs:
            if folder.is_dir() and path.resolve().is_relative_to(folder.resolve()):
                raise DataError(f"{flag} {path} is inside the dataset's image folder {folder}; write it elsewhere")
        if path.suffix.lower() in data.IMG_EXTENSIONS | {".pt", ".pth", ".bin", ".safetensors", ".npy", ".json"}:
            raise DataError(f"{flag} {path}: writes a CSV file, not a {path.suffix} file; choose a .csv name")
    if len(outputs) == 2 and _same_file(outputs[0][1], outputs[1][1]):
        raise DataError(f"--out and --probs name the same file {outputs[0][1]}: the probabilities would replace the "
                        "submission")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.eval and (args.out or args.probs):
            raise DataError("--eval checks a model and writes no submission: drop --out/--probs, or --eval")
        if args.batch_size < 1:
            raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
        if not Path(args.data).is_dir():
            raise DataError(f"dataset folder {args.data} does not exist")
        if not args.eval:
            check_outputs(args)
        device = setup_runtime(args.device).device
        predictors = load_models(args.checkpoints, device)
        images = ImageCache(data.cache_dir_for(args.data, args.cache_dir or None), args.progress)
        weighting = ensemble_weights(predictors, Path(args.data), images, device, args.batch_size, args.tta,
                                     run_metric(args, predictors), args.weights)
        if weighting.warning:
            log.warning("%s", weighting.warning)
        if len(predictors) > 1:
            print(format_weighting(weighting, predictors, args.tta))
        if args.eval:
            return run_eval(args, predictors, images, device, weighting)
        return run_predict(args, predictors, images, device, weighting)
    except UsageError as e:
        sys.exit(f"error: {explain(e)}")


if __name__ == "__main__":
    main()
