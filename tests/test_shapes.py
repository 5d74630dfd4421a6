"""The submission in every shape (submission.py, predict.py): the shape read from the sample, the model and the
metric; each shape written and read back; samples and solutions that fit no shape; then end to end: a tiny CNN
trained for one epoch, predicting into a sample of each shape, the submission read back as a scorer reads it and
scored with metrics.py."""
from __future__ import annotations

import csv
import importlib
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import checkpoint
import data
import metrics
import predict
import trainer
from conftest import ROOT, class_image, predict_error, run_predict, write_csv, write_dataset
from errors import DataError, OptionError, UsageError, explain
from submission import (Shape, check_submission, choose_shape, read_sample, solution_images, submission_cells,
                        write_submission)

CLASSES = ["bird", "cat", "dog"]
TAGS = ["cloud", "haze", "road", "water"]


def sample_of(tmp_path: Path, header, rows, name="sample_submission.csv") -> data.CsvTable:
    write_csv(tmp_path / name, header, rows)
    return data.read_csv(tmp_path / name)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def raises(error, call, *args, **kwargs) -> str:
    """The message of the error `call` raises, as the command line shows it."""
    with pytest.raises(error) as e:
        call(*args, **kwargs)
    return explain(e.value)


PROBS = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [1 - 2e-12, 1e-12, 1e-12]])


# ----------------------------------------------------------------------------------------------
# Choosing, writing and checking each shape, on hand-made samples
# ----------------------------------------------------------------------------------------------

def test_labels_from_a_sample_of_class_names(tmp_path):
    sample = sample_of(tmp_path, ["ImageId", "Category"], [(f"i{k}", "cat") for k in range(4)])
    shape = choose_shape(sample, CLASSES, False, "accuracy")
    assert (shape.kind, shape.header, shape.warning) == ("labels", ["ImageId", "Category"], "")
    assert "one prediction column" in shape.reason
    cells = submission_cells(shape, PROBS, CLASSES)
    assert cells == [["dog"], ["bird"], ["cat"], ["bird"]]
    out = tmp_path / "sub.csv"
    write_submission(out, shape.header, [f"i{k}" for k in range(4)], cells, CLASSES, shape)
    assert read_rows(out) == (["ImageId", "Category"], [["i0", "dog"], ["i1", "bird"], ["i2", "cat"], ["i3", "bird"]])


