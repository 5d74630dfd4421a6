"""The submission's rows and shape: the sample submission (its rows, its order, its header), the shape it asks
for, writing a submission that reads back as intended, and the answers of a solution file.

    sample = read_sample(data_dir)                  # None without DIR/sample_submission.csv (or its one variant)
    shape = choose_shape(sample, class_names, multi_label, "roc_auc")   # shape.kind, shape.reason
    ids, files = submission_rows(data.index_test_images(data_dir), sample)  # the rows, in the sample's order
    write_submission(path, shape.header, ids, submission_cells(shape, probs, class_names), class_names, shape)
    submission_accuracy("submission.csv", "solution.csv")     # a labels submission's accuracy, rows by id

The shapes (SHAPES), each a header of the id and:
- labels: one column of class names (the most probable class);
- probs: one probability column per class, named by the classes in any order;
- score: one column, the probability of the positive class of a binary model (metrics.positive_class);
- tags: one column, a multi-label model's classes over their thresholds joined by spaces (metrics.decide);
- topk: one column, the K most probable classes joined by spaces, the most probable first (MAP@K).
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import data
import metrics
from errors import DataError, OptionError
from fileio import atomic_write

log = logging.getLogger("imgcomp")

SHAPES = ("labels", "probs", "score", "tags", "topk")
SAMPLE_FILE = "sample_submission.csv"
DEFAULT_HEADER = ["id", "label"]
# The prediction column's name without a sample (probs: the class names).
DEFAULT_COLUMN = {"labels": "label", "score": "target", "tags": "tags", "topk": "label"}
# Probabilities come from float32: 7 significant digits keep all they hold, written without an exponent.
PROB_DIGITS = 7
SUM_TOLERANCE = 1e-4  # how far a row of written probabilities may sum from 1 (rounding)


def read_id_csv(path: str | Path) -> data.CsvTable:
    """A CSV of (id, value, ...) rows such as sample_submission.csv or solution.csv: the first column is the
    id, then the prediction column(s)."""
    table = data.read_csv(path)
    if len(table.header) < 2:
        raise DataError(f"{path}: the header {table.header} has {len(table.header)} column(s); expected id and label")
    return table


def ids_of(table: data.CsvTable) -> list[str]:
    return [row[0] for row in table.rows]


def values_of(table: data.CsvTable) -> list[str]:
    return [row[1] for row in table.rows]


# ----------------------------------------------------------------------------------------------
# The rows
# ----------------------------------------------------------------------------------------------

def sample_files(data_dir: Path) -> list[Path]:
    """The files of `data_dir` that may be its sample: sample_submission*.csv (any letter case), natural order."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    stem = SAMPLE_FILE[:-len(".csv")]
    return sorted((p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() == ".csv"
                   and p.name.lower().startswith(stem)), key=lambda p: data.natural_key(p.name))


def find_sample(data_dir: Path) -> Path | None:
    """DIR/sample_submission.csv, else the only sample_submission*.csv of DIR (planet's sample_submission_v2.csv);
    None when there is none, an error listing them when there are several."""
    path = Path(data_dir) / SAMPLE_FILE
    if path.is_file():
        return path
    found = sample_files(data_dir)
    if len(found) > 1:
        raise DataError(f"{data_dir} has no {SAMPLE_FILE} and {len(found)} files that may be the sample:"
                        f"{data.listing([p.name for p in found])}\nkeep the competition's one (or name it "
                        f"{SAMPLE_FILE})")
    return found[0] if found else None


def read_sample(data_dir: Path) -> data.CsvTable | None:
    """The sample (`find_sample`), or None when there is none."""
    path = find_sample(data_dir)
    if path is None:
        return None
    sample = read_id_csv(path)
    if not sample.rows:
        raise DataError(f"{path}: no rows")
    log.info("sample submission: %s (%d rows, header %s)", path, len(sample.rows), ",".join(sample.header))
    return sample


