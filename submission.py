"""The submission's shape: which rows (the sample submission's, or every test image), writing a submission
that reads back as intended, labelled images from a solution file, and scoring a submission against one.

    header, ids, files = submission_rows(data_dir)              # the rows, in the sample's order
    write_submission(path, header, ids, predictions, class_names)
    score_submission("submission.csv", "solution.csv")          # accuracy, rows matched by id
"""
from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

import data
import metrics
from errors import DataError
from fileio import atomic_write

log = logging.getLogger("imgcomp")

DEFAULT_HEADER = ["id", "label"]


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
                            "a submission holds an id and one prediction column")
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


def score_submission(submission_csv: str | Path, solution_csv: str | Path) -> float:
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
    return metrics.accuracy([predicted[i] for i in wanted], [v.strip() for v in values_of(sol)])


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