def test_probs_columns_are_matched_by_name_in_the_samples_order(tmp_path):
    sample = sample_of(tmp_path, ["id", " DOG ", "bird", "Cat"], [(f"i{k}", 0.3, 0.3, 0.4) for k in range(4)])
    shape = choose_shape(sample, CLASSES, False, "accuracy")
    assert (shape.kind, shape.columns, shape.header) == ("probs", [2, 0, 1], ["id", " DOG ", "bird", "Cat"])
    assert "3 prediction columns" in shape.reason
    out = tmp_path / "sub.csv"
    write_submission(out, shape.header, [f"i{k}" for k in range(4)], submission_cells(shape, PROBS, CLASSES),
                     CLASSES, shape)
    header, rows = read_rows(out)
    written = np.array([[float(v) for v in r[1:]] for r in rows])
    assert header == shape.header and [r[0] for r in rows] == ["i0", "i1", "i2", "i3"]
    np.testing.assert_allclose(written, PROBS[:, [2, 0, 1]], rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose(written.sum(1), 1, atol=1e-6)
    assert not any("e" in v.lower() for r in rows for v in r[1:])  # positional: 0.000000000001, not 1e-12
    assert written[3, 0] == pytest.approx(1e-12, rel=1e-6)  # tiny probabilities are kept (log loss)


def test_probs_columns_that_are_no_class_and_classes_without_a_column(tmp_path):
    sample = sample_of(tmp_path, ["id", "bird", "cow", "cat", "Cats"], [("a", 0, 0, 0, 1)])
    message = raises(DataError, choose_shape, sample, CLASSES, False, "log_loss")
    assert str(tmp_path / "sample_submission.csv") in message
    assert "2 column(s) that are no class: ['cow', 'Cats']" in message and "without a column: ['dog']" in message
    # a multi-label model writes its sigmoids: rows need not sum to 1
    sample = sample_of(tmp_path, ["id", *TAGS], [("a", 0, 0, 0, 0)])
    shape = choose_shape(sample, TAGS, True, "roc_auc")
    probs = np.array([[0.9, 0.8, 0.1, 0.05]])
    assert shape.kind == "probs" and submission_cells(shape, probs, TAGS) == [["0.9", "0.8", "0.1", "0.05"]]


def test_score_of_a_binary_model(tmp_path):
    sample = sample_of(tmp_path, ["image_name", "target"], [("a", 0), ("b", 0)])
    shape = choose_shape(sample, ["0", "1"], False, "roc_auc")
    assert (shape.kind, shape.positive, shape.header) == ("score", 1, ["image_name", "target"])
    assert "roc_auc" in shape.reason and "the positive class is '1'" in shape.reason
    probs = np.array([[0.75, 0.25], [0.1, 0.9]])
    assert submission_cells(shape, probs, ["0", "1"]) == [["0.25"], ["0.9"]]
    # "true" is the positive class, wherever it sorts; fractional sample values ask for a score whatever the metric
    sample = sample_of(tmp_path, ["id", "label"], [("a", 0.5), ("b", 0.5)])
    shape = choose_shape(sample, ["true", "untrue"], False, "accuracy")
    assert (shape.kind, shape.positive) == ("score", 0) and "fractional (line 2: '0.5')" in shape.reason
    assert submission_cells(shape, probs, ["true", "untrue"]) == [["0.75"], ["0.1"]]


def test_hard_labels_for_a_binary_sample_of_numbers_warn(tmp_path):
    sample = sample_of(tmp_path, ["image_name", "target"], [("a", 0), ("b", 1)])
    shape = choose_shape(sample, ["0", "1"], False, "accuracy")
    warning = predict.shape_warning(shape)  # the flags spelled by the command line, not by submission.py
    assert shape.kind == "labels" and "--submission score" in warning and "roc_auc" in warning
    assert "--" not in shape.warning and [option for option, _ in shape.advice] == ["submission", "metric"]
    assert choose_shape(sample, ["0", "1"], False, "accuracy", requested="score").kind == "score"
    # three classes: a score is refused, by request or for a sample of fractions
    message = raises(DataError, choose_shape, sample, CLASSES, False, "accuracy", requested="score")
    assert "3 classes" in message and "--submission" in message
    fractions = sample_of(tmp_path, ["id", "label"], [("a", 0.25), ("b", 1)])
    message = raises(DataError, choose_shape, fractions, CLASSES, False, "accuracy")
    assert "fits no shape" in message and "line 2: '0.25'" in message
    # a metric of probabilities with one column of a three-class model: labels, and a warning
    names = sample_of(tmp_path, ["id", "label"], [("a", "cat")])
    assert "log_loss scores probabilities" in choose_shape(names, CLASSES, False, "log_loss").warning


def test_a_binary_sample_of_numbers_that_are_no_class_asks_for_a_score(tmp_path, caplog):
    sample = sample_of(tmp_path, ["image_name", "target"], [("a", 0), ("b", 1)])
    shape = choose_shape(sample, ["benign", "malignant"], False, "accuracy")
    assert (shape.kind, shape.positive) == ("score", 1) and shape.warning == ""
    assert "the sample's values are numbers, not class names" in shape.reason
    assert submission_cells(shape, np.array([[0.75, 0.25]]), ["benign", "malignant"]) == [["0.25"]]
    # asked for labels: class names in a column of numbers, with a warning that says how to write the score
    asked = choose_shape(sample, ["benign", "malignant"], False, "accuracy", "labels")
    assert asked.kind == "labels" and "not class names" in asked.warning
    assert "--submission score" in predict.shape_warning(asked)
    # more classes than two: no shape holds one number per image
    message = raises(DataError, choose_shape, sample, CLASSES, False, "accuracy")
    assert str(sample.path) in message and "line 2: '0'" in message and "not class names" in message
    assert "3 classes" in message


def test_a_sample_of_class_names_wins_over_a_metric_of_probabilities(tmp_path):
    sample = sample_of(tmp_path, ["id", "label"], [("a", "cat"), ("b", "dog")])
    for metric in ("roc_auc", "log_loss"):
        shape = choose_shape(sample, ["cat", "dog"], False, metric)
        assert shape.kind == "labels" and "class names" in shape.reason
        warning = predict.shape_warning(shape)
        assert f"the metric {metric} scores probabilities" in warning and "asks for class names" in warning
        assert "--submission score" in warning and "--" not in shape.warning
    # a sample of 0/1 for classes named 0 and 1 is numbers: the metric asks for the score
    numbers = sample_of(tmp_path, ["id", "label"], [("a", 0), ("b", 1)])
    assert choose_shape(numbers, ["0", "1"], False, "roc_auc").kind == "score"


def test_the_sample_may_have_another_name(tmp_path, caplog):
    assert read_sample(tmp_path) is None
    write_csv(tmp_path / "sample_submission_v2.csv", ["image_name", "tags"], [("a", "cloud")])
    with caplog.at_level(logging.INFO):
        sample = read_sample(tmp_path)
    assert sample.path == tmp_path / "sample_submission_v2.csv" and sample.header == ["image_name", "tags"]
    assert any("sample_submission_v2.csv" in r.getMessage() for r in caplog.records)  # the log names it
    write_csv(tmp_path / "Sample_Submission_old.csv", ["id", "label"], [("a", "cat")])
    message = raises(DataError, read_sample, tmp_path)
    assert "Sample_Submission_old.csv" in message and "sample_submission_v2.csv" in message
    write_csv(tmp_path / "sample_submission.csv", ["id", "label"], [("a", "cat")])
    assert read_sample(tmp_path).path == tmp_path / "sample_submission.csv"  # the usual name wins


def test_tags_of_a_multi_label_model(tmp_path):
    sample = sample_of(tmp_path, ["image_name", "tags"], [("a", "cloud"), ("b", "cloud")])
    shape = choose_shape(sample, TAGS, True, "f2_samples")
    assert (shape.kind, shape.header) == ("tags", ["image_name", "tags"]) and "multi-label" in shape.reason
    probs = np.array([[0.9, 0.2, 0.6, 0.1], [0.3, 0.4, 0.2, 0.1], [0.1, 0.5, 0.6, 0.9]])
    thresholds = np.array([0.5, 0.45, 0.7, 0.5])
    cells = submission_cells(shape, probs, TAGS, thresholds)
    assert cells == [["cloud"], ["haze"], ["haze water"]]  # none over its threshold: the most probable tag
    assert submission_cells(shape, probs, TAGS) == [["cloud road"], ["haze"], ["road water"]]  # 0.5 each
    out = tmp_path / "sub.csv"
    write_submission(out, shape.header, ["a", "b", "c"], cells, TAGS, shape)
    assert read_rows(out)[1] == [["a", "cloud"], ["b", "haze"], ["c", "haze water"]]
    # tags are a multi-label model's, labels and a score a single-label one's
    assert "single-label" in raises(DataError, choose_shape, sample, CLASSES, False, "accuracy", "tags")
    for kind in ("labels", "score"):
        assert "multi-label" in raises(DataError, choose_shape, sample, ["a", "b"], True, "accuracy", kind)


def test_topk_the_most_probable_first(tmp_path):
    sample = sample_of(tmp_path, ["Image", "Id"], [("a", "cat dog")])
    shape = choose_shape(sample, CLASSES, False, "accuracy", top_k=2)
    assert (shape.kind, shape.top_k) == ("topk", 2) and "--top-k 2" in predict.describe_shape(shape)
    assert shape.chosen_by == ("top_k", 2) and "--" not in shape.reason
    assert submission_cells(shape, PROBS, CLASSES) == [["dog cat"], ["bird cat"], ["cat dog"], ["bird cat"]]
    by_metric = choose_shape(sample, CLASSES, False, "map@5")
    assert (by_metric.kind, by_metric.top_k) == ("topk", 3) and "map@5" in by_metric.reason  # all 3 classes
    assert "--top-k" in raises(UsageError, choose_shape, sample, CLASSES, False, "accuracy", "labels", 2)
    with pytest.raises(OptionError) as e:  # the facts, and the option that fixes them: no flag spelled
        choose_shape(sample, CLASSES, False, "accuracy", "labels", 2)
    assert (e.value.option, e.value.value) == ("top_k", 2) and "--" not in str(e.value)
    assert "these hold spaces: ['a b']" in raises(DataError, choose_shape, sample, ["a b", "c"], False, "accuracy", top_k=1)


def test_samples_that_fit_no_shape_or_not_the_model(tmp_path):
    lists = sample_of(tmp_path, ["image_name", "tags"], [("a", "cat"), ("b", "cat dog")])
    message = raises(DataError, choose_shape, lists, CLASSES, False, "accuracy")
    assert "line 3: 'cat dog' is a list of classes" in message and "--multi-label" in message
    numbers = sample_of(tmp_path, ["id", "target"], [("a", "0.5")])
    assert "not tags" in raises(DataError, choose_shape, numbers, TAGS, True, "f2_samples")
    columns = sample_of(tmp_path, ["id", *CLASSES], [("a", 0.3, 0.3, 0.4)])
    message = raises(DataError, choose_shape, columns, CLASSES, False, "accuracy", "labels")
    assert "3 prediction columns" in message and "--submission" in message
    assert "unknown submission shape" in raises(UsageError, choose_shape, None, CLASSES, False, "accuracy", "csv")


def test_without_a_sample_the_header_is_the_id_and_what_the_shape_needs():
    def shape(classes=CLASSES, multi_label=False, metric="accuracy", requested="auto", top_k=None) -> Shape:
        return choose_shape(None, classes, multi_label, metric, requested, top_k)

    assert (shape().kind, shape().header) == ("labels", ["id", "label"])  # as before shapes
    assert shape(requested="probs").header == ["id", *CLASSES]
    assert (shape(metric="log_loss").kind, shape(metric="log_loss").header) == ("probs", ["id", *CLASSES])
    assert (shape(["no", "yes"], metric="roc_auc").kind, shape(["no", "yes"], requested="score").header) == \
        ("score", ["id", "target"])
    assert (shape(TAGS, True).kind, shape(TAGS, True).header) == ("tags", ["id", "tags"])
    assert (shape(metric="map@2").kind, shape(top_k=2).header) == ("topk", ["id", "label"])


def test_a_submission_is_checked_as_it_reads_back_before_it_is_written(tmp_path):
    out = tmp_path / "sub.csv"
    probs = Shape("probs", ["id", *CLASSES], "", columns=[0, 1, 2])
    message = raises(DataError, write_submission, out, probs.header, ["a"], [["0.5", "0.2", "0.2"]], CLASSES,
                     probs)
    assert "line 2: the probabilities sum to 0.900000" in message
    score = Shape("score", ["id", "target"], "", positive=1)
    assert "'1.5', not a probability" in raises(DataError, write_submission, out, score.header, ["a"], ["1.5"],
                                                CLASSES, score)
    tags = Shape("tags", ["id", "tags"], "", multi_label=True)
    for bad in ("cloud fog", "", "cloud  haze", "haze haze"):
        assert "line 2" in raises(DataError, write_submission, out, tags.header, ["a"], [bad], TAGS, tags), bad
    topk = Shape("topk", ["id", "label"], "", top_k=2)
    assert "not 2 distinct classes" in raises(DataError, write_submission, out, topk.header, ["a"], ["cat"],
                                              CLASSES, topk)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left
    table = data.read_csv(sample_of(tmp_path, ["id", "tags"], [("a", "cloud road")]).path)
    check_submission(table, ["id", "tags"], ["a"], TAGS, tags)


@pytest.fixture
def indexed(tmp_path) -> data.FileIndex:
    (tmp_path / "test").mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(tmp_path / "test" / f"{name}.png"), np.zeros((4, 4), np.uint8))
    return data.index_test_images(tmp_path)


