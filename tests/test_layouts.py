"""The competition layouts on tiny generated folders: each labels file and image folder name, --labels /
--train-dir / --test-dir, label columns of class names, of space-separated tags (multi-label) and one-hot
columns, their faults, the iterative split of multi-label data, and labels written and read back."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import batches
import config
import data
from conftest import write_csv
from data import DataError
from errors import OptionError, explain

TAGS = [("a0", "clear primary"), ("a1", "haze primary water"), ("a2", "clear"), ("a3", "primary water"),
        ("a4", "clear primary"), ("a5", "haze")]


def write_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8), value, np.uint8)), path
    return path


def competition(root: Path, rows, header=("id", "label"), labels_file="train.csv", image_dir="train",
                ext=".png") -> Path:
    """`labels_file` with `rows` (the first column: ids) and an image per id in `image_dir`."""
    for i, row in enumerate(rows):
        write_image(root / image_dir / f"{row[0]}{ext}", 10 * i % 250)
    (root / labels_file).parent.mkdir(parents=True, exist_ok=True)
    write_csv(root / labels_file, header, rows)
    return root


def names_of(found) -> list:
    """Each image's label as text (tags joined by spaces)."""
    return [data.label_text(row, found.class_names, found.multi_label) for row in found.labels]


# ----------------------------------------------------------------------------------------------
# Labels files and image folders
# ----------------------------------------------------------------------------------------------

def test_labels_csv_with_train_images_folder(tmp_path):
    rows = [("d1", "beagle"), ("d2", "pug"), ("d3", "beagle")]
    competition(tmp_path, rows, header=("id", "breed"), labels_file="labels.csv", image_dir="train_images")
    found = data.find_labelled_images(tmp_path)
    assert found.layout == "csv" and not found.multi_label
    assert found.class_names == ["beagle", "pug"] and found.labels.tolist() == [0, 1, 0]
    assert [p.parent.name for p in found.files] == ["train_images"] * 3
    assert found.labels_file == tmp_path / "labels.csv" and found.image_dir == tmp_path / "train_images"
    assert found.summary == "labels: labels.csv (id -> breed), images in train_images/: single-label (2 classes)"
    assert found.notes == []


def test_train_labels_csv_with_images_folder(tmp_path):
    rows = [("m1", "0"), ("m2", "1"), ("m3", "0"), ("m4", "1")]
    competition(tmp_path, rows, header=("image_name", "target"), labels_file="train_labels.csv", image_dir="images")
    found = data.find_labelled_images(tmp_path)
    assert found.class_names == ["0", "1"] and found.labels.tolist() == [0, 1, 0, 1]
    assert "train_labels.csv (image_name -> target), images in images/" in found.summary


def test_the_first_labels_file_is_used_and_the_others_noted(tmp_path):
    competition(tmp_path, [("a", "x"), ("b", "y")], labels_file="labels.csv")
    write_csv(tmp_path / "train.csv", ["id", "label"], [("a", "p"), ("b", "q")])
    found = data.find_labelled_images(tmp_path)
    assert found.class_names == ["p", "q"] and found.labels_file == tmp_path / "train.csv"
    assert any("train.csv is used, not labels.csv" in n for n in found.notes)


def test_train_v2_tags_with_the_only_train_folder(tmp_path):
    competition(tmp_path, TAGS, header=("image_name", "tags"), labels_file="train_v2.csv", image_dir="train-jpg",
                ext=".jpg")
    (tmp_path / "test-jpg").mkdir()
    write_image(tmp_path / "test-jpg" / "t0.jpg")
    found = data.find_labelled_images(tmp_path)
    assert found.multi_label and found.image_dir == tmp_path / "train-jpg"
    assert found.class_names == ["clear", "haze", "primary", "water"]
    assert found.labels.dtype == np.uint8 and found.labels.shape == (6, 4)
    assert found.labels.tolist()[:2] == [[1, 0, 1, 0], [0, 1, 1, 1]]
    assert names_of(found) == ["clear primary", "haze primary water", "clear", "primary water", "clear primary",
                               "haze"]
    assert found.summary == ("labels: train_v2.csv (image_name -> tags), images in train-jpg/: multi-label (the tags "
                             "column holds space-separated lists: 4 tags in 5 combinations)")
    assert [p.name for p in data.find_test_images(tmp_path)] == ["t0.jpg"]  # the only test* folder


