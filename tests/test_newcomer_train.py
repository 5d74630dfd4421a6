"""What a newcomer meets when training (issue 27): the schedule of a resume that changes --epochs, no run folder
left by a failed start, prediction files keyed by the competition's ids, the image size and where it comes from."""
from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest

import config as options
import data
import runs
import session
import trainer
from conftest import write_dataset

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--device", "cpu"]


def train(arch: str, *args, **overrides) -> Path:
    script = importlib.import_module(f"train_{arch}")
    return trainer.main(arch, [str(a) for a in args], **{**script.DEFAULTS, **overrides})


def lrs(run: Path) -> list[float]:
    return [row["lr"] for row in runs.read_metrics(run / "metrics.csv")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=8, size=16, n_test=1)


# ----------------------------------------------------------------------------------------------
# The learning-rate schedule of a resume that changes --epochs
# ----------------------------------------------------------------------------------------------

def resumed(epochs_before: int, epochs_now: int, done: int, kind: str, step: int = 0):
    config = options.make_config("cnn", {}, data="d", lr=1.0, epochs=epochs_now, warmup_epochs=1,
                                 resume_schedule=kind)
    resume = {"epoch": done, "training": {"step": step}, "config": {"epochs": epochs_before}}
    return session.resumed_schedule(config, resume, steps_per_epoch=10)


def test_continuing_never_jumps_up_and_decays_to_zero_at_the_new_end():
    before = session.LRSchedule(1.0, 10, 10, 1)
    schedule, part = resumed(10, 30, done=5, kind="continue")
    rates = [schedule.at(i) for i in range(300)]
    assert rates[:50] == [before.at(i) for i in range(50)]  # what was trained stays as it was
    assert part["kind"] == "continue" and part["lr"] == part["rate_reached"] == before.at(49)
    assert rates[50] == pytest.approx(rates[49])  # smooth: from the rate reached
    assert all(b <= a for a, b in zip(rates[49:], rates[50:])) and rates[-1] < 1e-3
    assert rates[150] > before.at(150)  # stretched over the new total: slower than the old decay


