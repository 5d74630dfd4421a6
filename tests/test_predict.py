"""predict.py end to end: tiny runs trained for one epoch, then submissions checked with the csv module,
ensembles, TTA, --eval artefacts, scoring, and checkpoints that must be refused.

The trained runs are shared by the whole module (training is the slow part)."""
from __future__ import annotations

import csv
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import data
import predict
import checkpoint
import compute
import inference
import trainer
from conftest import ROOT, predict_error, run_predict, to_version_1, write_csv, write_dataset
from models import build_model
from submission import submission_accuracy

# Names that need CSV quoting (comma, double quote) and a slash, sorted so that the class index differs
# from the order they are listed in.
ODD_CLASSES = ("T-shirt/top", 'say "hi", ok', "Bag")


def train(arch: str, data_dir: Path, runs_dir: Path, name: str, *extra: str) -> Path:
    defaults = importlib.import_module(f"train_{arch}").DEFAULTS
    return trainer.main(arch, ["--data", str(data_dir), "--epochs", "2", "--lr", "0.005", "--runs-dir", str(runs_dir), "--name", name,
                               "--precision", "fp32", "--channels-last", "off", "--no-progress", *extra], **defaults)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def read_probs(path: Path) -> tuple[list[str], np.ndarray]:
    header, rows = read_rows(path)
    return header, np.array([[float(v) for v in row[1:]] for row in rows])


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    """CSV layout, gray PNGs, class names that need quoting."""
    return write_dataset(tmp_path_factory.mktemp("odd") / "comp", layout="csv", classes=ODD_CLASSES, size=16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def cnn_run(comp, runs) -> Path:
    # The global head: on these tiny centred images the "map" head is sure of every image (probabilities of 1 -
    # 1e-5), where a mirrored view changes nothing that the CSV's 6 decimals show.
    return train("cnn", comp, runs, "cnn", "--img-size", "16", "--head-pool", "global")


@pytest.fixture(scope="module")
def resnet_run(comp, runs) -> Path:
    return train("resnet", comp, runs, "resnet", "--img-size", "12")  # another size: test images are resized


@pytest.fixture
def fresh_comp(tmp_path) -> Path:
    """A copy of the competition's classes to modify: same generator, so the same test images."""
    return write_dataset(tmp_path / "comp", layout="csv", classes=ODD_CLASSES, size=16)


# ----------------------------------------------------------------------------------------------
# Both layouts end to end
# ----------------------------------------------------------------------------------------------

def test_csv_layout_end_to_end(comp, cnn_run, tmp_path, capsys):
    out = tmp_path / "sub" / "submission.csv"
    run_predict(cnn_run, "--data", comp, "--out", out, "--solution", comp / "solution.csv")
    header, rows = read_rows(out)
    sample_header, sample_rows = read_rows(comp / "sample_submission.csv")
    assert header == sample_header == ["id", "label"]
    assert [r[0] for r in rows] == [r[0] for r in sample_rows]
    assert all(len(r) == 2 and r[1] in ODD_CLASSES for r in rows)
    # names with commas and quotes were quoted by the CSV writer and read back intact
    text = out.read_text()
    if 'say "hi", ok' in {r[1] for r in rows}:
        assert '"say ""hi"", ok"' in text
    # the printed accuracy is the submission's accuracy, and it is the run's test accuracy
    solution = dict(read_rows(comp / "solution.csv")[1])
    expected = np.mean([solution[i] == v for i, v in rows])
    assert submission_accuracy(out, comp / "solution.csv") == pytest.approx(expected)
    assert f"accuracy against {comp / 'solution.csv'}: {expected:.4f}" in capsys.readouterr().out
    assert json.loads((cnn_run / "run.json").read_text())["test_acc"] == pytest.approx(expected)
    assert expected > 0.5  # the bars are easy: one epoch learns them


def test_folder_layout_end_to_end(tmp_path):
    comp = write_dataset(tmp_path / "comp", layout="folder", channels=3, ext=".jpg", size=16)
    run = train("cnn", comp, tmp_path / "runs", "cnn", "--img-size", "16")
    ckpt = checkpoint.load_checkpoint(run / "best.pt")
    spec = checkpoint.read_spec(ckpt)
    assert spec.channels == 3 and spec.class_names == ["bird", "cat", "dog"]
    out = tmp_path / "submission.csv"
    run_predict(run, "--data", comp, "--out", out)
    header, rows = read_rows(out)
    assert header == ["id", "label"]
    assert [r[0] for r in rows] == [f"t{i}" for i in range(12)]
    assert {r[1] for r in rows} <= {"bird", "cat", "dog"}
    assert submission_accuracy(out, comp / "solution.csv") > 0.5


# ----------------------------------------------------------------------------------------------
# Which rows, in which form
# ----------------------------------------------------------------------------------------------

def test_sample_ids_with_extension(cnn_run, tmp_path):
    comp = write_dataset(tmp_path / "comp", classes=ODD_CLASSES, size=16, sample_ids_with_ext=True)
    out = tmp_path / "submission.csv"
    run_predict(cnn_run, "--data", comp, "--out", out)
    _, rows = read_rows(out)
    assert [r[0] for r in rows] == [f"t{i}.png" for i in range(12)]
    assert submission_accuracy(out, comp / "solution.csv") > 0.5


def test_reordered_sample_keeps_header_and_order(cnn_run, fresh_comp, tmp_path):
    plain = tmp_path / "plain.csv"
    run_predict(cnn_run, "--data", fresh_comp, "--out", plain)
    expected = dict(read_rows(plain)[1])

    _, sample_rows = read_rows(fresh_comp / "sample_submission.csv")
    order = [sample_rows[i] for i in (5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10)]
    write_csv(fresh_comp / "sample_submission.csv", ["ImageId", "Category"], order)
    out = tmp_path / "reordered.csv"
    run_predict(cnn_run, "--data", fresh_comp, "--out", out)
    header, rows = read_rows(out)
    assert header == ["ImageId", "Category"]
    assert [r[0] for r in rows] == [r[0] for r in order]
    assert {i: v for i, v in rows} == expected  # each id keeps its own prediction


def test_without_sample_every_test_image_in_natural_order(cnn_run, fresh_comp, tmp_path):
    (fresh_comp / "sample_submission.csv").unlink()
    out = tmp_path / "submission.csv"
    run_predict(cnn_run, "--data", fresh_comp, "--out", out)
    header, rows = read_rows(out)
    assert header == ["id", "label"]
    assert [r[0] for r in rows] == [f"t{i}" for i in range(12)]  # t2 before t10, no extension


def test_sample_id_without_test_file(cnn_run, fresh_comp, tmp_path):
    (fresh_comp / "test" / "t3.png").unlink()
    out = tmp_path / "submission.csv"
    message = predict_error(cnn_run, "--data", fresh_comp, "--out", out)
    assert "1 id(s) have no image" in message and "line 5: 't3'" in message
    assert not out.exists()


def test_test_file_missing_from_sample(cnn_run, fresh_comp, tmp_path):
    header, rows = read_rows(fresh_comp / "sample_submission.csv")
    write_csv(fresh_comp / "sample_submission.csv", header, [r for r in rows if r[0] not in ("t5", "t10")])
    message = predict_error(cnn_run, "--data", fresh_comp, "--out", tmp_path / "submission.csv")
    assert "2 image(s)" in message and "missing from" in message
    assert "t5.png" in message and "t10.png" in message


def test_duplicate_sample_id(cnn_run, fresh_comp, tmp_path):
    header, rows = read_rows(fresh_comp / "sample_submission.csv")
    write_csv(fresh_comp / "sample_submission.csv", header, rows + [rows[2]])
    message = predict_error(cnn_run, "--data", fresh_comp, "--out", tmp_path / "submission.csv")
    assert "duplicate id" in message and "'t2'" in message


def test_sample_naming_one_file_twice(cnn_run, fresh_comp, tmp_path):
    header, rows = read_rows(fresh_comp / "sample_submission.csv")
    write_csv(fresh_comp / "sample_submission.csv", header, rows + [[rows[2][0] + ".png", rows[2][1]]])
    message = predict_error(cnn_run, "--data", fresh_comp, "--out", tmp_path / "submission.csv")
    assert "same file as line 4" in message and "'t2.png'" in message


# ----------------------------------------------------------------------------------------------
# Ensembles and TTA
# ----------------------------------------------------------------------------------------------

def test_ensemble_of_two_architectures_averages_probabilities(comp, cnn_run, resnet_run, tmp_path):
    for name, members in (("cnn", [cnn_run]), ("resnet", [resnet_run / "best.pt"]), ("both", [cnn_run, resnet_run])):
        run_predict(*members, "--data", comp, "--out", tmp_path / f"{name}.csv", "--probs", tmp_path / f"{name}_p.csv",
                    "--weights", "equal")
    header, both = read_probs(tmp_path / "both_p.csv")
    assert header == ["id", *sorted(ODD_CLASSES, key=data.natural_key)]
    _, cnn = read_probs(tmp_path / "cnn_p.csv")
    _, resnet = read_probs(tmp_path / "resnet_p.csv")
    assert both.shape == (12, 3)
    np.testing.assert_allclose(both.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(both, (cnn + resnet) / 2, atol=2e-6)
    _, rows = read_rows(tmp_path / "both.csv")
    assert [r[1] for r in rows] == [header[1 + k] for k in both.argmax(1)]


def test_ensemble_of_different_class_sets_is_refused(cnn_run, tmp_path):
    other = write_dataset(tmp_path / "other", classes=("cat", "dog"), size=16, per_class=8)
    other_run = train("cnn", other, tmp_path / "runs", "other", "--img-size", "16")
    message = predict_error(cnn_run, other_run, "--data", other, "--out", tmp_path / "submission.csv")
    assert "different classes" in message and "['cat', 'dog']" in message


def test_tta_averages_the_image_and_its_mirror(cnn_run, fresh_comp, tmp_path):
    mirrored = tmp_path / "mirrored"
    shutil.copytree(fresh_comp, mirrored, ignore=shutil.ignore_patterns(".cache"))
    for path in (mirrored / "test").glob("*.png"):
        cv2.imwrite(str(path), cv2.flip(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), 1))
    for name, folder, extra in (("plain", fresh_comp, []), ("mirror", mirrored, []), ("tta", fresh_comp, ["--tta"])):
        run_predict(cnn_run, "--data", folder, "--out", tmp_path / f"{name}.csv", "--probs", tmp_path / f"{name}_p.csv",
                    *extra)
    plain, mirror, tta = (read_probs(tmp_path / f"{n}_p.csv")[1] for n in ("plain", "mirror", "tta"))
    assert not np.allclose(plain, mirror, atol=1e-4)  # the flip does change the model's view
    np.testing.assert_allclose(tta, (plain + mirror) / 2, atol=2e-6)


def test_tta_of_a_model_trained_in_all_orientations_averages_them():
    torch.manual_seed(0)
    model = build_model("cnn", 3, 1, 16, head_pool="map").eval()  # where things are matters to it
    pixels = np.random.default_rng(0).integers(0, 256, (5, 1, 16, 16), dtype=np.uint8)
    args = (data.Preprocess(None, None), compute.ComputeFormat(), torch.device("cpu"), 4)
    tta = inference.predict_probs(model, pixels, *args, tta=True, turns=True)
    views = [np.rot90(pixels, k, (2, 3)) for k in range(4)]
    views += [v[..., ::-1] for v in views]
    each = [inference.predict_probs(model, np.ascontiguousarray(v), *args) for v in views]
    assert not np.allclose(each[0], each[1], atol=1e-4)  # the turn does change the model's view
    np.testing.assert_allclose(tta, np.mean(each, 0), atol=2e-6)


# ----------------------------------------------------------------------------------------------
# --eval
# ----------------------------------------------------------------------------------------------

def test_eval_on_validation_split_writes_artefacts(comp, cnn_run, capsys):
    for name in ("confusion_matrix.png", "wrong.png"):
        (cnn_run / name).unlink(missing_ok=True)
    run_predict(cnn_run, "--data", comp, "--eval")
    out = capsys.readouterr().out
    ckpt = checkpoint.load_checkpoint(cnn_run / "best.pt")
    # the same model on the same images as training's validation: the same accuracy
    assert f"accuracy {ckpt['best_val_acc']:.4f} on {len(ckpt['val_files'])} images" in out
    for name in ODD_CLASSES:
        assert name in out
    assert "precision" in out and "recall" in out
    for name in ("confusion_matrix.png", "wrong.png"):
        assert (cnn_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_on_solution_records_test_accuracy(comp, cnn_run, capsys):
    info = json.loads((cnn_run / "run.json").read_text())
    info.pop("test_acc", None)
    (cnn_run / "run.json").write_text(json.dumps(info))
    result = predict.main([str(cnn_run), "--data", str(comp), "--eval", "--solution", str(comp / "solution.csv"),
                           "--no-progress"])
    assert int(result["confusion"].sum()) == 12
    assert f"accuracy {result['accuracy']:.4f} on 12 images" in capsys.readouterr().out
    assert json.loads((cnn_run / "run.json").read_text())["test_acc"] == pytest.approx(result["accuracy"])
    assert "test acc" in (cnn_run.parent / "runs.md").read_text()


def test_a_tta_score_is_recorded_beside_the_plain_one_not_over_it(comp, cnn_run, tmp_path):
    predict.main([str(cnn_run), "--data", str(comp), "--out", str(tmp_path / "s.csv"), "--tta",
                  "--solution", str(comp / "solution.csv"), "--no-progress"])
    tta = submission_accuracy(tmp_path / "s.csv", comp / "solution.csv")
    plain = predict.main([str(cnn_run), "--data", str(comp), "--eval", "--solution", str(comp / "solution.csv"),
                          "--no-progress"])["accuracy"]
    info = json.loads((cnn_run / "run.json").read_text())
    assert (info["test_acc"], info["test_acc_tta"]) == (pytest.approx(plain), pytest.approx(tta))
    row = next(line for line in (cnn_run.parent / "runs.md").read_text().splitlines() if f"| {cnn_run.name} |" in line)
    assert f"| {100 * plain:.2f}% | {100 * tta:.2f}% |" in row
    # which column a score goes to, with scores that differ (on the tiny data both may well be 100%)
    predictor = predict.load_models([str(cnn_run)], torch.device("cpu"))
    predict.record_test_acc(predictor, 0.25, tta=True)
    predict.record_test_acc(predictor, 0.5, tta=False)
    info = json.loads((cnn_run / "run.json").read_text())
    assert (info["test_acc"], info["test_acc_tta"]) == (0.5, 0.25)
    # a model trained without flips gets no TTA: --tta gives its plain score, recorded as such
    predictor[0].spec.hflip = False
    predict.record_test_acc(predictor, 0.75, tta=True)
    info = json.loads((cnn_run / "run.json").read_text())
    assert (info["test_acc"], info["test_acc_tta"]) == (0.75, 0.25)


def test_eval_writes_no_submission(comp, cnn_run, tmp_path):
    assert "--eval" in predict_error(cnn_run, "--data", comp, "--eval", "--out", tmp_path / "s.csv")


# ----------------------------------------------------------------------------------------------
# Safety
# ----------------------------------------------------------------------------------------------

class Malicious:
    """Unpickling this object would create `marker`: code execution by a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_malicious_checkpoint_is_refused_and_runs_no_code(comp, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "imgcomp-checkpoint", "model": Malicious(marker)}, evil)
    message = predict_error(evil, "--data", comp, "--out", tmp_path / "submission.csv")
    assert "refused" in message and str(evil) in message
    assert not marker.exists()
    # from the command line too
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(evil), "--data", str(comp),
                             "--out", str(tmp_path / "submission.csv")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "error:" in result.stderr and "refused" in result.stderr
    assert not marker.exists() and not (tmp_path / "submission.csv").exists()
    # the file really is malicious: a plain (unsafe) load runs its code
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_files_that_are_not_checkpoints_are_refused(comp, tmp_path):
    torch.save({"a": 1}, tmp_path / "plain.pt")
    assert "not a checkpoint of this toolkit" in predict_error(tmp_path / "plain.pt", "--data", comp)
    (tmp_path / "text.pt").write_text("hello")
    assert "refused" in predict_error(tmp_path / "text.pt", "--data", comp)
    (tmp_path / "empty_run").mkdir()
    assert "has no best.pt" in predict_error(tmp_path / "empty_run", "--data", comp)
    assert "does not exist" in predict_error(tmp_path / "missing.pt", "--data", comp)


# ----------------------------------------------------------------------------------------------
# The demo competition
# ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST files not installed")
def test_demo_competition_scores_against_its_solution(tmp_path, capsys):
    demo = data.write_fashion_mnist(tmp_path / "fashion-mnist", limit=400)
    run = train("cnn", demo, tmp_path / "runs", "cnn", "--batch-size", "32")
    out = tmp_path / "submission.csv"
    run_predict(run, "--data", demo, "--out", out, "--solution", demo / "solution.csv")
    header, rows = read_rows(out)
    assert header == ["id", "label"] and len(rows) == 400
    assert {r[1] for r in rows} <= set(data.FASHION_MNIST_CLASSES)
    accuracy = submission_accuracy(out, demo / "solution.csv")
    assert f"accuracy against {demo / 'solution.csv'}: {accuracy:.4f}" in capsys.readouterr().out
    assert accuracy > 0.3  # ten classes: chance is 0.1


def test_a_version_1_checkpoint_still_predicts_the_same(comp, cnn_run, tmp_path):
    current = checkpoint.load_checkpoint(cnn_run / "best.pt")
    old = tmp_path / "old.pt"
    checkpoint.save_checkpoint(old, to_version_1(current))
    migrated = checkpoint.load_checkpoint(old)
    assert checkpoint.read_spec(migrated) == checkpoint.read_spec(current)
    assert migrated["version"] == checkpoint.CHECKPOINT_VERSION and "training" not in migrated
    for name, ckpt in (("new", cnn_run / "best.pt"), ("old", old)):
        run_predict(ckpt, "--data", comp, "--out", tmp_path / f"{name}.csv", "--probs", tmp_path / f"{name}-probs.csv")
    assert (tmp_path / "new.csv").read_text() == (tmp_path / "old.csv").read_text()
    assert (tmp_path / "new-probs.csv").read_text() == (tmp_path / "old-probs.csv").read_text()
    # a checkpoint of a later version is refused with a clear error
    checkpoint.save_checkpoint(tmp_path / "future.pt", {**current, "version": checkpoint.CHECKPOINT_VERSION + 1})
    assert "newer version" in predict_error(tmp_path / "future.pt", "--data", comp)


def fake_run(tmp_path: Path, **config) -> list:
    """A predictor as check_outputs and index_test read it: its checkpoint's path and its run's config."""
    from types import SimpleNamespace
    return [SimpleNamespace(path=tmp_path / "run" / "best.pt", checkpoint={"config": config})]


def test_the_runs_test_folder_is_the_default(tmp_path, monkeypatch):
    root = tmp_path / "planet"
    for folder, name in (("planet/test-jpg", "a.png"), ("planet/test", "b.png"), ("test-jpg", "c.png")):
        (tmp_path / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / folder / name), np.zeros((4, 4), np.uint8))
    args = predict.build_parser().parse_args(["run", "--data", str(root)])
    monkeypatch.chdir(tmp_path)  # the run's relative folder is found inside the data folder first
    assert [f.name for f in predict.index_test(args, fake_run(tmp_path, test_dir="test-jpg")).files] == ["a.png"]
    assert [f.name for f in predict.index_test(args, fake_run(tmp_path)).files] == ["b.png"]  # none: test/
    args.test_dir = "test"  # --test-dir wins
    assert [f.name for f in predict.index_test(args, fake_run(tmp_path, test_dir="test-jpg")).files] == ["b.png"]
    args.test_dir = None
    with pytest.raises(data.DataError) as e:
        predict.index_test(args, fake_run(tmp_path, test_dir="test-tif"))
    assert "test-tif" in str(e.value) and "--test-dir" in str(e.value)


def test_outputs_are_not_the_runs_labels_file_nor_in_its_image_folder(tmp_path):
    root = tmp_path / "planet"
    (root / "train-jpg").mkdir(parents=True)
    write_csv(root / "train_v2.csv", ["image_name", "tags"], [("a", "cloud")])
    write_csv(root / "tags.csv", ["image_name", "tags"], [("a", "cloud")])
    write_csv(root / "sample_submission_v2.csv", ["image_name", "tags"], [("a", "cloud")])
    run = fake_run(tmp_path, labels="tags.csv", train_dir="train-jpg")
    for out, wanted in ((root / "tags.csv", "the training labels"), (root / "train-jpg" / "s.csv", "image folder"),
                        (root / "sample_submission_v2.csv", "the sample")):
        args = predict.build_parser().parse_args(["run", "--data", str(root), "--out", str(out)])
        with pytest.raises(data.DataError, match=wanted):
            predict.check_outputs(args, run)
    predict.check_outputs(predict.build_parser().parse_args(["run", "--data", str(root), "--out",
                                                             str(tmp_path / "s.csv")]), run)
    assert not (tmp_path / "s.csv").exists()
