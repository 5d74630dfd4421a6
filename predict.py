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
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import data
import inference
import metrics
import runs
from checkpoint import ModelSpec, load_checkpoint, model_from_checkpoint, read_spec
from ensemble import (Weighting, are_folds, blend, choose_weights, equal_weights, fold_groups, format_weighting,
                      out_of_fold_weights, recorded_val_scores, validation_images)
from errors import DataError, UsageError, explain
from runtime import setup_runtime
from submission import score_submission, solution_images, submission_rows, write_submission

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
    """Softmax probabilities (N, classes) of one model, averaged over the TTA views (with `tta`, for a model
    trained with flips); batched, in the precision and memory format the model was trained with."""
    out = inference.predict_probs(p.model, pixels, p.spec.preprocess(), p.spec.compute, device, batch_size,
                                  tta and p.has_tta)
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
    """The ensemble's probabilities for `files`: the weighted mean of each model's softmax (equal weights by
    default), each model at its own image size and channels; a model of weight 0 is not run."""
    weights = equal_weights(len(predictors)) if weights is None else np.asarray(weights, dtype=np.float64)
    used = [(p, w) for p, w in zip(predictors, weights) if w > 0]
    return blend(member_probs([p for p, _ in used], files, images, device, batch_size, tta), [w for _, w in used])


# ----------------------------------------------------------------------------------------------
# Ensemble weights (ensemble.py chooses them; here the members are run)
# ----------------------------------------------------------------------------------------------

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
                         warning=f"WARNING: the ensemble's weights could not be fitted ({explain(e)}): using equal "
                                 "weights. "
                                 f"Each member's own best validation score: {own}")
    return choose_weights(probs, labels, metric)


# ----------------------------------------------------------------------------------------------
# Checking a model on labelled data
# ----------------------------------------------------------------------------------------------

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
    return {"accuracy": metrics.accuracy(predicted, labels), "confusion": confusion,
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
            raise DataError(f"{explain(e)}: check the model(s) with --solution FILE instead") from None
        what = (f"validation split of {first.path}" if len(predictors) == 1 else
                f"the validation images shared by the {len(predictors)} models")
        if weighting.choice == "fitted":
            what += ", the images the weights were fitted on: optimistic"
    probs = ensemble_probs(predictors, files, images, device, args.batch_size, args.tta, weighting.weights)
    result = evaluate_labels(probs, labels, class_names)
    result.update(metric=weighting.metric, score=metrics.score(weighting.metric, probs, labels))
    print(format_report(result, class_names, what + (", TTA" if args.tta else "")))
    title = " + ".join(p.spec.arch for p in predictors) + f": accuracy {result['accuracy']:.2%}"
    pixels = images.pixels(files, first.spec.img_size, first.spec.channels)
    try:  # the report is printed: a run folder we cannot write in (read-only) costs only the figures
        runs.plot_confusion(result["confusion"], class_names, first.run_dir / "confusion_matrix.png", title)
        runs.plot_wrong(pixels, probs, labels, class_names, first.run_dir / "wrong.png")
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
    probs = ensemble_probs(predictors, files, images, device, args.batch_size, args.tta, weighting.weights)
    out = Path(args.out or "submission.csv")
    write_submission(out, header, ids, [class_names[i] for i in probs.argmax(1)], class_names)
    print(f"wrote {out}: {len(ids)} rows, {len(predictors)} model(s){', TTA' if args.tta else ''}")
    if args.probs:
        runs.write_predictions(Path(args.probs), ids, None, probs, class_names, id_column=header[0])
        print(f"wrote {args.probs}: probabilities of {len(class_names)} classes")
    if args.solution:
        accuracy = score_submission(out, args.solution)
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