def test_labels_file_and_train_dir_settings(tmp_path):
    root = competition(tmp_path / "comp", [("a", "x"), ("b", "y")], labels_file="meta/folds.csv", image_dir="pics")
    write_csv(tmp_path / "elsewhere.csv", ["id", "label"], [("a", "y"), ("b", "y"), ("a.png", "x")])
    found = data.find_labelled_images(root, labels_file="meta/folds.csv", train_dir="pics")  # inside the folder
    assert found.class_names == ["x", "y"] and found.image_dir == root / "pics"
    assert found.summary.startswith("labels: meta/folds.csv (id -> label), images in pics/:")
    with pytest.raises(DataError, match="duplicate"):  # a file outside it, from the working folder (absolute here)
        data.find_labelled_images(root, labels_file=tmp_path / "elsewhere.csv", train_dir=root / "pics")
    with pytest.raises(DataError, match="labels file nope.csv not found") as err:
        data.find_labelled_images(root, labels_file="nope.csv")
    assert err.value.option == "labels" and explain(err.value).endswith("with --labels")
    with pytest.raises(DataError, match="image folder nope not found") as err:
        data.find_labelled_images(root, labels_file="meta/folds.csv", train_dir="nope")
    assert err.value.option == "train_dir" and explain(err.value).endswith("with --train-dir")
    with pytest.raises(DataError, match="no image folder") as err:  # none of the usual names, and no train* folder
        data.find_labelled_images(root, labels_file="meta/folds.csv")
    assert "train_images" in str(err.value) and explain(err.value).endswith("or name it with --train-dir")


def test_class_folders_in_train_images_or_a_named_folder(tmp_path):
    for name in ("cat", "dog"):
        write_image(tmp_path / "train_images" / name / "1.png")
        write_image(tmp_path / "photos" / name / "2.png")
    found = data.find_labelled_images(tmp_path)
    assert found.layout == "folder" and found.class_names == ["cat", "dog"] and found.labels.tolist() == [0, 1]
    assert found.summary == "labels: the class folders of train_images/: single-label (2 classes)"
    named = data.find_labelled_images(tmp_path, train_dir="photos")
    assert [p.name for p in named.files] == ["2.png", "2.png"] and named.image_dir == tmp_path / "photos"
    forced = data.find_labelled_images(tmp_path, multi_label=True)
    assert forced.multi_label and forced.labels.tolist() == [[1, 0], [0, 1]]


def test_test_folders(tmp_path):
    write_image(tmp_path / "test_images" / "t1.png")
    write_image(tmp_path / "holdout" / "h1.png")
    assert [p.name for p in data.find_test_images(tmp_path)] == ["t1.png"]
    assert data.find_test_folder(tmp_path) == tmp_path / "test_images"
    assert [p.name for p in data.find_test_images(tmp_path, "holdout")] == ["h1.png"]
    assert data.index_test_images(tmp_path, tmp_path / "holdout").folder == tmp_path / "holdout"
    with pytest.raises(DataError, match="no test folder: nope does not exist") as err:
        data.find_test_images(tmp_path, "nope")
    assert err.value.option == "test_dir" and explain(err.value).endswith("--test-dir")
    (tmp_path / "test_images" / "t1.png").unlink()
    (tmp_path / "test_images").rmdir()
    with pytest.raises(DataError, match="no test folder") as err:
        data.find_test_images(tmp_path)
    assert "test_images" in str(err.value) and explain(err.value).endswith("or name it with --test-dir")


# ----------------------------------------------------------------------------------------------
# Label columns: class names, tags, one-hot
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["tags", "labels", "breed", "diagnosis", "level", "species", "grade", "y"])
def test_more_label_column_names(tmp_path, column):
    competition(tmp_path, [("a", "2"), ("b", "0"), ("c", "2")], header=("id_code", column))
    found = data.find_labelled_images(tmp_path)
    assert found.class_names == ["0", "2"] and found.labels.tolist() == [1, 0, 1]