def submission_rows(index: data.FileIndex, sample: data.CsvTable | None = None,
                    header: list[str] | None = None) -> tuple[list[str], list[Path]]:
    """(ids, image files) of the submission: the sample's rows in its order when there is a sample (every
    test image of `index` must be one), else every test image in natural order, ids without extension
    (`header`: for the log)."""
    if sample is not None:
        return ids_of(sample), data.match_ids(ids_of(sample), sample.lines, index, sample.path, complete=True)
    folder, files = index.folder, index.files
    ids = [os.path.splitext(Path(os.path.relpath(f, folder)).as_posix())[0] for f in files]
    if len(set(ids)) != len(ids):
        clashes = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise DataError(f"{folder}: several images share an id once the extension is dropped:{data.listing(clashes)}\n"
                        f"add a sample_submission.csv naming them")
    log.info("no sample_submission.csv: predicting every image of %s with the header %s", folder,
             ",".join(header or DEFAULT_HEADER))
    nested = [i for i in ids if "/" in i]
    if nested:  # the folder is read with its subfolders, as training folders are
        log.info("%d of the test images are in subfolders of %s: their ids hold the subfolder (e.g. %r)",
                 len(nested), folder, nested[0])
    return ids, files


# ----------------------------------------------------------------------------------------------
# The shape
# ----------------------------------------------------------------------------------------------

@dataclass
class Shape:
    """What the submission holds after the id (`kind`, one of SHAPES), its header, and why (`reason`, for the
    log; `chosen_by`: the (option, value) that chose it, when one did). `columns`: for probs, the class index of
    each column after the id, in the header's order; `positive`: for score, the class whose probability is
    written; `top_k`: for topk, K. `warning`: a choice that may cost score, for the log, and `advice`: what would
    change it, as (option, what to do with it) pairs (errors.UsageError's option and fix; the command line spells
    the flags)."""
    kind: str
    header: list[str]
    reason: str
    multi_label: bool = False
    columns: list[int] | None = None
    positive: int | None = None
    top_k: int | None = None
    warning: str = ""
    chosen_by: tuple[str, object] | None = None
    advice: list[tuple[str, str]] = field(default_factory=list)


def choose_shape(sample: data.CsvTable | None, class_names: list[str], multi_label: bool, metric: str,
                 requested: str = "auto", top_k: int | None = None) -> Shape:
    """The submission's shape: `requested` (a shape of SHAPES), or with "auto" the one the sample asks for (its
    columns and values), the model (multi-label: tags) and the metric (map@K: topk; roc_auc/log_loss of a
    binary model: score). Without a sample the header is "id" and what the shape needs. An error names the
    sample and its column or row when the sample fits no shape or not the model."""
    if requested not in ("auto", *SHAPES):
        raise OptionError(f"unknown submission shape {requested!r}: choose auto or one of {', '.join(SHAPES)}",
                          option="submission")
    if top_k is not None and top_k < 1:
        raise OptionError(f"K must be at least 1, got {top_k}", option="top_k")
    if top_k is not None and requested not in ("auto", "topk"):
        raise OptionError(f"writes the K most probable classes (the topk shape), not {requested}", option="top_k",
                          value=top_k, fix="leave {flag} out, or ask for the topk shape")
    k = top_k or metrics.top_k(metric)
    kind, reason, chosen_by = _pick_kind(sample, class_names, multi_label, metric, requested, top_k, k)
    _check_fit(kind, sample, class_names, multi_label, k)
    shape = Shape(kind, _header(kind, sample, class_names), reason, multi_label, chosen_by=chosen_by)
    if kind == "probs":
        shape.columns = match_columns(shape.header[1:], class_names, sample.path if sample else "the submission")
    elif kind == "score":
        shape.positive = metrics.positive_class(class_names)
        shape.reason += f"; the positive class is {class_names[shape.positive]!r}"
    elif kind == "topk":
        shape.top_k = min(k, len(class_names))
        if k > len(class_names):
            shape.reason += f" (all {len(class_names)}: the model has no more classes)"
    shape.warning, shape.advice = _warning(shape, sample, class_names, metric)
    return shape


