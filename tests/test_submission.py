"""submission.py: a submission is checked as it reads back before it replaces anything, and scored against a
solution by id."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

import data
import predict
import submission
from conftest import write_csv

ODD_CLASSES = ("T-shirt/top", 'say "hi", ok', "Bag")  # names that need CSV quoting (comma, double quote)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_submission_is_checked_before_it_is_written(tmp_path):
    out = tmp_path / "submission.csv"
    with pytest.raises(data.DataError, match="not classes"):
        submission.write_submission(out, ["id", "label"], ["a", "b"], ["cat", "cow"], ["cat", "dog"])
    with pytest.raises(data.DataError, match="duplicate"):
        submission.write_submission(out, ["id", "label"], ["a", "a"], ["cat", "dog"], ["cat", "dog"])
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left
    submission.write_submission(out, ["ImageId", "Category"], ["a", "b", "c"], list(ODD_CLASSES), list(ODD_CLASSES))
    assert read_rows(out) == (["ImageId", "Category"], [["a", "T-shirt/top"], ["b", 'say "hi", ok'], ["c", "Bag"]])
    assert out.read_text().splitlines()[2] == 'b,"say ""hi"", ok"'


def test_submission_accuracy(tmp_path):
    write_csv(tmp_path / "solution.csv", ["id", "label"], [("a", "x, y"), ("b", "z"), ("c", "z")])
    write_csv(tmp_path / "good.csv", ["id", "pred"], [("c", "z"), ("a", "x, y"), ("b", "z")])
    write_csv(tmp_path / "one_wrong.csv", ["id", "label"], [("a", "x, y"), ("b", "x, y"), ("c", "z")])
    write_csv(tmp_path / "short.csv", ["id", "label"], [("a", "x, y"), ("b", "z")])
    assert submission.submission_accuracy(tmp_path / "good.csv", tmp_path / "solution.csv") == 1.0
    assert submission.submission_accuracy(tmp_path / "one_wrong.csv", tmp_path / "solution.csv") == \
        pytest.approx(2 / 3)
    with pytest.raises(data.DataError, match="1 missing from the submission"):
        submission.submission_accuracy(tmp_path / "short.csv", tmp_path / "solution.csv")


def test_one_name_for_each_thing():
    """Labels are read by data.parse_labels, test images indexed by data.index_test_images; a number is parsed
    here and formatted in predict.py, each under its own name."""
    for old in ("label_indices", "find_test_index", "score_submission", "_number"):
        assert not hasattr(submission, old), old
    assert not hasattr(predict, "_number") and predict._format_number(float("nan")) == "n/a"
    assert submission._parse_number(" 0.5 ") == 0.5 and submission._parse_number("inf") is None