def test_tags_are_detected_forced_and_refused(tmp_path):
    competition(tmp_path, TAGS, header=("id", "tags"))
    as_classes = data.find_labelled_images(tmp_path, multi_label=False)  # every combination a class
    assert not as_classes.multi_label and len(as_classes.class_names) == 5
    assert as_classes.class_names[as_classes.labels[1]] == "haze primary water"
    assert "single-label, as asked (5 classes)" in as_classes.summary
    competition(tmp_path, [("a", "x"), ("b", "y"), ("c", "x")], header=("id", "tags"))
    assert not data.find_labelled_images(tmp_path).multi_label  # no lists: one class each
    forced = data.find_labelled_images(tmp_path, multi_label=True)
    assert forced.multi_label and forced.labels.tolist() == [[1, 0], [0, 1], [1, 0]]
    assert "multi-label, as asked (2 tags in 2 combinations)" in forced.summary


def test_class_names_with_spaces_stay_single_label(tmp_path):
    names = ["T-shirt/top", "Ankle boot", "Bag", "Ankle boot", "Sandal", "T-shirt/top"]
    competition(tmp_path, [(f"i{k}", n) for k, n in enumerate(names)])
    found = data.find_labelled_images(tmp_path)
    assert not found.multi_label and found.class_names == ["Ankle boot", "Bag", "Sandal", "T-shirt/top"]
    assert "single-label (4 classes; the spaces are part of their names: 5 words in 4 names)" in found.summary


def test_an_empty_tag_list_names_the_file_and_line(tmp_path):
    competition(tmp_path, TAGS[:3] + [("a3", "   ")] + TAGS[4:], header=("image_name", "tags"))
    with pytest.raises(DataError) as err:
        data.find_labelled_images(tmp_path)
    assert str(err.value) == f"{tmp_path / 'train.csv'} line 5: empty tag list for id 'a3'"


def test_duplicate_tags_in_a_row_count_once(tmp_path):
    competition(tmp_path, [("a", "x x y"), ("b", "y"), ("c", "x")], header=("id", "tags"))
    assert data.find_labelled_images(tmp_path).labels.tolist() == [[1, 1], [0, 1], [1, 0]]


def test_one_hot_columns_single_label(tmp_path):
    rows = [("p0", "0", "1.0", "0", "0"), ("p1", "1", "0.0", "0", "0"), ("p2", "0", "0", "0", "1"),
            ("p3", "0", "0", "1", "0")]
    competition(tmp_path, rows, header=("image_id", "scab", "healthy", "rust", "multiple_diseases"),
                image_dir="images")
    found = data.find_labelled_images(tmp_path)
    assert not found.multi_label and found.labels.dtype == np.int64
    assert found.class_names == ["healthy", "multiple_diseases", "rust", "scab"]  # natural order, as everywhere
    assert names_of(found) == ["healthy", "scab", "multiple_diseases", "rust"]
    assert found.summary == ("labels: train.csv (image_id -> one-hot columns scab, healthy, rust, multiple_diseases), "
                             "images in images/: single-label (each row has exactly one 1)")


def test_one_hot_columns_multi_label(tmp_path):
    rows = [("p0", "1", "1", "0"), ("p1", "0", "1", "0"), ("p2", "0", "0", "1"), ("p3", "1", "0", "0")]
    competition(tmp_path, rows, header=("id", "cloud", "road", "water"))
    found = data.find_labelled_images(tmp_path)
    assert found.multi_label and found.labels.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    assert "multi-label (some rows have several 1s: 3 classes in 4 combinations)" in found.summary
    with pytest.raises(DataError, match=r"train.csv line 2: 2 label columns are 1 for id 'p0'; single-label"):
        data.find_labelled_images(tmp_path, multi_label=False)


def test_one_hot_row_without_a_one(tmp_path):
    rows = [("p0", "1", "1"), ("p1", "0", "0"), ("p2", "0", "1")]
    competition(tmp_path, rows, header=("id", "cloud", "road"))
    with pytest.raises(DataError) as err:
        data.find_labelled_images(tmp_path)
    assert str(err.value) == f"{tmp_path / 'train.csv'} line 3: no label column is 1 for id 'p1' (an empty tag list)"


def test_columns_that_are_not_one_hot_are_no_labels(tmp_path):
    competition(tmp_path, [("a", "0", "3"), ("b", "1", "0")], header=("id", "cloud", "fold"))
    with pytest.raises(DataError, match="no label column found"):
        data.find_labelled_images(tmp_path)
    found = data.find_labelled_images(tmp_path, label_col="cloud")
    assert found.class_names == ["0", "1"]