def test_restarting_is_a_new_cycle_with_warm_up_over_the_added_epochs():
    schedule, part = resumed(10, 30, done=10, kind="restart")
    rates = [schedule.at(i) for i in range(100, 300)]
    assert part["kind"] == "restart" and part["from_step"] == 100
    # the warm-up: its 1 epoch of 10 steps raised to MIN_WARMUP_STEPS, within a quarter of the 200 added steps
    warmup = min(session.MIN_WARMUP_STEPS, 200 // 4)
    assert rates[0] == pytest.approx(1 / warmup) and max(rates) == pytest.approx(1.0)
    assert rates.index(max(rates)) == warmup - 1
    assert rates[-1] < 1e-3


def test_the_same_epochs_keep_the_schedule_exactly():
    schedule, part = resumed(10, 10, done=4, kind="restart", step=3)
    before = session.LRSchedule(1.0, 10, 10, 1)
    assert part is None and [schedule.at(i) for i in range(100)] == [before.at(i) for i in range(100)]
    # a schedule saved with its parts is rebuilt as it was
    longer, _ = resumed(10, 30, done=10, kind="continue")
    config = options.make_config("cnn", {}, data="d", lr=1.0, epochs=30, warmup_epochs=1)
    again, change = session.resumed_schedule(config, {"epoch": 20, "training": {"step": 0, "schedule": longer.state()},
                                                      "config": {"epochs": 30}}, 10)
    assert change is None and [again.at(i) for i in range(300)] == [longer.at(i) for i in range(300)]


def test_a_resume_with_more_epochs_continues_the_rate_and_records_the_choice(dataset, tmp_path):
    common = ["--data", dataset, "--runs-dir", tmp_path, "--img-size", 16, "--warmup-epochs", 0, *FAST]
    run = train("cnn", *common, "--name", "cont", "--epochs", 2)
    train("cnn", "--resume", run, "--epochs", 4, "--no-progress")
    rates = lrs(run)
    assert len(rates) == 4 and all(b <= a for a, b in zip(rates, rates[1:]))  # no jump back up
    info = runs.read_run_info(run)
    [part] = info["lr_schedule"]["parts"]
    assert part["kind"] == "continue" and part["to_epoch"] == 4 and part["from_epochs"] == 2
    assert json.loads((run / "config.json").read_text())["resume_schedule"] == "continue"

    again = train("cnn", *common, "--name", "restart", "--epochs", 2)
    train("cnn", "--resume", again, "--epochs", 4, "--resume-schedule", "restart", "--no-progress")
    rates = lrs(again)
    assert rates[2] > rates[1] and runs.read_run_info(again)["lr_schedule"]["parts"][0]["kind"] == "restart"


# ----------------------------------------------------------------------------------------------
# A failed start leaves no run folder
# ----------------------------------------------------------------------------------------------

def test_a_start_that_fails_leaves_no_folder(dataset, tmp_path):
    runs_dir = tmp_path / "runs"
    with pytest.raises(SystemExit, match="divisible by 32"):  # a model error, found after the data was read
        train("coatnet", "--data", dataset, "--runs-dir", runs_dir, "--img-size", 16, "--epochs", 1, *FAST)
    with pytest.raises(SystemExit, match="--label-col"):  # a data error
        train("cnn", "--data", dataset, "--runs-dir", runs_dir, "--label-col", "nope", "--epochs", 1, *FAST)
    assert not runs_dir.exists()


def test_a_failure_before_the_first_epoch_removes_the_folder_it_created(dataset, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(trainer, "train_one_epoch", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        train("cnn", "--data", dataset, "--runs-dir", tmp_path / "runs", "--name", "oom", "--img-size", 16,
              "--epochs", 1, *FAST)
    assert not (tmp_path / "runs").exists()
    # a folder that held something else before is left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "mine", "--img-size", 16, "--epochs", 1,
              *FAST)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and not (tmp_path / "mine" / ".lock").exists()


# ----------------------------------------------------------------------------------------------
# Prediction files keyed by the competition's ids; the image size and its origin
# ----------------------------------------------------------------------------------------------

def test_validation_predictions_are_keyed_by_the_labels_csv_id_column(dataset, tmp_path):
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "ids", "--epochs", 1,
                "--val-split", 0.25, *FAST, img_size=16)
    with open(run / "val_predictions.csv", newline="") as f:
        header = next(csv.reader(f))
    ids, labels, _, _ = runs.read_predictions(run / "val_predictions.csv")
    found = data.find_labelled_images(dataset)
    assert header[:2] == ["id", "label"] and set(ids) <= set(found.ids) and len(ids) == 6
    assert all(label == ("cat", "dog", "bird")[int(i.split("_")[0])] for i, label in zip(ids, labels))  # as train.csv
    info = runs.read_run_info(run)
    assert info["img_size"] == 16 and info["img_size_from"] == "flag"  # given on the command line


def test_class_folder_ids_are_paths_in_the_training_folder(tmp_path):
    comp = write_dataset(tmp_path / "comp", layout="folder", per_class=3, size=8, n_test=1)
    found = data.find_labelled_images(comp)
    assert found.id_column == "file" and found.ids[0] == "bird/2_0.png" and len(found.ids) == len(found.files)
    assert all(f.as_posix().endswith("train/" + i) for f, i in zip(found.files, found.ids))


def test_older_prediction_files_are_still_read(tmp_path):
    path = tmp_path / "val_predictions.csv"
    runs.write_predictions(path, ["train/a.png"], ["cat"], [[0.7, 0.3]], ["cat", "dog"])  # header file,label,...
    assert runs.read_predictions(path) == (["train/a.png"], ["cat"], ["cat", "dog"], [[0.7, 0.3]])


def test_the_image_size_given_as_a_flag_is_recorded_so(dataset, tmp_path):
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "flag", "--epochs", 1, "--img-size", 12,
                *FAST)
    assert runs.read_run_info(run)["img_size_from"] == "flag"