def _pick_kind(sample, class_names, multi_label, metric, requested, top_k, k) -> tuple[str, str, tuple | None]:
    """(shape, why, the (option, value) that chose it) for `requested`, or read from the sample, the model and
    the metric."""
    if requested != "auto":
        return requested, "asked for", ("submission", requested)
    if top_k:
        return "topk", f"the {top_k} most probable classes", ("top_k", top_k)
    if k:
        return "topk", f"the metric {metric} scores the {k} most probable classes", None
    if sample is not None and len(sample.header) > 2:
        return "probs", (f"{sample.path} has {len(sample.header) - 1} prediction columns: one probability per "
                         "class"), None
    if multi_label:
        return "tags", "the model is multi-label: its tags over their thresholds", None
    binary, needs_score = len(class_names) == 2, metrics.needs_score(metric)
    if sample is None:
        if binary and needs_score:
            return "score", f"the metric {metric} scores the probability of a binary model", None
        if needs_score:
            return "probs", f"no sample, and the metric {metric} scores probabilities", None
        return "labels", "no sample: the most probable class", None
    values = _value_kind(sample, class_names)
    if binary and needs_score:  # a sample of class names wins over the metric
        if values == "names":
            return "labels", (f"{sample.path}'s values are class names (line {sample.lines[0]}: "
                              f"{values_of(sample)[0]!r}): the most probable class"), None
        return "score", f"the metric {metric} scores the probability of a binary model", None
    fraction = _first_fraction(sample)
    if binary and fraction:
        return "score", f"{sample.path}'s values are fractional ({fraction}): a probability", None
    if binary and values == "numbers":
        return "score", (f"the sample's values are numbers, not class names ({sample.path} line {sample.lines[0]}: "
                         f"{values_of(sample)[0]!r}): a probability"), None
    return "labels", f"{sample.path} has one prediction column: the most probable class", None


def _value_kind(sample, class_names: list[str]) -> str:
    """What the values of a one-column sample are: "names" (class names, not all of them numbers), "numeric
    names" (numbers that are class names, as 0/1 of classes "0" and "1"), "numbers" (none a class name), or
    "other"."""
    values = [v.strip() for v in values_of(sample)]
    numbers = all(_parse_number(v) is not None for v in values)
    named = [v in set(class_names) for v in values]
    if all(named):
        return "numeric names" if numbers else "names"
    return "numbers" if numbers and not any(named) else "other"


def _check_fit(kind: str, sample, class_names: list[str], multi_label: bool, k: int | None):
    """Refuse a shape that the sample or the model cannot have, naming the sample and its column or row."""
    where = sample.path if sample is not None else None
    if sample is not None and len(sample.header) > 2 and kind != "probs":
        raise DataError(f"{where}: {len(sample.header) - 1} prediction columns {sample.header[1:6]}...: the sample "
                        f"asks for one probability per class, not {kind} (one column)", option="submission",
                        fix="choose probs or auto")
    single_only = {"labels": "one class per image", "score": "the probability of one of two classes"}
    if kind in single_only and multi_label:
        raise DataError(f"the model is multi-label (tags), so it cannot write {kind} ({single_only[kind]}): a "
                        "multi-label model predicts for multi-label competitions", option="submission",
                        fix="write its tags with {flag} tags")
    if kind == "score" and len(class_names) != 2:
        raise DataError(f"a score is the probability of the positive class of a binary model, and the model has "
                        f"{len(class_names)} classes", option="submission", fix="choose labels or probs")
    if kind == "tags" and not multi_label:
        raise DataError("the model is single-label: tags are the decisions of a multi-label model (one trained on "
                        "tag lists)", option="submission", fix="choose labels")
    if kind == "topk" and not k:
        raise OptionError("the topk shape needs K", option="top_k", fix="give it")
    spaced = [c for c in class_names if len(c.split()) != 1]
    if kind in ("tags", "topk") and spaced:
        raise DataError(f"{kind} joins class names by spaces, and these hold spaces: {spaced[:5]}")
    if sample is not None and kind in ("labels", "score", "tags"):
        _check_sample_values(kind, sample, class_names, multi_label)