def test_solutions_of_every_shape(tmp_path, indexed):
    def answers(header, rows, classes, multi_label=False) -> np.ndarray:
        files, labels = solution_images(sample_of(tmp_path, header, rows, "solution.csv").path, indexed, classes,
                                        multi_label)
        assert [f.stem for f in files] == [r[0] for r in rows]
        return labels

    assert answers(["id", "label"], [("b", "dog"), ("a", "bird")], CLASSES).tolist() == [2, 0]
    assert answers(["id", "tags"], [("a", "road cloud"), ("c", "water")], TAGS, True).tolist() == \
        [[1, 0, 1, 0], [0, 0, 0, 1]]
    assert answers(["id", "target"], [("a", "1"), ("b", "0.0"), ("c", 0)], ["benign", "malignant"]).tolist() == \
        [1, 0, 0]  # 1: the positive class
    one_hot = [("a", 0, 1, 0), ("b", 1, 0, 0), ("c", 0, 0, 1)]
    assert answers(["id", "dog", "bird", "cat"], one_hot, CLASSES).tolist() == [0, 2, 1]
    assert answers(["id", "haze", "cloud", "road", "water"], [("a", 1, 1, 0, 0)], TAGS, True).tolist() == \
        [[1, 1, 0, 0]]
    for header, rows, classes, wanted in (
            (["id", "target"], [("a", 1), ("b", 2)], ["benign", "malignant"], "line 3: target '2' is neither 0 nor 1"),
            (["id", "target"], [("a", 1), ("b", 2)], ["0", "1"], "line 3: target '2' is neither 0 nor 1"),
            (["id", *CLASSES], [("a", 0, 1, 1)], CLASSES, "line 2: 2 columns hold 1"),
            (["id", *CLASSES], [("a", 0, 0.5, 1)], CLASSES, "line 2: column 'cat' holds '0.5'"),
            (["id", "bird", "cow"], [("a", 0, 1)], CLASSES, "no class: ['cow']"),
            (["id", "tags"], [("a", "cloud"), ("b", "")], TAGS, "line 3: empty tag list"),
            (["id", "label"], [("a", "cow")], CLASSES, "line 2: 'cow'")):
        message = raises(DataError, answers, header, rows, classes, header[1] == "tags")
        assert wanted in message and "solution.csv" in message, message