WHALES = [("w0.jpg", "whale_a"), ("w1.jpg", "new_whale"), ("w2.jpg", "whale_a"), ("w3.jpg", "new_whale"),
          ("w4.jpg", "whale_b")]


def test_whale_layout_image_id_the_id_column_is_never_the_label(tmp_path):
    # Image,Id: "Id" is the whale (the label); its values repeat, the images' names do not
    for k, (name, _) in enumerate(WHALES):
        write_image(tmp_path / "train" / name, 40 * k)
    write_csv(tmp_path / "train.csv", ("Image", "Id"), WHALES)
    found = data.find_labelled_images(tmp_path)
    assert [p.name for p in found.files] == [name for name, _ in WHALES]
    assert found.class_names == ["new_whale", "whale_a", "whale_b"] and names_of(found) == [w for _, w in WHALES]
    assert found.summary == ("labels: train.csv (Image -> Id: the one column besides the ids, its values repeat), "
                             "images in train/: single-label (3 classes)")
    assert found.notes == ["train.csv: the ids are taken from Image, whose values are unique, not from Id, whose "
                           "values repeat"]
    for given in ({"label_col": "Id"}, {"id_col": "Image"}, {"id_col": "Image", "label_col": "Id"}):
        again = data.find_labelled_images(tmp_path, **given)
        assert again.files == found.files and names_of(again) == names_of(found), given
    with pytest.raises(DataError) as err:
        data.find_labelled_images(tmp_path, id_col="Id", label_col="Id")
    assert "'Id' is named as both the id column and the label column" in str(err.value)
    assert err.value.option == "label_col" and explain(err.value).endswith("name another label column with --label-col")
    with pytest.raises(OptionError) as err:
        config.make_config("cnn", {}, data="d", id_col="Id", label_col="Id")
    assert "--id-col and --label-col both name the column 'Id'" in str(err.value)
    # a column that is no label by its name is taken only when it is the one other column: here a third one
    write_csv(tmp_path / "train.csv", ("Image", "Id", "fold"), [(i, w, "0") for i, w in WHALES])
    with pytest.raises(DataError, match="no label column found"):
        data.find_labelled_images(tmp_path)


def test_the_id_column_is_the_one_of_unique_values_and_no_label_candidate(tmp_path):
    # "id" is the patient (several images each), "image" the image; the label column named by id_col is no label
    rows = [("p1", "a", "x"), ("p1", "b", "y"), ("p2", "c", "x")]
    competition(tmp_path, [(image, patient, label) for patient, image, label in rows],
                header=("image", "id", "label"))
    write_csv(tmp_path / "train.csv", ("id", "image", "label"), rows)
    found = data.find_labelled_images(tmp_path)
    assert [p.stem for p in found.files] == ["a", "b", "c"] and names_of(found) == ["x", "y", "x"]
    assert "(image -> label)" in found.summary
    with pytest.raises(DataError, match="duplicate id"):  # as named: its duplicates are reported
        data.find_labelled_images(tmp_path, id_col="id")
    write_csv(tmp_path / "train.csv", ("label", "class"), [("a", "x"), ("b", "y"), ("c", "x")])
    named = data.find_labelled_images(tmp_path, id_col="label")
    assert named.class_names == ["x", "y"] and names_of(named) == ["x", "y", "x"]


def test_labels_that_look_like_one_class_or_a_missing_value_are_warned_about(tmp_path):
    rows = [(f"c{i}", label) for i, label in enumerate(["cat", "Cat", "dog", "01", "1", "2", "1.0"] + ["NaN"] * 12)]
    competition(tmp_path / "csv", rows)
    found = data.find_labelled_images(tmp_path / "csv")
    # trained as they are, in an order of their own (names equal but for case or zeros: by their text, whatever
    # order a set of them has in this process), and said so:
    assert found.class_names == ["01", "1", "1.0", "2", "Cat", "cat", "dog", "NaN"]
    alike, missing = found.warnings
    assert alike.startswith("labels that look like the same class: ") and "trained as different classes" in alike
    assert "'Cat' and 'cat'" in alike and "'01' and '1' and '1.0'" in alike and "'dog'" not in alike
    assert missing.startswith("12 images have the label 'NaN'") and "missing value" in missing
    assert f"warning: {alike}" in data.describe(tmp_path / "csv")  # python data.py info shows them
    # class folders whose names differ by case or spaces; tags named None
    for name in ("cat", " cat", "Dog", "dog"):
        write_image(tmp_path / "folders" / "train" / name / "0.png")
    assert data.find_labelled_images(tmp_path / "folders").warnings == [
        "labels that look like the same class: ' cat' and 'cat'; 'Dog' and 'dog' -- they are trained as different "
        "classes (correct the labels file if they are one)"]
    competition(tmp_path / "tags", [("t0", "a b"), ("t1", "None"), ("t2", "a")], header=("id", "tags"))
    tagged = data.find_labelled_images(tmp_path / "tags")
    assert tagged.multi_label and tagged.warnings == ["1 image has the tag 'None', which is how a missing value is "
                                                      "written: it is trained as a class of its own"]
    competition(tmp_path / "clean", [("a", "x1"), ("b", "x2"), ("c", "10"), ("d", "1")])
    assert data.find_labelled_images(tmp_path / "clean").warnings == []