def _check_sample_values(kind: str, sample, class_names: list[str], multi_label: bool):
    """The sample's values that tell of another competition: fractions, or numbers that are no class, for a
    model of more classes than two; numbers for a multi-label model; lists of classes for a single-label one."""
    fraction = _first_fraction(sample)
    if fraction and kind == "labels":
        raise DataError(f"{sample.path} fits no shape of this model: its values are fractional ({fraction}), a "
                        f"probability, which one column holds only for a binary model; the model has "
                        f"{len(class_names)} classes")
    if kind == "labels" and len(class_names) != 2 and _value_kind(sample, class_names) == "numbers":
        raise DataError(f"{sample.path} fits no shape of this model: its values are numbers, not class names (line "
                        f"{sample.lines[0]}: {values_of(sample)[0]!r}); one number per image is the probability of "
                        f"a binary model's positive class, and the model has {len(class_names)} classes "
                        f"({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''})")
    names = set(class_names)
    numbers = [v for v in values_of(sample) if _parse_number(v) is not None and v.strip() not in names]
    if kind == "tags" and len(numbers) == len(sample.rows):
        raise DataError(f"{sample.path}: its values are numbers (line {sample.lines[0]}: {numbers[0]!r}), not tags: "
                        "the competition is not a multi-label one, and the model is multi-label")
    for value, line in zip(values_of(sample), sample.lines):
        tokens = value.split()
        if not multi_label and value.strip() not in names and len(tokens) > 1 and set(tokens) <= names:
            raise DataError(f"{sample.path} line {line}: {value!r} is a list of classes, as in a multi-label "
                            "competition, and the model is single-label", option="multi_label",
                            fix="train it with {flag}, or write its K most probable classes (the topk shape)")


def _first_fraction(sample) -> str | None:
    """'line N: value' of the first fractional value when every value of the sample's column is a number and
    one of them is not 0 or 1, else None."""
    numbers = [_parse_number(v) for v in values_of(sample)]
    if any(x is None for x in numbers):
        return None
    return next((f"line {line}: {v!r}" for x, v, line in zip(numbers, values_of(sample), sample.lines)
                 if x not in (0.0, 1.0)), None)


def _parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _header(kind: str, sample, class_names: list[str]) -> list[str]:
    if sample is not None:
        return list(sample.header)
    return ["id", *class_names] if kind == "probs" else ["id", DEFAULT_COLUMN[kind]]


def _warning(shape: Shape, sample, class_names: list[str], metric: str) -> tuple[str, list[tuple[str, str]]]:
    """(warning, advice) for hard labels where the competition probably scores a probability."""
    if shape.kind != "labels":
        return "", []
    score = ("submission", "write the positive class's probability with {flag} score")
    if len(class_names) == 2 and sample is not None:
        values = _value_kind(sample, class_names)
        if values == "numbers":
            return (f"WARNING: {sample.path}'s values are numbers, not class names, and the submission holds class "
                    "names", [score])
        if all(_parse_number(v) in (0.0, 1.0) for v in values_of(sample)):
            return (f"WARNING: {sample.path} holds 0/1 numbers and the submission holds hard labels: a metric that "
                    "scores a probability (roc_auc, log_loss) needs the positive class's probability",
                    [score, ("metric", "name such a metric with {flag} roc_auc")])
        if values == "names" and metrics.needs_score(metric):
            return (f"WARNING: the metric {metric} scores probabilities, and {sample.path} asks for class names "
                    f"(line {sample.lines[0]}: {values_of(sample)[0]!r}): the submission holds them",
                    [("submission", "if the competition takes a probability, write the positive class's with "
                                    "{flag} score")])
    if metrics.needs_score(metric):
        return (f"WARNING: the metric {metric} scores probabilities, and the submission holds hard labels (the "
                "sample has one prediction column): a sample of one column per class would get them"), []
    return "", []