# ----------------------------------------------------------------------------------------------
# End to end: train, predict into each sample, read the submission back, score it
# ----------------------------------------------------------------------------------------------

def train(data_dir: Path, runs_dir: Path, name: str, *extra) -> Path:
    defaults = importlib.import_module("train_cnn").DEFAULTS
    return trainer.main("cnn", [str(a) for a in ["--data", data_dir, "--epochs", 1, "--runs-dir", runs_dir, "--name",
                                                 name, "--precision", "fp32", "--channels-last", "off",
                                                 "--no-progress", "--img-size", 16, *extra]], **defaults)


def printed_score(out: str, metric: str) -> float:
    return float(next(line for line in out.splitlines() if line.startswith(f"{metric} against ")).rsplit(" ", 1)[1])


def solution_labels(root: Path, ids: list[str], classes: list[str]) -> np.ndarray:
    answers = dict(read_rows(root / "solution.csv")[1])
    return np.array([classes.index(answers[i]) for i in ids])


def rename_labels(root: Path, labels_file: str, header: list[str]):
    """train.csv (id,label) as `labels_file` with another header, which the sample and the solution get too."""
    rows = read_rows(root / "train.csv")[1]
    (root / "train.csv").unlink()
    write_csv(root / labels_file, header, rows)
    for name in ("sample_submission.csv", "solution.csv"):
        write_csv(root / name, header, read_rows(root / name)[1])


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("labels") / "comp", classes=CLASSES, size=16)