# ----------------------------------------------------------------------------------------------
# Splits and folds of multi-label data (iterative stratification)
# ----------------------------------------------------------------------------------------------

def tag_matrix(n=400, tags=8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, tags)) < np.linspace(0.05, 0.6, tags)).astype(np.uint8)
    labels[labels.sum(1) == 0, -1] = 1
    labels[:, 0] = 0
    labels[[3, 100], 0] = 1  # a tag of two images
    return labels


def test_iterative_split_covers_every_image_and_tag_and_is_seeded():
    labels = tag_matrix()
    train, val = data.stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(train, val).size == 0 and sorted(np.r_[train, val].tolist()) == list(range(400))
    assert abs(len(val) - 80) <= 8
    assert (labels[train].sum(0) > 0).all() and (labels[val].sum(0) > 0).all()  # the rare tag too
    frequency = labels.mean(0)
    assert np.abs(labels[val].mean(0) - frequency)[1:].max() < 0.05  # stratified
    again = data.stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert not np.array_equal(data.stratified_split(labels, 0.2, seed=1)[1], val)
    train, val = data.stratified_split(labels, 0.0, seed=0)
    assert train.tolist() == list(range(400)) and val.size == 0


def test_iterative_folds_cover_every_image_once_and_are_seeded():
    labels = tag_matrix()
    fold_of = data.stratified_folds(labels, 4, seed=3)
    assert fold_of.shape == (400,) and set(fold_of.tolist()) == {0, 1, 2, 3}
    assert np.bincount(fold_of).min() >= 90
    for k in range(4):
        assert np.abs(labels[fold_of == k].mean(0) - labels.mean(0))[1:].max() < 0.08
    assert np.array_equal(data.stratified_folds(labels, 4, seed=3), fold_of)
    assert not np.array_equal(data.stratified_folds(labels, 4, seed=4), fold_of)
    with pytest.raises(DataError, match="cannot be split into 5 folds") as err:
        data.stratified_folds(labels[:3], 5, seed=0)
    assert err.value.option == "folds"