def match_columns(columns: list[str], class_names: list[str], where) -> list[int]:
    """The class index of each probability column, matched by name: as written, else ignoring letter case and
    surrounding spaces. An error lists the columns that are no class and the classes without a column."""
    exact = {name: i for i, name in enumerate(class_names)}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        loose.setdefault(name.strip().lower(), []).append(i)
    picked = []
    for column in columns:
        candidates = loose.get(column.strip().lower(), [])
        picked.append(exact.get(column, candidates[0] if len(candidates) == 1 else None))
    no_class = [c for c, k in zip(columns, picked) if k is None]
    twice = sorted({class_names[k] for k, n in Counter(k for k in picked if k is not None).items() if n > 1})
    without = [name for i, name in enumerate(class_names) if i not in picked]
    if no_class or twice or without:
        problems = ([f"{len(no_class)} column(s) that are no class: {no_class[:10]}"] if no_class else []) + \
                   ([f"classes with several columns: {twice[:10]}"] if twice else []) + \
                   ([f"{len(without)} class(es) without a column: {without[:10]}"] if without else [])
        raise DataError(f"{where}: the columns after the id must be the model's {len(class_names)} classes, one "
                        f"probability column each; {'; '.join(problems)}")
    return picked


# ----------------------------------------------------------------------------------------------
# The model's classes and the data's
# ----------------------------------------------------------------------------------------------

def check_classes(class_names: list[str], found: list[tuple[str, set[str], bool]]) -> list[str]:
    """Compare the model's classes with those the data names. `found`: (what, its classes, complete) for the
    training labels (complete: every class), the sample's values or columns, the solution's answers (each
    `sample_classes`, `solution_classes`). None in common with any is a DataError listing both; classes of the
    data that the model lacks (it can never predict them), and for a complete list the model's classes it lacks,
    are warnings naming them (returned)."""
    model, warnings = set(class_names), []
    for what, classes, complete in found:
        if not classes:
            continue
        if not classes & model:
            raise DataError(f"the model's classes and those of {what} have none in common: the model was trained "
                            f"for another competition, or on other labels\n  the model ({len(model)}): "
                            f"{_names(class_names)}\n  {what} ({len(classes)}): {_names(classes)}")
        lacking = classes - model
        if lacking:
            warnings.append(f"WARNING: {what} name(s) {len(lacking)} class(es) that the model does not have and so "
                            f"never predicts: {_names(lacking)} (the model has {_names(class_names)})")
        extra = model - classes if complete else set()
        if extra:
            warnings.append(f"WARNING: the model has {len(extra)} class(es) that {what} do not have: {_names(extra)}")
    return warnings


def _names(names, limit: int = 20) -> str:
    """Class names for a message, in natural order, the first `limit` of them."""
    ordered = sorted(names, key=data.natural_key) if isinstance(names, set) else list(names)
    shown = ", ".join(map(repr, ordered[:limit]))
    return shown + (f", ... ({len(ordered)} in all)" if len(ordered) > limit else "")


def _as_classes(values, class_names: list[str], loose: bool = False) -> set[str]:
    """The classes a sample's or solution's values name: a value that is a class is that class; a list of
    classes joined by spaces (tags, the top K) its classes; with `loose` (column names), a class in another
    letter case or with spaces around it (as `match_columns` takes it); anything else stands for itself."""
    names = set(class_names)
    lower = Counter(n.strip().lower() for n in class_names)
    by_lower = {n.strip().lower(): n for n in class_names if lower[n.strip().lower()] == 1}
    found = set()
    for value in values:
        value = value if loose else value.strip()
        if not value.strip():
            continue
        tokens = value.split()
        if value in names:
            found.add(value)
        elif loose and value.strip().lower() in by_lower:
            found.add(by_lower[value.strip().lower()])
        elif len(tokens) > 1 and any(t in names for t in tokens):
            found.update(tokens)
        else:
            found.add(value.strip())
    return found