@pytest.fixture(scope="module")
def cnn_run(comp, runs_dir) -> Path:
    return train(comp, runs_dir, "cnn")


def test_labels_end_to_end(comp, cnn_run, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    run_predict(cnn_run, "--data", comp, "--out", out, "--solution", comp / "solution.csv", "--metric", "macro_f1")
    header, rows = read_rows(out)
    assert header == ["id", "label"] and [r[0] for r in rows] == [f"t{i}" for i in range(12)]
    predicted = np.array([CLASSES.index(r[1]) for r in rows])
    truth = solution_labels(comp, [r[0] for r in rows], CLASSES)
    printed = capsys.readouterr().out
    assert printed_score(printed, "accuracy") == pytest.approx(metrics.accuracy(predicted, truth), abs=1e-4)
    assert printed_score(printed, "macro_f1") == pytest.approx(metrics.score("macro_f1", np.eye(3)[predicted], truth),
                                                               abs=1e-4)
    assert metrics.accuracy(predicted, truth) > 0.5


def test_topk_end_to_end(comp, cnn_run, tmp_path, capsys):
    for name, flags in (("metric", ["--metric", "map@2"]), ("flag", ["--top-k", "2", "--metric", "map@2"])):
        out = tmp_path / f"{name}.csv"
        run_predict(cnn_run, "--data", comp, "--out", out, "--probs", tmp_path / f"{name}-p.csv", "--solution",
                    comp / "solution.csv", *flags)
        header, rows = read_rows(out)
        ranked = [r[1].split(" ") for r in rows]
        assert header == ["id", "label"] and all(len(set(r)) == 2 and set(r) <= set(CLASSES) for r in ranked)
        probs = np.array([[float(v) for v in r[1:]] for r in read_rows(tmp_path / f"{name}-p.csv")[1]])
        assert [r[0] for r in ranked] == [CLASSES[k] for k in probs.argmax(1)]
        # MAP@2 of the submission as written: 1 for a right first guess, 1/2 for a right second
        truth = dict(read_rows(comp / "solution.csv")[1])
        expected = np.mean([1.0 if r[0] == truth[row[0]] else 0.5 if r[1] == truth[row[0]] else 0.0
                            for r, row in zip(ranked, rows)])
        assert printed_score(capsys.readouterr().out, "map@2") == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def breeds(tmp_path_factory) -> Path:
    """Dog-breed style: labels.csv id,breed; the sample is the id and one probability column per breed, shuffled."""
    root = write_dataset(tmp_path_factory.mktemp("breeds") / "comp", classes=("beagle", "chow", "pug", "husky"),
                         size=16, per_class=20)
    rename_labels(root, "labels.csv", ["id", "breed"])
    ids = [r[0] for r in read_rows(root / "sample_submission.csv")[1]]
    write_csv(root / "sample_submission.csv", ["id", "pug", "Beagle", "husky", "chow"], [(i, *[0.25] * 4) for i in ids])
    return root


def test_probs_end_to_end(breeds, runs_dir, tmp_path, capsys):
    run = train(breeds, runs_dir, "breeds")
    out = tmp_path / "sub.csv"
    run_predict(run, "--data", breeds, "--out", out, "--probs", tmp_path / "probs.csv", "--metric", "log_loss",
                "--solution", breeds / "solution.csv")
    header, rows = read_rows(out)
    assert header == ["id", "pug", "Beagle", "husky", "chow"]
    assert [r[0] for r in rows] == [r[0] for r in read_rows(breeds / "sample_submission.csv")[1]]
    written = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(written.sum(1), 1, atol=1e-6)
    classes = ["beagle", "chow", "husky", "pug"]  # the model's, in natural order
    probs = np.array([[float(v) for v in r[1:]] for r in read_rows(tmp_path / "probs.csv")[1]])
    np.testing.assert_allclose(written, probs[:, [3, 0, 2, 1]], atol=1e-6)  # each column its breed's
    truth = solution_labels(breeds, [r[0] for r in rows], classes)
    in_class_order = written[:, [1, 3, 2, 0]]
    assert printed_score(capsys.readouterr().out, "log_loss") == pytest.approx(
        metrics.score("log_loss", in_class_order, truth), abs=1e-4)
    assert metrics.score("log_loss", in_class_order, truth) < np.log(4)  # better than the uniform sample


@pytest.fixture(scope="module")
def melanoma(tmp_path_factory) -> Path:
    """Melanoma style: train.csv image_name,target of 0/1, the sample image_name,target of 0."""
    root = write_dataset(tmp_path_factory.mktemp("melanoma") / "comp", classes=("0", "1"), size=16, per_class=24)
    rename_labels(root, "train.csv", ["image_name", "target"])
    return root


@pytest.fixture(scope="module")
def melanoma_run(melanoma, runs_dir) -> Path:
    return train(melanoma, runs_dir, "melanoma")  # in a fixture: training sets up logging, which caplog must follow


def test_score_end_to_end(melanoma, melanoma_run, tmp_path, capsys, caplog):
    run = melanoma_run
    out = tmp_path / "sub.csv"
    with caplog.at_level(logging.INFO):
        run_predict(run, "--data", melanoma, "--out", out, "--metric", "roc_auc", "--solution",
                    melanoma / "solution.csv")
    assert any("submission: score" in r.getMessage() and "'1'" in r.getMessage() for r in caplog.records)
    header, rows = read_rows(out)
    assert header == ["image_name", "target"]
    scores = np.array([float(r[1]) for r in rows])
    assert ((scores >= 0) & (scores <= 1)).all() and len(set(scores)) > 2  # probabilities, not labels
    truth = np.array([int(dict(read_rows(melanoma / "solution.csv")[1])[r[0]]) for r in rows])
    printed = capsys.readouterr().out
    assert printed_score(printed, "roc_auc") == pytest.approx(
        metrics.score("roc_auc", np.stack([1 - scores, scores], 1), truth), abs=1e-4)
    # hard labels, asked for: what they score is reported beside what the probabilities score
    run_predict(run, "--data", melanoma, "--out", tmp_path / "hard.csv", "--submission", "labels", "--metric",
                "roc_auc", "--solution", melanoma / "solution.csv")
    hard = np.array([int(r[1]) for r in read_rows(tmp_path / "hard.csv")[1]])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("roc_auc of the hard labels"))
    assert float(line.split(": ")[1].split(" ")[0]) == pytest.approx(metrics.score("roc_auc", np.eye(2)[hard], truth),
                                                                     abs=1e-4)
    # trained for accuracy and not told the metric: hard labels, and a warning that says what to do
    caplog.clear()
    run_predict(run, "--data", melanoma, "--out", tmp_path / "labels.csv")
    assert {r[1] for r in read_rows(tmp_path / "labels.csv")[1]} <= {"0", "1"}
    assert any(r.levelname == "WARNING" and "--submission score" in r.getMessage() for r in caplog.records)