def test_label_matrix_and_the_sampler_refusing_tags():
    assert data.label_matrix(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    tags = np.array([[1, 1, 0], [0, 0, 1]], np.uint8)
    matrix = data.label_matrix(tags, 3)
    assert matrix.dtype == np.float32 and matrix.tolist() == tags.tolist()
    data.check_balance("sampler", False)
    data.check_balance("loss", True)
    with pytest.raises(OptionError) as err:
        data.check_balance("sampler", True)
    assert explain(err.value).startswith("--balance sampler: ") and "needs single-label data" in explain(err.value)
    pixels = np.zeros((2, 1, 4, 4), np.uint8)
    with pytest.raises(OptionError, match="single-label"):
        next(batches.iterate_batches(pixels, tags, np.arange(2), 2, shuffle=True, balance=True))
    (x, y), = batches.iterate_batches(pixels, tags, np.arange(2), 2)
    assert y.tolist() == tags.tolist() and y.dtype == torch.uint8


# ----------------------------------------------------------------------------------------------
# Labels written as text and read back
# ----------------------------------------------------------------------------------------------

def test_label_text_and_parse_labels_round_trip(tmp_path):
    competition(tmp_path, TAGS, header=("id", "tags"))
    found = data.find_labelled_images(tmp_path)
    texts = names_of(found)
    assert np.array_equal(data.parse_labels(texts, found.class_names, True, "x.csv"), found.labels)
    assert data.parse_labels([" water  clear "], found.class_names, True, "x.csv").tolist() == [[1, 0, 0, 1]]
    names = ["Ankle boot", "Bag"]
    labels = np.array([1, 0, 1])
    texts = [data.label_text(i, names, False) for i in labels]
    assert texts == ["Bag", "Ankle boot", "Bag"]
    assert data.parse_labels(texts, names, False, "x.csv").tolist() == [1, 0, 1]


def test_parse_labels_errors_name_the_file_and_line():
    names = ["clear", "haze"]
    cases = [(["clear", "fog"], False, "sol.csv line 3: 'fog' is not a class; the classes are clear, haze"),
             (["clear", " "], False, "sol.csv line 3: empty label"),
             (["clear", ""], True, "sol.csv line 3: empty tag list"),
             (["haze fog smog"], True, "sol.csv line 2: 'fog', 'smog' are not classes; the classes are clear, haze")]
    for texts, multi, message in cases:
        with pytest.raises(DataError) as err:
            data.parse_labels(texts, names, multi, Path("sol.csv"))
        assert str(err.value) == message
    with pytest.raises(DataError, match="sol.csv line 9: 'x' is not a class"):
        data.parse_labels(["x"], names, False, "sol.csv", [9])


# ----------------------------------------------------------------------------------------------
# The options and `python data.py info`
# ----------------------------------------------------------------------------------------------

def test_layout_flags_and_the_tri_state_multi_label():
    parse = lambda *argv: config.parse_config("cnn", {}, ["--data", "d", *argv])  # noqa: E731
    plain = parse()
    assert (plain.labels, plain.train_dir, plain.test_dir, plain.multi_label) == ("", "", "", None)
    given = parse("--labels", "train_v2.csv", "--train-dir", "train-jpg", "--test-dir", "test-jpg", "--multi-label")
    assert (given.labels, given.train_dir, given.test_dir, given.multi_label) == ("train_v2.csv", "train-jpg",
                                                                                 "test-jpg", True)
    assert parse("--no-multi-label").multi_label is False
    help_text = config.build_parser("cnn", {}).format_help()
    assert "--labels FILE" in help_text and "--train-dir DIR" in help_text and "--test-dir DIR" in help_text
    assert "--multi-label, --no-multi-label" in help_text
    for name in ("log_loss", "roc_auc", "quadratic_kappa", "f1_samples", "f2_samples", "map@K"):
        assert name in re.sub(r"\s+", " ", help_text)
    for name in ("labels", "train_dir", "test_dir", "multi_label"):
        assert name not in config.RESUMABLE_CHANGES


def test_metric_values_are_checked_without_fixed_choices():
    assert config.parse_config("cnn", {}, ["--data", "d", "--metric", "map@5"]).metric == "map@5"
    assert config.make_config("cnn", {}, data="d", metric="roc_auc").metric == "roc_auc"
    for bad in ("map@0", "auc", "map@"):
        with pytest.raises(OptionError) as err:
            config.parse_config("cnn", {}, ["--data", "d", "--metric", bad])
        # the flag and its value, spelled once, by errors.explain
        assert explain(err.value).startswith(f"--metric {bad}: unknown metric {bad!r}: choose one of ")
        assert explain(err.value).count("--metric") == 1


def test_info_command_says_what_it_found(tmp_path, capsys):
    competition(tmp_path, TAGS, header=("image_name", "tags"), labels_file="train_v2.csv", image_dir="train-jpg")
    write_image(tmp_path / "test_images" / "t0.png")
    data.main(["info", str(tmp_path)])
    out = capsys.readouterr().out
    assert "csv layout, 6 training images, 4 classes, multi-label" in out
    assert "labels: train_v2.csv (image_name -> tags), images in train-jpg/: multi-label" in out
    assert "'primary': 4" in out and "test images: 1" in out
    data.main(["info", str(tmp_path), "--no-multi-label", "--labels", "train_v2.csv", "--train-dir", "train-jpg",
               "--test-dir", "test_images"])
    out = capsys.readouterr().out
    assert "6 training images, 5 classes\n" in out and "'clear primary': 2" in out
    with pytest.raises(SystemExit) as exit_:
        data.main(["info", str(tmp_path), "--labels", "nope.csv"])
    assert str(exit_.value.code).startswith("error: labels file nope.csv not found")
    assert str(exit_.value.code).endswith("with --labels")