def sample_classes(sample: data.CsvTable | None, class_names: list[str]) -> set[str]:
    """The classes a sample names: its prediction columns when it has several (one per class), else its values;
    numbers from 0 to 1 are left out (a probability, a 0/1 target or a placeholder), and so is a lone value that
    is no class (a placeholder, as samples often repeat one value)."""
    if sample is None:
        return set()
    if len(sample.header) > 2:
        return _as_classes(sample.header[1:], class_names, loose=True)
    values = {v for v in _as_classes(values_of(sample), class_names)
              if _parse_number(v) is None or not 0 <= _parse_number(v) <= 1}
    return values if len(values) > 1 or values & set(class_names) else set()


def solution_classes(table: data.CsvTable | None, class_names: list[str]) -> set[str]:
    """The classes a solution's answers name: its columns when it has one per class, else its answers (tags split);
    none for the 0/1 targets of a binary model (`solution_images` reads them)."""
    if table is None:
        return set()
    if len(table.header) > 2:
        return _as_classes(table.header[1:], class_names, loose=True)
    values = [v.strip() for v in values_of(table)]
    if _binary_numbers(values, class_names):
        return set()
    return _as_classes(values, class_names)


def _binary_numbers(values: list[str], class_names: list[str]) -> bool:
    """Whether a binary model's answers are numbers (0/1 targets), not its class names."""
    return len(class_names) == 2 and not set(values) <= set(class_names) and \
        all(_parse_number(v) is not None for v in values)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def format_prob(value: float) -> str:
    return np.format_float_positional(float(value), precision=PROB_DIGITS, unique=True, fractional=False, trim="-")


def submission_cells(shape: Shape, probs: np.ndarray, class_names: list[str],
                     thresholds: np.ndarray | None = None) -> list[list[str]]:
    """Each row's values after the id, for `shape`, from the probabilities (N, C) in `class_names`' order;
    `thresholds` (C,): a multi-label model's (0.5 each by default)."""
    probs = np.asarray(probs, dtype=np.float64)
    if shape.kind == "labels":
        return [[class_names[k]] for k in probs.argmax(1)]
    if shape.kind == "score":
        return [[format_prob(p)] for p in probs[:, shape.positive]]
    if shape.kind == "probs":
        if not shape.multi_label:  # rows sum to 1 as written: the rounding is all that moves them
            probs = probs / probs.sum(1, keepdims=True)
        return [[format_prob(p) for p in row] for row in probs[:, shape.columns]]
    if shape.kind == "tags":
        decided = metrics.decide(probs, thresholds)
        return [[" ".join(class_names[k] for k in np.flatnonzero(row))] for row in decided]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :shape.top_k]
    return [[" ".join(class_names[k] for k in row)] for row in order]


def check_submission(table: data.CsvTable, header: list[str], ids: list[str], class_names: list[str],
                     shape: Shape | None = None):
    """The submission as read back from disk: the expected header, one row per id in the expected order,
    no duplicates, every value what its shape allows (labels by default)."""
    where, written = table.path, ids_of(table)
    if table.header != header:
        raise DataError(f"{where}: header {table.header} differs from the expected {header}")
    if len(set(written)) != len(written):
        raise DataError(f"{where}: duplicate ids")
    if written != ids:
        raise DataError(f"{where}: {len(written)} rows do not match the {len(ids)} expected ids in order")
    kind = shape.kind if shape else "labels"
    if kind == "labels":
        unknown = sorted(set(values_of(table)) - set(class_names))
        if unknown:
            raise DataError(f"{where}: values that are not classes: {unknown}")
    elif kind in ("probs", "score"):
        _check_probabilities(table, sums_to_one=kind == "probs" and not shape.multi_label)
    else:
        _check_class_lists(table, class_names, shape.top_k if kind == "topk" else None)


