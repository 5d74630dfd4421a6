"""From trained runs to a submission the competition accepts; probabilities for blending; a check of a
model on labelled data. Everything about a model comes from its checkpoint; images are read by data.py.

    python predict.py runs/cnn --data data/fashion-mnist                        # -> submission.csv
    python predict.py runs/cnn --data data/fashion-mnist --solution data/fashion-mnist/solution.csv
                                          # ... and print its accuracy (one model's is saved as its run's test acc)
    python predict.py runs/cnn runs/resnet --data DIR --tta --probs probs.csv   # ensemble, flip TTA, probabilities
    python predict.py runs/cnn runs/resnet --data DIR --metric macro_f1         # weights fitted for macro F1
    python predict.py runs/cnn runs/resnet --data DIR --weights equal           # the plain average
    python predict.py runs/cnn runs/resnet --data DIR --weights 0.7,0.3         # weights given by hand
    python predict.py runs/cnn --data DIR --eval                                # check on the run's validation split
    python predict.py runs/cnn --data DIR --eval --solution DIR/solution.csv    # check on the labelled test set

    python predict.py runs/melanoma --data DIR --metric roc_auc                 # the positive class's probability
    python predict.py runs/planet --data DIR --test-dir test-jpg                # a multi-label run: its tags
    python predict.py runs/whales --data DIR --top-k 5                          # the 5 most probable classes

A run folder means its best.pt. With DIR/sample_submission.csv (else DIR's only sample_submission*.csv) the
submission keeps its header, its rows and their order (ids with or without the file extension); without one it
lists every image of the test folder (--test-dir, else the one the run was trained with --test-dir, else DIR/test/
or DIR/test_images/) in natural order under the header `id,label` (or what --submission asks for). --eval
writes no submission: it prints accuracy and per-class precision/recall and saves confusion_matrix.png and
wrong.png (the most confidently wrong images) in the run folder of the first checkpoint.

The submission's shape (--submission, default auto: read from the sample, the model and the metric; the log
says which and why): labels (the class name), probs (one probability column per class, matched to the classes
by name, in the sample's column order), score (a binary model's probability of the positive class: the class
1/true/yes, else the second), tags (a multi-label model's classes over their thresholds, joined by spaces), topk
(the K most probable classes, for MAP@K). A sample that fits no shape, or not the model, is an error and
nothing is written.

An ensemble's members are weighted for the competition's metric (--metric; default: the metric the first
checkpoint's run was trained for) on the validation images they all held out: fitted weights where they
clearly beat the simpler choice, else equal weights when these score at least the best member, else the best
member alone; never below the best member there. A table shows each member's score and weight, and why.
Members trained on other splits (or with --val-split 0) get equal weights, with a warning; so does
--weights equal. A multi-label ensemble's thresholds are fitted for its blend on those validation images (the
folds of one k-fold run: those fitted on its out-of-fold predictions), else the mean of the members'.

--solution (class names, tags, 0/1 targets or one 0/1 column per class) prints the submission's accuracy and,
when the metric is another, the metric; for hard labels and a metric of probabilities, also what the labels
score; on the test images it answers (how many, when not all). A single model's accuracy goes into its run.json
with the checkpoint and epoch it measured, leaving a run that still trains as it is.

The model's classes are checked against the data's (the training labels, the sample, the solution): none in
common is an error listing both, classes the model lacks a warning. Ctrl-C or SIGTERM ends it with one line
saying what was written and what was kept.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cli
import data
import inference
import metrics
import runs
from checkpoint import ModelSpec, checkpoint_file, load_checkpoint, model_from_checkpoint, read_spec
from ensemble import (Weighting, are_folds, blend, choose_weights, ensemble_thresholds, equal_weights, fold_groups,
                      fold_scores, fold_thresholds, format_weighting, given_weights, models_used, oof_summary_path,
                      out_of_fold_weights, recorded_val_scores, training_images, validation_images, weigh_given)
from errors import DataError, OptionError, UsageError, explain, flag
from runtime import check_device, setup_runtime
from submission import (SHAPES, Answers, Shape, check_classes, choose_shape, read_answers, read_id_csv, read_sample,
                        sample_classes, sample_files, solution_classes, submission_cells, submission_rows,
                        write_submission)

log = logging.getLogger("imgcomp")

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
        """--tta adds the views a model was trained with: mirrored images (flips), other orientations (--dihedral)."""
        return self.spec.hflip or self.spec.dihedral

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @property
    def multi_label(self) -> bool:
        return self.spec.multi_label


def load_models(paths: list[str], device: torch.device) -> list[Predictor]:
    """Load each checkpoint (without executing code) and build its model; all must share one class list."""
    predictors = []
    for given in paths:
        path = checkpoint_file(given)
        ckpt = load_checkpoint(path)
        spec = read_spec(ckpt)
        model = model_from_checkpoint(ckpt, path).to(device, memory_format=spec.compute.memory_format).eval()
        predictors.append(Predictor(path, ckpt, spec, model))
        log.info("%s: %s, %d %s, %dpx x %d channel(s), epoch %d, %s", path, spec.arch, len(spec.class_names),
                 "tags (multi-label)" if spec.multi_label else "classes", spec.img_size, spec.channels, ckpt["epoch"],
                 spec.compute)
    first = predictors[0]
    for p in predictors[1:]:
        if p.class_names != first.class_names:
            raise DataError(f"cannot ensemble checkpoints trained on different classes:\n"
                            f"  {first.path}: {first.class_names}\n  {p.path}: {p.class_names}")
        if p.multi_label != first.multi_label:
            kinds = {True: "multi-label (sigmoid per tag)", False: "single-label (softmax)"}
            raise DataError(f"cannot ensemble a multi-label model with a single-label one:\n"
                            f"  {first.path}: {kinds[first.multi_label]}\n  {p.path}: {kinds[p.multi_label]}")
    return predictors


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


def model_probs(p: Predictor, pixels: np.ndarray, device: torch.device, batch_size: int, tta: bool) -> np.ndarray:
    """Probabilities (N, classes) of one model (softmax, or a multi-label model's sigmoids), averaged over the
    TTA views (with `tta`: those of the model's training augmentation, `Predictor.has_tta`); batched, in the
    precision and memory format the model was trained with."""
    out = inference.predict_probs(p.model, pixels, p.spec.preprocess(), p.spec.compute, device, batch_size,
                                  tta and p.spec.hflip, multi_label=p.multi_label, turns=tta and p.spec.dihedral)
    if not np.isfinite(out).all():
        raise DataError(f"{p.path} gives NaN or infinite probabilities for {int((~np.isfinite(out).all(1)).sum())} "
                        "image(s): the model is broken (a diverged run?); no submission was written")
    return out


def member_probs(predictors: list[Predictor], files: list[Path], images: ImageCache, device: torch.device,
                 batch_size: int, tta: bool, hint: str = TEST_IMAGES_HINT) -> list[np.ndarray]:
    """Each model's probabilities for `files`, each model at its own image size and channels."""
    return [model_probs(p, images.pixels(files, p.spec.img_size, p.spec.channels, hint), device, batch_size, tta)
            for p in predictors]


def ensemble_probs(predictors: list[Predictor], files: list[Path], images: ImageCache, device: torch.device,
                   batch_size: int, tta: bool, weights: np.ndarray | None = None) -> np.ndarray:
    """The ensemble's probabilities for `files`: the weighted mean of each model's probabilities (softmax, or a
    multi-label model's sigmoids; equal weights by default), each model at its own image size and channels; a
    model of weight 0 is not run."""
    weights = equal_weights(len(predictors)) if weights is None else np.asarray(weights, dtype=np.float64)
    used = [(p, w) for p, w in zip(predictors, weights) if w > 0]
    return blend(member_probs([p for p, _ in used], files, images, device, batch_size, tta), [w for _, w in used])


# ----------------------------------------------------------------------------------------------
# Ensemble weights (ensemble.py chooses them; here the members are run)
# ----------------------------------------------------------------------------------------------

def ensemble_weights(predictors: list[Predictor], data_dir: Path, images: ImageCache, device: torch.device,
                     batch_size: int, tta: bool, metric: str, mode="fit") -> Weighting:
    """The members' weights: for `mode` "fit", chosen by `choose_weights` on the validation images they all
    held out (read from the training images of `data_dir`, each model at its own size, with TTA when asked),
    "equal" (or without shared validation images: with a warning) equal weights, or weights given by hand (one
    number per model: scored there when it can be)."""
    given = None if isinstance(mode, str) else given_weights(mode, len(predictors))
    if len(predictors) == 1:
        return Weighting(np.ones(1), "single", "one model", metric)
    equal = equal_weights(len(predictors))
    if mode == "equal":
        return Weighting(equal, "equal", "equal weights (--weights equal)", metric)
    if given is None and are_folds(predictors):
        where = oof_summary_path(predictors)
        return Weighting(equal, "equal", "equal weights: the folds of one k-fold run, each trained on most of the "
                                         f"data (their out-of-fold score is in {where}); the scores are each fold's "
                                         "best on the images it held out", metric,
                         member_scores=fold_scores(predictors, metric), thresholds=fold_thresholds(predictors))
    groups = None if given is not None else fold_groups(predictors)
    if groups:
        return out_of_fold_weights(predictors, groups, metric)
    try:
        files, labels = validation_images(predictors, data_dir)
        probs = member_probs(predictors, files, images, device, batch_size, tta,
                             hint="the ensemble's weights are fitted on them: fix them, or pass --weights equal")
    except DataError as e:
        if given is not None:
            return weigh_given(given, None, None, metric)
        own = "; ".join(f"{p.path}: {recorded_val_scores(p.checkpoint)}" for p in predictors)
        return Weighting(equal, "equal", "equal weights, not fitted", metric,
                         warning=f"WARNING: the ensemble's weights could not be fitted ({explain(e)}): using equal "
                                 "weights. "
                                 f"Each member's own best validation score: {own}")
    return choose_weights(probs, labels, metric) if given is None else weigh_given(given, probs, labels, metric)


def member_name(p: Predictor) -> str:
    """A member as the user named it: its run folder (for its best.pt), else its checkpoint file."""
    return str(p.run_dir if p.path.name == "best.pt" else p.path)


# ----------------------------------------------------------------------------------------------
# Checking a model on labelled data
# ----------------------------------------------------------------------------------------------

def evaluate_labels(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                    thresholds: np.ndarray | None = None) -> dict:
    """Accuracy, the confusion matrix (rows: true class, columns: predicted) and per-class precision/recall.
    Multi-label labels (N, C): exact-match accuracy and per-tag precision/recall of the decisions at
    `thresholds`, no confusion matrix."""
    if labels.ndim == 2:
        return _evaluate_tags(probs, labels, thresholds)
    n = len(class_names)
    predicted = probs.argmax(1)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    correct = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = correct / confusion.sum(0)  # NaN for a class never predicted
        recall = correct / confusion.sum(1)
    return {"accuracy": metrics.accuracy(predicted, labels), "confusion": confusion, "images": len(labels),
            "precision": precision, "recall": recall, "support": confusion.sum(1), "predicted": predicted}


def _evaluate_tags(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None) -> dict:
    decided, truth = metrics.decide(probs, thresholds), labels.astype(bool)
    hits = (decided & truth).sum(0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = hits / decided.sum(0), hits / truth.sum(0)  # NaN for a tag never predicted / present
    return {"accuracy": metrics.score("accuracy", probs, labels, thresholds), "confusion": None,
            "images": len(labels), "precision": precision, "recall": recall, "support": truth.sum(0),
            "predicted": decided}


def format_report(result: dict, class_names: list[str], what: str) -> str:
    """Accuracy (and the metric, when it is another), then one line of precision, recall and support per class."""
    width = max(12, *(len(n) for n in class_names))
    lines = [f"accuracy {result['accuracy']:.4f} on {result['images']} images ({what})"]
    if result.get("metric", "accuracy") != "accuracy":
        lines.append(f"{result['metric']} {result['score']:.4f}")
    lines.append(f"{'class':<{width}}  precision  recall  support")
    for name, p, r, s in zip(class_names, result["precision"], result["recall"], result["support"]):
        lines.append(f"{name:<{width}}  {_format_number(p):>9}  {_format_number(r):>6}  {s:7d}")
    return "\n".join(lines)


def _format_number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"  # precision of a class never predicted


# ----------------------------------------------------------------------------------------------
# The submission
# ----------------------------------------------------------------------------------------------

@dataclass
class SubmissionPlan:
    """What is known of the submission before a model runs: its shape, rows (ids and their images), and the
    --solution's images and labels (None without one)."""
    shape: Shape
    ids: list[str]
    files: list[Path]
    answers: Answers | None = None


def plan_submission(args, predictors: list[Predictor], metric: str) -> SubmissionPlan:
    """Everything about the submission that can be refused before a model runs: the competition's kind of
    labels and its classes, the shape the sample asks for (logged with the reason), its rows, the solution's
    answers."""
    data_dir, first = Path(args.data), predictors[0]
    sample = read_sample(data_dir)
    solution = read_id_csv(args.solution) if args.solution else None
    check_data(predictors, data_dir, sample, solution)
    shape = choose_shape(sample, first.class_names, first.multi_label, metric, args.submission, args.top_k)
    log.info("submission: %s", describe_shape(shape))
    if shape.warning:
        log.warning("%s", shape_warning(shape))
    index = index_test(args, predictors)
    ids, files = submission_rows(index, sample, shape.header)
    if solution is None:
        return SubmissionPlan(shape, ids, files)
    answers = read_answers(solution, index, first.class_names, first.multi_label)
    missing = sorted(set(answers.files) - set(files), key=lambda f: data.natural_key(str(f)))
    if missing:
        raise DataError(f"{args.solution}: {len(missing)} image(s) are not in the submission:"
                        f"{data.listing(missing, 5)}")
    return SubmissionPlan(shape, ids, files, answers)




def describe_shape(shape: Shape) -> str:
    """The shape and why, for the log, with the flag that chose it: "topk (--top-k 2: the 2 most probable ...)"."""
    if shape.chosen_by:
        option, value = shape.chosen_by
        return f"{shape.kind} ({flag(option)} {value}: {shape.reason})"
    return f"{shape.kind} ({shape.reason})"


def shape_warning(shape: Shape) -> str:
    """The shape's warning followed by its advice, each fix with its flag (spelled as errors.explain does)."""
    fixes = [fix.replace("{flag}", flag(option)) if "{flag}" in fix else f"{fix} with {flag(option)}"
             for option, fix in shape.advice]
    return f"{shape.warning}; {', or '.join(fixes)}" if fixes else shape.warning


def index_test(args, predictors: list[Predictor]) -> data.FileIndex:
    """The test images: --test-dir, else the folder the first model's run was given (its config's test_dir), else
    the data folder's test/ or test_images/; a folder named resolves as data.find_test_folder does (inside the data
    folder first, else from the working folder)."""
    data_dir, first = Path(args.data), predictors[0]
    own = first.checkpoint["config"].get("test_dir") or None
    if args.test_dir or not own:
        return data.index_test_images(data_dir, args.test_dir)
    try:
        folder = data.find_test_folder(data_dir, own)
    except DataError:
        raise DataError(f"the run of {first.path} took its test images from {own}, which is neither in {data_dir} "
                        "nor in the working folder: name the test images' folder with --test-dir") from None
    log.info("test images: %s (the run's --test-dir)", folder)
    return data.index_test_images(data_dir, own)


def check_data(predictors: list[Predictor], data_dir: Path, sample: data.CsvTable | None = None,
               solution: data.CsvTable | None = None):
    """Refuse a model that does not predict for the data: a multi-label model for a single-label competition, or
    the reverse, as the data folder's training labels tell (read as the first model's run read them when it is
    the run's data folder, else detected; a folder without training labels tells nothing); classes that the
    training labels, the sample or the solution do not share with the model (`submission.check_classes`: none in
    common is an error listing both, some missing a warning naming them)."""
    first, config = predictors[0], predictors[0].checkpoint["config"]
    own = Path(config.get("data") or "").resolve() == data_dir.resolve()  # else its settings may not apply here
    try:
        found = training_images(data_dir, config if own else {})
    except DataError:
        found = None
    if found is not None and found.multi_label != first.multi_label:
        kinds = {True: "multi-label (tags)", False: "single-label (one class per image)"}
        raise DataError(f"the training labels of {data_dir} are {kinds[found.multi_label]}, and {first.path} is "
                        f"{kinds[first.multi_label]}: the model does not predict for this competition")
    names, sources = first.class_names, []
    if found is not None:
        sources.append((f"the training labels of {data_dir}", set(found.class_names), True))
    if sample is not None:
        columns, classes = len(sample.header) > 2, sample_classes(sample, names)
        if not (columns and classes & set(names)):  # columns that partly fit: match_columns lists what does not
            sources.append((f"the {'columns' if columns else 'values'} of {sample.path}", classes, False))
    if solution is not None:
        sources.append((str(solution.path), solution_classes(solution, names), False))
    for warning in check_classes(names, sources):
        log.warning("%s", warning)


def submission_thresholds(predictors: list[Predictor], weighting: Weighting) -> np.ndarray | None:
    """A multi-label submission's thresholds: the ensemble's own (fitted on its shared validation images or
    out-of-fold predictions), else the members' (weighted as their probabilities); None for single-label models."""
    thresholds = weighting.thresholds
    if thresholds is None:
        thresholds = ensemble_thresholds(predictors, weighting.weights)
    if thresholds is not None:
        log.info("tag thresholds (%s): %s", "fitted for the ensemble" if weighting.thresholds is not None else
                 "the model's" if len(predictors) == 1 else "the mean of the models'",
                 ", ".join(f"{c} {t:.2f}" for c, t in zip(predictors[0].class_names, thresholds)))
    return thresholds


def run_predict(args, predictors: list[Predictor], images: ImageCache, device: torch.device,
                weighting: Weighting, plan: SubmissionPlan) -> Path:
    """Write the submission (and --probs), and score it when --solution is given."""
    class_names, shape = predictors[0].class_names, plan.shape
    probs = ensemble_probs(predictors, plan.files, images, device, args.batch_size, args.tta, weighting.weights)
    thresholds = submission_thresholds(predictors, weighting)
    out = Path(args.out or "submission.csv")
    write_submission(out, shape.header, plan.ids, submission_cells(shape, probs, class_names, thresholds),
                     class_names, shape)
    args.written.append(str(out))
    used = int((np.asarray(weighting.weights) > 0).sum())
    models = f"{used} of {len(predictors)} models" if used < len(predictors) else \
        f"{len(predictors)} model{'s' if len(predictors) > 1 else ''}"
    print(f"wrote {out}: {len(plan.ids)} rows ({shape.kind}), {models}{', TTA' if args.tta else ''}")
    if args.probs:
        runs.write_predictions(Path(args.probs), plan.ids, None, probs, class_names, id_column=shape.header[0])
        args.written.append(str(args.probs))
        print(f"wrote {args.probs}: probabilities of {len(class_names)} classes")
    if plan.answers:
        report_solution(args, plan, probs, thresholds, weighting.metric, predictors)
    return out


def report_solution(args, plan: SubmissionPlan, probs: np.ndarray, thresholds, metric: str,
                    predictors: list[Predictor]):
    """--solution: the submission's accuracy and its metric against the answers (the hard-label metrics score
    the decisions the submission holds), on the images the solution answers (said when not all); a single model's
    run records the accuracy when every answer could be scored."""
    files, labels = plan.answers.files, plan.answers.labels
    row = {f: i for i, f in enumerate(plan.files)}
    picked = probs[[row[f] for f in files]]
    accuracy = metrics.score("accuracy", picked, labels, thresholds)  # a labels submission's: the argmax it holds
    partial = plan.answers.coverage(len(plan.files))
    if partial:
        print(partial)
    print(f"accuracy against {args.solution}: {accuracy:.4f}")
    if metric != "accuracy":
        print(f"{metric} against {args.solution}: {metrics.score(metric, picked, labels, thresholds):.4f}")
    if plan.shape.kind == "labels" and metrics.needs_score(metric):
        hard = np.eye(probs.shape[1])[picked.argmax(1)]
        print(f"{metric} of the hard labels the submission holds: {metrics.score(metric, hard, labels):.4f} (the "
              f"probabilities above score with {flag('submission')} score or probs, where the sample allows)")
    record_test_acc(predictors, accuracy, args.tta, args.solution, plan.answers)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(prog="predict.py", description=__doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="RUN_OR_CKPT",
                        help="run folders (their best.pt) or checkpoint files; several make an ensemble")
    parser.add_argument("--data", required=True, help="dataset folder (test/ or test_images/, sample_submission.csv)")
    parser.add_argument("--test-dir", default=None, metavar="DIR",
                        help="the test images' folder (in --data, or from here; default: the run's --test-dir, else "
                             "test/, else test_images/)")
    parser.add_argument("--out", default=None, help="submission file to write (default: submission.csv)")
    parser.add_argument("--tta", action="store_true", help="average over the views each model was trained with: "
                                                            "horizontally flipped images (flips) and, for models "
                                                            "trained with --dihedral, all their orientations")
    parser.add_argument("--submission", default="auto", choices=["auto", *SHAPES],
                        help="what the submission holds after the id (default: what the sample, the model and the "
                             "metric ask for): the class, one probability per class, the positive class's "
                             "probability, a multi-label model's tags, or the K most probable classes")
    parser.add_argument("--top-k", type=cli.int_in(1), default=None, metavar="K",
                        help="write the K most probable classes, the most probable first (for MAP@K)")
    parser.add_argument("--probs", default=None, metavar="FILE", help="also write per-class probabilities here")
    parser.add_argument("--solution", default=None, metavar="FILE",
                        help="answers of the test images (class names, tags, 0/1 targets or one 0/1 column per "
                             "class): print the submission's accuracy and metric, or with --eval check the model "
                             "on them")
    parser.add_argument("--eval", action="store_true", help="check the model on labelled data (the run's validation "
                                                           "split, or --solution) instead of writing a submission")
    parser.add_argument("--metric", default=None, type=_metric_name,
                        help=f"the competition's metric ({', '.join(metrics.METRICS)} or map@K): it decides the "
                             "submission's shape, an ensemble's weights are fitted for it, and --solution/--eval "
                             "report it (default: the metric the first checkpoint's run was trained for)")
    parser.add_argument("--weights", default="fit", type=_weights_option, metavar="fit|equal|W1,W2,...",
                        help="an ensemble's weights: fitted on the validation images its members share (never "
                             "below the best member there), equal, or one non-negative number per model in the "
                             "order given (e.g. 0.7,0.3; normalised to sum 1)")
    parser.add_argument("--batch-size", type=cli.int_in(1), default=256, help="images per inference batch")
    parser.add_argument("--device", default="auto", type=cli.checked(check_device, "device"),
                        help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--cache-dir", default="", help="where decoded images are cached (default: next to them)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar while decoding images")
    return parser


def _weights_option(text: str):
    """--weights: fit, equal, or numbers separated by commas (their count is checked against the models')."""
    if text in ("fit", "equal"):
        return text
    try:
        weights = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected fit, equal or one number per model (e.g. 0.7,0.3)") \
            from None
    try:  # the values checked where they are read, by the one check of hand-given weights
        given_weights(weights, len(weights))
    except OptionError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return weights


def _metric_name(text: str) -> str:
    try:
        return metrics.check_metric(text)
    except OptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_eval(args, predictors: list[Predictor], images: ImageCache, device: torch.device, weighting: Weighting) -> dict:
    """--eval: report on the validation split or the --solution images, and save the figures."""
    data_dir, first = Path(args.data), predictors[0]
    class_names = first.class_names
    answers = None
    if args.solution:
        solution = read_id_csv(args.solution)
        check_data(predictors, data_dir, None, solution)
        index = index_test(args, predictors)
        answers = read_answers(solution, index, first.class_names, first.multi_label)
        files, labels, what = answers.files, answers.labels, f"{args.solution}"
        partial = answers.coverage(len(index.files))
        what += f"; {partial}" if partial else ""
    else:
        check_data(predictors, data_dir)
        try:
            files, labels = validation_images(predictors, data_dir)
        except DataError as e:
            raise DataError(f"{explain(e)}: check the model(s) with --solution FILE instead") from None
        what = (f"validation split of {first.path}" if len(predictors) == 1 else
                f"the validation images shared by the {len(predictors)} models")
        if weighting.choice == "fitted":
            what += ", the images the weights were fitted on: optimistic"
    probs = ensemble_probs(predictors, files, images, device, args.batch_size, args.tta, weighting.weights)
    thresholds = submission_thresholds(predictors, weighting)
    result = evaluate_labels(probs, labels, class_names, thresholds)
    result.update(metric=weighting.metric, score=metrics.score(weighting.metric, probs, labels, thresholds))
    print(format_report(result, class_names, what + (", TTA" if args.tta else "")))
    if result["confusion"] is not None:  # single-label: figures of classes confused and the worst mistakes
        save_figures(predictors, images, files, probs, labels, result, args.written)
    if answers:
        record_test_acc(predictors, result["accuracy"], args.tta, args.solution, answers)
    return result


def save_figures(predictors: list[Predictor], images: ImageCache, files: list[Path], probs: np.ndarray,
                 labels: np.ndarray, result: dict, written: list[str]):
    """confusion_matrix.png and wrong.png in the first model's run folder."""
    first, class_names = predictors[0], predictors[0].class_names
    title = " + ".join(p.spec.arch for p in predictors) + f": accuracy {result['accuracy']:.2%}"
    pixels = images.pixels(files, first.spec.img_size, first.spec.channels)
    try:  # the report is printed: a run folder we cannot write in (read-only) costs only the figures
        runs.plot_confusion(result["confusion"], class_names, first.run_dir / "confusion_matrix.png", title)
        runs.plot_wrong(pixels, probs, labels, class_names, first.run_dir / "wrong.png")
        print(f"saved {first.run_dir / 'confusion_matrix.png'} and {first.run_dir / 'wrong.png'}")
        written += [str(first.run_dir / "confusion_matrix.png"), str(first.run_dir / "wrong.png")]
    except OSError as e:
        log.warning("could not save the figures in %s: %s", first.run_dir, e)


def record_test_acc(predictors: list[Predictor], accuracy: float, tta: bool, solution: str | None = None,
                    answers: Answers | None = None):
    """The runs table's test accuracy (with TTA in a column of its own) belongs to a single model's run, with the
    checkpoint and epoch it measured; an ensemble's belongs to none, and so does a score that left out answers of
    classes the model does not have. A model trained without flips gets no TTA: its score is the plain one. The
    run's status and process stay as they are (it may still be training: runs.record_test_score)."""
    p = predictors[0]
    if len(predictors) > 1 or not (p.run_dir / "run.json").is_file():
        return
    if answers is not None and answers.other_classes:
        log.info("the test accuracy is not recorded in %s: answers of classes the model does not have were left "
                 "out", p.run_dir / "run.json")
        return
    key = "test_acc_tta" if tta and p.has_tta else "test_acc"
    runs.record_test_score(p.run_dir, key, accuracy, p.path, p.checkpoint["epoch"], solution or "")


def run_metric(args, predictors: list[Predictor]) -> str:
    """--metric, else the metric the first checkpoint's run was trained for (accuracy for runs from before
    there was a choice)."""
    if args.metric:
        return args.metric
    metric = predictors[0].checkpoint["config"].get("metric", "accuracy")
    try:
        return metrics.check_metric(metric)
    except OptionError:
        raise DataError(f"{predictors[0].path} was trained for the metric {metric!r}, which this predict.py does not "
                        f"know: choose one with --metric ({', '.join(metrics.METRICS)} or map@K)") from None


def protected_inputs(args, predictors: list[Predictor]) -> tuple[dict[Path, str], list[Path]]:
    """({file: what it is}, image folders) that this command reads: the checkpoints, the dataset's labels (the
    runs' own labels file too), its samples, the solution; the image folders of the dataset and the runs
    (train_dir, test_dir), and --test-dir. A folder or file a run or option names resolves as the data layer
    resolves it: inside the data folder when it is there, else as given."""
    data_dir = Path(args.data)
    configs = [p.checkpoint["config"] for p in predictors]
    inputs = {p.path: "a checkpoint" for p in predictors}
    inputs.update({data_dir / name: "the training labels" for name in data.LABEL_FILES})
    inputs.update({_in_data(data_dir, c["labels"]): "the training labels" for c in configs if c.get("labels")})
    inputs.update({path: "the sample" for path in [data_dir / "sample_submission.csv", *sample_files(data_dir)]})
    if args.solution:
        inputs[Path(args.solution)] = "--solution"
    image_dirs = [data_dir / d for d in (*data.TRAIN_DIRS, *data.TEST_DIRS)]
    named = [args.test_dir, *(c.get(key) for c in configs for key in ("train_dir", "test_dir"))]
    image_dirs += [_in_data(data_dir, folder) for folder in named if folder]
    return inputs, image_dirs


def _in_data(data_dir: Path, given: str | Path) -> Path:
    path = Path(given)
    return data_dir / path if not path.is_absolute() and (data_dir / path).exists() else path


def check_outputs(args, predictors: list[Predictor]):
    """Refuse an output that would destroy an input of this command (`protected_inputs`: a checkpoint, the
    dataset's files, the sample or the solution), the other output, a folder, or a file a CSV never is: before
    anything is written."""
    inputs, image_dirs = protected_inputs(args, predictors)
    outputs = [(name, Path(value)) for name, value in (("--out", args.out or "submission.csv"), ("--probs", args.probs))
               if value]
    for name, path in outputs:
        if path.is_dir():
            raise DataError(f"{name} {path} is a folder: name the file to write (e.g. {path / 'submission.csv'})")
        for given, what in inputs.items():
            if _same_file(path, given):
                raise DataError(f"{name} {path} is {what} of this command: writing it would destroy it; "
                                "choose another file")
        for folder in image_dirs:
            if folder.is_dir() and path.resolve().is_relative_to(folder.resolve()):
                raise DataError(f"{name} {path} is inside the dataset's image folder {folder}; write it elsewhere")
        if path.suffix.lower() in data.IMG_EXTENSIONS | {".pt", ".pth", ".bin", ".safetensors", ".npy", ".json"}:
            raise DataError(f"{name} {path}: writes a CSV file, not a {path.suffix} file; choose a .csv name")
    if len(outputs) == 2 and _same_file(outputs[0][1], outputs[1][1]):
        raise DataError(f"--out and --probs name the same file {outputs[0][1]}: the probabilities would replace the "
                        "submission")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def interrupted(args, terminated: bool) -> str:
    """The one line that Ctrl-C (or SIGTERM) ends predict.py with: what was written, and what was kept as it was."""
    written = getattr(args, "written", [])
    outputs = [] if args.eval else [str(o) for o in (args.out or "submission.csv", args.probs) if o]
    parts = [f"wrote {' and '.join(written)}" if written else "nothing was written"]
    kept = [o for o in outputs if o not in written and Path(o).exists()]
    if kept:
        parts.append(f"the existing {' and '.join(kept)} {'is' if len(kept) == 1 else 'are'} untouched")
    unwritten = [o for o in outputs if o not in written and o not in kept]
    if written and unwritten:
        parts.append(f"{' and '.join(unwritten)} not written")
    return f"{'terminated' if terminated else 'interrupted'}: {'; '.join(parts)}"


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with cli.sigterm_raises():
            return _main(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: one line, no traceback
        print(interrupted(args, isinstance(e, cli.Terminated)), file=sys.stderr)
        sys.exit(cli.interrupted_status(e))


def _main(args):
    """predict.py's flow: models, checks, weights, then the submission or the --eval report."""
    args.written = []
    try:
        if args.eval and (args.out or args.probs):
            raise DataError("--eval checks a model and writes no submission: drop --out/--probs, or --eval")
        if args.batch_size < 1:
            raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
        if not Path(args.data).is_dir():
            raise DataError(f"dataset folder {args.data} does not exist")
        device = setup_runtime(args.device).device
        predictors = load_models(args.checkpoints, device)
        if not args.eval:
            check_outputs(args, predictors)
        metric = run_metric(args, predictors)
        plan = None if args.eval else plan_submission(args, predictors, metric)  # refused before a model runs
        images = ImageCache(data.cache_dir_for(args.data, args.cache_dir or None), args.progress)
        weighting = ensemble_weights(predictors, Path(args.data), images, device, args.batch_size, args.tta,
                                     metric, args.weights)
        if weighting.warning:
            log.warning("%s", weighting.warning)
        if len(predictors) > 1:
            print(format_weighting(weighting, predictors, args.tta))
            print(f"the {'check' if args.eval else 'submission'} uses "
                  f"{models_used(weighting, [member_name(p) for p in predictors])}")
        if args.eval:
            return run_eval(args, predictors, images, device, weighting)
        return run_predict(args, predictors, images, device, weighting, plan)
    except UsageError as e:
        sys.exit(f"error: {explain(e)}")


if __name__ == "__main__":
    main()