def test_bad_shapes_write_nothing(comp, cnn_run, tmp_path):
    fresh = tmp_path / "comp"
    shutil.copytree(comp, fresh, ignore=shutil.ignore_patterns(".cache"))
    out = tmp_path / "sub.csv"
    assert "3 classes" in predict_error(cnn_run, "--data", fresh, "--out", out, "--submission", "score")
    assert "single-label" in predict_error(cnn_run, "--data", fresh, "--out", out, "--submission", "tags")
    ids = [r[0] for r in read_rows(fresh / "sample_submission.csv")[1]]
    write_csv(fresh / "sample_submission.csv", ["id", "bird", "cat", "cow"], [(i, 0.3, 0.3, 0.4) for i in ids])
    message = predict_error(cnn_run, "--data", fresh, "--out", out)
    assert "no class: ['cow']" in message and "without a column: ['dog']" in message
    write_csv(fresh / "sample_submission.csv", ["id", "label"], [(i, 0.5) for i in ids])
    assert "fits no shape" in predict_error(cnn_run, "--data", fresh, "--out", out)
    # (a solution answering classes the model lacks is a warning, and scored on the rest: test_predict_faults.py)
    write_csv(fresh / "solution.csv", ["id", "label"], [(i, "cow") for i in ids])
    write_csv(fresh / "sample_submission.csv", ["id", "label"], [(i, "cat") for i in ids])
    assert "none in common" in predict_error(cnn_run, "--data", fresh, "--out", out, "--solution",
                                             fresh / "solution.csv")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Multi-label end to end