def _check_probabilities(table: data.CsvTable, sums_to_one: bool):
    for row, line in zip(table.rows, table.lines):
        values = [_parse_number(v) for v in row[1:]]
        bad = [(c, v) for c, v, x in zip(table.header[1:], row[1:], values) if x is None or not 0 <= x <= 1]
        if bad:
            raise DataError(f"{table.path} line {line}: column {bad[0][0]!r} holds {bad[0][1]!r}, not a probability")
        if sums_to_one and abs(sum(values) - 1) > SUM_TOLERANCE:
            raise DataError(f"{table.path} line {line}: the probabilities sum to {sum(values):.6f}, not 1")


def _check_class_lists(table: data.CsvTable, class_names: list[str], k: int | None):
    """Tags (at least one class) or the top K (K distinct classes), joined by single spaces."""
    names = set(class_names)
    for value, line in zip(values_of(table), table.lines):
        tokens = value.split(" ")
        if not value or set(tokens) - names or len(set(tokens)) != len(tokens) or (k and len(tokens) != k):
            raise DataError(f"{table.path} line {line}: {value!r} is not {k or 'a list of'} distinct classes "
                            "joined by spaces")


def write_submission(path: Path, header: list[str], ids: list[str], predictions: list, class_names: list[str],
                     shape: Shape | None = None):
    """Write the submission atomically, after checking what was written reads back as intended. `predictions`:
    each row's value (a string), or its values after the id (a list), of `shape` (labels by default)."""
    path = Path(path)
    cells = [[p] if isinstance(p, str) else list(p) for p in predictions]

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows([ident, *row] for ident, row in zip(ids, cells))
        written = read_id_csv(tmp)
        written.path = path
        check_submission(written, header, ids, class_names, shape)
        if [row[1:] for row in written.rows] != cells:
            raise DataError(f"{path}: the predictions do not read back as written")

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


# ----------------------------------------------------------------------------------------------
# Solutions
# ----------------------------------------------------------------------------------------------

def submission_accuracy(submission_csv: str | Path, solution_csv: str | Path) -> float:
    """Accuracy of a labels submission against a solution CSV (id, label), matching rows by id."""
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
    return metrics.accuracy([predicted[i] for i in wanted], [v.strip() for v in values_of(sol)])


def solution_images(solution: Path, index: data.FileIndex | Path, class_names: list[str],
                    multi_label: bool = False) -> tuple[list[Path], np.ndarray]:
    """The test images named by a solution CSV and their labels ((N,) class indices, or (N, C) multi-hot for
    `multi_label`) in the model's `class_names`. The answers may be class names, tags joined by spaces, 0/1
    targets of a binary model (1: metrics.positive_class), or one 0/1 column per class (one-hot)."""
    table = read_id_csv(solution)
    if not table.rows:
        raise DataError(f"{solution}: no rows")
    if not isinstance(index, data.FileIndex):
        index = data.index_test_images(index)
    files = data.match_ids(ids_of(table), table.lines, index, solution)
    return files, _answers(table, class_names, multi_label)


def _answers(table: data.CsvTable, class_names: list[str], multi_label: bool) -> np.ndarray:
    """The labels of a solution's rows: class indices, or (N, C) multi-hot for `multi_label`."""
    if len(table.header) > 2:
        return _one_hot_answers(table, class_names, multi_label)
    values = [v.strip() for v in values_of(table)]
    if multi_label:
        return data.parse_labels(values, class_names, True, table.path, table.lines)
    if _binary_numbers(values, class_names):
        return _binary_targets(table, values, class_names)
    return data.parse_labels(values, class_names, False, table.path, table.lines)


@dataclass
class Answers:
    """What a solution answers for the test images (`read_answers`): the images it names that are test images and
    their labels (class indices, or multi-hot), its rows in all, and the rows left out: `no_image` (its ids
    without a test image, "line N: 'id'") and `other_classes` (rows of classes the model does not have)."""
    files: list[Path]
    labels: np.ndarray
    rows: int
    no_image: list[str]
    other_classes: int

    def coverage(self, images: int) -> str:
        """How many of `images` predicted test images the answers score, and why not all ("" when every one)."""
        why = []
        if images > len(self.files) + self.other_classes:
            why.append(f"the solution has no row for {images - len(self.files) - self.other_classes}")
        if self.other_classes:
            why.append(f"{self.other_classes} answer(s) are classes the model does not have")
        return f"scored on {len(self.files)} of {images} test images: {'; '.join(why)}" if why else ""