# ----------------------------------------------------------------------------------------------

def tagged_image(tags: list[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """Every tag's class bar (conftest.class_image) on one image: the brightest of each."""
    return np.max([class_image(TAGS.index(t), len(TAGS), size, rng) for t in tags], axis=0)


@pytest.fixture(scope="module")
def planet(tmp_path_factory) -> Path:
    """Planet style: train_v2.csv image_name,tags (joined by spaces), train-jpg/ and test-jpg/, the sample's tags
    a single one."""
    root, rng = tmp_path_factory.mktemp("planet") / "comp", np.random.default_rng(0)
    rows = {}
    for split, n in (("train", 96), ("test", 16)):
        (root / f"{split}-jpg").mkdir(parents=True)
        for i in range(n):
            tags = [t for t in TAGS if rng.random() < 0.35] or [TAGS[int(rng.integers(len(TAGS)))]]
            cv2.imwrite(str(root / f"{split}-jpg" / f"{split}_{i}.png"), tagged_image(tags, 16, rng))
            rows.setdefault(split, []).append((f"{split}_{i}", " ".join(tags)))
    write_csv(root / "train_v2.csv", ["image_name", "tags"], rows["train"])
    write_csv(root / "sample_submission.csv", ["image_name", "tags"], [(i, "cloud") for i, _ in rows["test"]])
    write_csv(root / "solution.csv", ["image_name", "tags"], rows["test"])
    return root


MULTI_LABEL_TRAINING = "multi_label" in (ROOT / "session.py").read_text()


@pytest.mark.skipif(not MULTI_LABEL_TRAINING, reason="the trainer has no multi-label training yet")
def test_tags_end_to_end(planet, comp, cnn_run, runs_dir, tmp_path, capsys):
    run = train(planet, runs_dir, "planet", "--train-dir", planet / "train-jpg", "--metric", "f2_samples",
                "--epochs", 2, "--lr", 3e-3, "--batch-size", 16)
    spec = checkpoint.read_spec(checkpoint.load_checkpoint(run / "best.pt"))
    assert spec.multi_label and spec.class_names == TAGS
    out = tmp_path / "sub.csv"
    run_predict(run, "--data", planet, "--test-dir", "test-jpg", "--out", out, "--probs", tmp_path / "probs.csv",
                "--solution", planet / "solution.csv")
    header, rows = read_rows(out)
    assert header == ["image_name", "tags"] and [r[0] for r in rows] == [f"test_{i}" for i in range(16)]
    decided = np.array([[t in r[1].split(" ") for t in TAGS] for r in rows])
    probs = np.array([[float(v) for v in r[1:]] for r in read_rows(tmp_path / "probs.csv")[1]])
    assert np.array_equal(decided, metrics.decide(probs, np.array(spec.thresholds)))  # the run's own thresholds
    truth = data.parse_labels([dict(read_rows(planet / "solution.csv")[1])[r[0]] for r in rows], TAGS, True,
                              "solution")
    printed = capsys.readouterr().out
    assert printed_score(printed, "f2_samples") == pytest.approx(metrics.score("f2_samples", decided * 1.0, truth),
                                                                 abs=1e-4)
    # --eval: the validation images' score with best.pt's thresholds is the one training recorded
    ckpt = checkpoint.load_checkpoint(run / "best.pt")
    result = predict.main([str(run), "--data", str(planet), "--eval", "--no-progress"])
    assert result["confusion"] is None and result["images"] == len(ckpt["val_files"])
    assert (result["metric"], result["score"]) == ("f2_samples", pytest.approx(ckpt["best_val_score"], abs=1e-6))
    tags = dict(read_rows(planet / "train_v2.csv")[1])
    val_tags = data.parse_labels([tags[Path(f).stem] for f in ckpt["val_files"]], TAGS, True, "train_v2.csv")
    assert list(result["support"]) == list(val_tags.sum(0))  # per tag: the validation images that have it
    # an ensemble of the model and its twin: the blend of the same sigmoids, its thresholds fitted on the shared
    # validation images as training fitted the model's: the same tags
    shutil.copy(run / "best.pt", tmp_path / "twin.pt")
    run_predict(run, tmp_path / "twin.pt", "--data", planet, "--test-dir", "test-jpg", "--out", tmp_path / "twin.csv")
    assert read_rows(tmp_path / "twin.csv") == read_rows(out)
    # a multi-label model predicting for a single-label competition, and the reverse: refused, nothing written
    assert "single-label" in predict_error(run, "--data", comp, "--out", tmp_path / "x.csv")
    assert "multi-label" in predict_error(cnn_run, "--data", planet, "--test-dir", "test-jpg", "--out",
                                          tmp_path / "x.csv")
    # members of an ensemble must agree on multi_label
    single = checkpoint.load_checkpoint(run / "best.pt")
    single["spec"] = {**single["spec"], "multi_label": False, "thresholds": None}
    checkpoint.save_checkpoint(tmp_path / "single.pt", single)
    assert "multi-label model with a single-label one" in predict_error(run, tmp_path / "single.pt", "--data",
                                                                        planet, "--out", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