def read_answers(table: data.CsvTable, index: data.FileIndex, class_names: list[str],
                 multi_label: bool = False) -> Answers:
    """A solution's answers for the test images it shares with `index` (as `solution_images` reads them, but ids
    without a test image and rows of classes the model does not have are left out, with a warning that counts
    them, not an error; a solution that shares no scorable row with the test images is one)."""
    if not table.rows:
        raise DataError(f"{table.path}: no rows")
    files = data.match_ids(ids_of(table), table.lines, index, table.path, missing_ok=True)
    no_image = [f"line {line}: {ident.strip()!r}" for ident, line, f in zip(ids_of(table), table.lines, files)
                if f is None]
    names = set(class_names)
    known = len(table.header) > 2 or _binary_numbers([v.strip() for v in values_of(table)], class_names)
    keep, other = [], 0
    for k, (row, f) in enumerate(zip(table.rows, files)):
        if f is None:
            continue
        answer = row[1].strip()
        if not known and answer and not (set(answer.split()) if multi_label else {answer}) <= names:
            other += 1
            continue
        keep.append(k)
    if not keep:
        raise DataError(f"{table.path}: none of its {len(table.rows)} rows answers a test image of {index.folder} "
                        f"in the model's classes ({len(no_image)} id(s) without a test image, e.g."
                        f"{data.listing(no_image, 3)})" if no_image else
                        f"{table.path}: none of its {len(table.rows)} rows answers in the model's classes")
    if no_image:
        log.warning("WARNING: %s: %d of its %d ids have no test image in %s, and are not scored:%s", table.path,
                    len(no_image), len(table.rows), index.folder, data.listing(no_image, 5))
    if other:
        log.warning("WARNING: %s: %d of its rows answer a class the model does not have, and are not scored",
                    table.path, other)
    kept = data.CsvTable(table.path, table.header, [table.rows[k] for k in keep], [table.lines[k] for k in keep])
    return Answers([files[k] for k in keep], _answers(kept, class_names, multi_label), len(table.rows), no_image,
                   other)


def _binary_targets(table: data.CsvTable, values: list[str], class_names: list[str]) -> np.ndarray:
    """0/1 targets of a binary model as class indices: 1 is the positive class."""
    positive = metrics.positive_class(class_names)
    for value, line in zip(values, table.lines):
        if _parse_number(value) not in (0.0, 1.0):
            raise DataError(f"{table.path} line {line}: target {value!r} is neither 0 nor 1 (the targets of a binary "
                            f"model; 1 is its positive class {class_names[positive]!r})")
    return np.array([positive if _parse_number(v) == 1 else 1 - positive for v in values], dtype=np.int64)


def _one_hot_answers(table: data.CsvTable, class_names: list[str], multi_label: bool) -> np.ndarray:
    """One 0/1 column per class: class indices (exactly one 1 per row), or multi-hot rows for `multi_label`."""
    columns = match_columns(table.header[1:], class_names, table.path)
    hot = np.zeros((len(table.rows), len(class_names)), dtype=np.uint8)
    for r, (row, line) in enumerate(zip(table.rows, table.lines)):
        for column, k, value in zip(table.header[1:], columns, row[1:]):
            if _parse_number(value) not in (0.0, 1.0):
                raise DataError(f"{table.path} line {line}: column {column!r} holds {value!r}, not 0 or 1")
            hot[r, k] = _parse_number(value) == 1
        if not multi_label and hot[r].sum() != 1:
            raise DataError(f"{table.path} line {line}: {int(hot[r].sum())} columns hold 1; one-hot answers of a "
                            "single-label model have exactly one")
    return hot if multi_label else hot.argmax(1).astype(np.int64)

