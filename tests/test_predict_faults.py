"""predict.py's faults of the third probe: a model of other classes than the data's, a score recorded into a run
that is still training, test images in subfolders, solutions that answer only some images, Ctrl-C and SIGTERM.
The model is a tiny CNN trained for one epoch, shared by the module."""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fileio
import predict
import runs
import trainer
from conftest import ROOT, predict_error, run_predict, write_csv, write_dataset

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--img-size", "16"]
CLASSES = ("cat", "dog", "bird")


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", classes=CLASSES, per_class=8,
                         size=16)


@pytest.fixture(scope="module")
def run(comp, tmp_path_factory) -> Path:
    import train_cnn
    return trainer.main("cnn", ["--data", str(comp), "--runs-dir", str(tmp_path_factory.mktemp("runs")), "--name",
                                "cnn", "--epochs", "1", *FAST], **train_cnn.DEFAULTS)


@pytest.fixture
def fresh(tmp_path) -> Path:
    """A copy of the competition to change (same generator: the same images)."""
    return write_dataset(tmp_path / "comp", layout="csv", classes=CLASSES, per_class=8, size=16)


@contextlib.contextmanager
def logged():
    """The messages predict.py logs meanwhile (its logger's, whatever handlers the trainer left on the root)."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("imgcomp")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------------------------
# The model's classes and the data's
# ----------------------------------------------------------------------------------------------

def test_a_model_of_other_classes_is_refused_with_both_lists(run, tmp_path):
    digits = write_dataset(tmp_path / "digits", layout="csv", classes=("0", "1", "2", "3"), per_class=3, size=16)
    message = predict_error(run, "--data", digits, "--out", tmp_path / "s.csv")
    assert "none in common" in message and "training labels" in message
    assert "'cat', 'dog', 'bird'" in message or all(f"'{c}'" in message for c in CLASSES)
    assert all(f"'{d}'" in message for d in "0123")
    assert not (tmp_path / "s.csv").exists()
    # without training labels, the solution tells
    (digits / "train.csv").unlink()
    shutil.rmtree(digits / "train")
    message = predict_error(run, "--data", digits, "--solution", digits / "solution.csv", "--out", tmp_path / "s.csv")
    assert "none in common" in message and str(digits / "solution.csv") in message and "'3'" in message
    message = predict_error(run, "--data", digits, "--eval", "--solution", digits / "solution.csv")
    assert "none in common" in message and str(digits / "solution.csv") in message
    assert not (tmp_path / "s.csv").exists()


def test_a_sample_of_other_classes_is_refused(run, fresh, tmp_path):
    (fresh / "train.csv").unlink()
    ids = [f"t{i}" for i in range(12)]
    write_csv(fresh / "sample_submission.csv", ["id", "label"], [(i, ("x", "y", "z")[k % 3]) for k, i in enumerate(ids)])
    message = predict_error(run, "--data", fresh, "--out", tmp_path / "s.csv")
    assert "none in common" in message and "values of" in message and "'x', 'y', 'z'" in message
    write_csv(fresh / "sample_submission.csv", ["id", "x", "y"], [(i, 0.5, 0.5) for i in ids])
    message = predict_error(run, "--data", fresh, "--out", tmp_path / "s.csv")
    assert "none in common" in message and "columns of" in message
    # one placeholder value that is no class tells nothing: the submission is written
    write_csv(fresh / "sample_submission.csv", ["id", "label"], [(i, "unknown") for i in ids])
    run_predict(run, "--data", fresh, "--out", tmp_path / "s.csv")
    assert len(rows_of(tmp_path / "s.csv")) == 13


def test_a_partial_overlap_is_a_warning_naming_the_missing_classes(run, tmp_path, capsys):
    more = write_dataset(tmp_path / "more", layout="csv", classes=(*CLASSES, "fish"), per_class=3, size=16,
                         n_test=12)
    with logged() as messages:
        run_predict(run, "--data", more, "--out", tmp_path / "s.csv", "--solution", more / "solution.csv")
    text = "\n".join(messages)
    assert "training labels" in text and "'fish'" in text and "never predicts" in text
    assert "3 of its rows answer a class the model does not have" in text  # t3, t7, t11 are fish
    assert "scored on 9 of 12 test images: 3 answer(s) are classes the model does not have" in capsys.readouterr().out
    assert len(rows_of(tmp_path / "s.csv")) == 13
    info = json.loads((run / "run.json").read_text())
    assert info.get("test_acc_of", {}).get("solution") != str(more / "solution.csv")  # such a score is not recorded


# ----------------------------------------------------------------------------------------------
# run.json: one locked writer; a score says what it measured and leaves a live run alone
# ----------------------------------------------------------------------------------------------

def test_a_score_leaves_a_live_run_as_it_is_and_says_what_it_measured(run, comp, tmp_path):
    live = tmp_path / "runs" / "live"
    shutil.copytree(run, live)
    trainer_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = json.loads((live / "run.json").read_text())
        info.update(status="running", pid=trainer_process.pid, host=socket.gethostname())
        (live / "run.json").write_text(json.dumps(info))
        run_predict(live, "--data", comp, "--out", tmp_path / "s.csv", "--solution", comp / "solution.csv")
        after = json.loads((live / "run.json").read_text())
        assert (after["status"], after["pid"], after["host"]) == ("running", trainer_process.pid, socket.gethostname())
        assert isinstance(after["test_acc"], float)
        assert after["test_acc_of"]["checkpoint"] == "best.pt" and after["test_acc_of"]["epoch"] == 1
        assert after["test_acc_of"]["solution"] == str(comp / "solution.csv")
        table = runs.runs_table(live.parent)
        assert "| running |" in table and "stopped" not in table
        # the run trains on and finds a better epoch: the score shows the epoch it measured
        runs.update_run_info(live, best_epoch=2, epochs_done=2)
        row = runs.runs_table(live.parent).splitlines()[2]  # its one row
        assert f"{100 * after['test_acc']:.2f}% (epoch 1)" in row
    finally:
        trainer_process.kill()
        trainer_process.wait()


def test_run_json_writers_wait_for_each_other(run, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(run, folder)
    done = threading.Event()

    def record():
        runs.record_test_score(folder, "test_acc", 0.5, folder / "best.pt", 1, "solution.csv")
        done.set()

    with runs._run_info_lock(folder):  # as the trainer holds it while it updates run.json
        writer = threading.Thread(target=record)
        writer.start()
        time.sleep(0.5)
        assert not done.is_set()  # the score waits for the lock
        info = json.loads((folder / "run.json").read_text())
        info["epochs_done"] = 7
        fileio.atomic_write_text(folder / "run.json", json.dumps(info))
    writer.join(10)
    info = json.loads((folder / "run.json").read_text())
    assert info["epochs_done"] == 7 and info["test_acc"] == 0.5  # neither change lost


# ----------------------------------------------------------------------------------------------
# Test images in subfolders; solutions of some of the images
# ----------------------------------------------------------------------------------------------

def test_a_test_image_in_a_subfolder_is_pointed_at(run, fresh, tmp_path):
    (fresh / "test" / "more").mkdir()
    (fresh / "test" / "t3.png").rename(fresh / "test" / "more" / "t3.png")
    message = predict_error(run, "--data", fresh, "--out", tmp_path / "s.csv")
    assert "'t3'" in message and str(fresh / "test" / "more" / "t3.png") in message and "subfolder" in message
    assert "'more/t3'" in message
    # without a sample every image is predicted, the subfolder's under its path
    (fresh / "sample_submission.csv").unlink()
    with logged() as messages:
        run_predict(run, "--data", fresh, "--out", tmp_path / "s.csv")
    assert "more/t3" in [row[0] for row in rows_of(tmp_path / "s.csv")]
    assert any("in subfolders of" in m for m in messages)


def test_a_solution_of_some_images_is_scored_on_them_and_says_how_many(run, comp, tmp_path, capsys):
    answers = rows_of(comp / "solution.csv")
    some = tmp_path / "some.csv"
    write_csv(some, answers[0], answers[1:9])
    run_predict(run, "--data", comp, "--out", tmp_path / "s.csv", "--solution", some)
    out = capsys.readouterr().out
    assert "scored on 8 of 12 test images: the solution has no row for 4" in out and f"accuracy against {some}" in out
    result = predict.main([str(run), "--data", str(comp), "--eval", "--solution", str(some), "--no-progress"])
    assert result["images"] == 8 and "scored on 8 of 12 test images" in capsys.readouterr().out
    # ids that are no test image are left out, with a warning; none at all is an error
    extra = tmp_path / "extra.csv"
    write_csv(extra, answers[0], answers[1:] + [["t99", "cat"], ["t100", "dog"]])
    with logged() as messages:
        run_predict(run, "--data", comp, "--out", tmp_path / "s.csv", "--solution", extra)
    assert any("2 of its 14 ids have no test image" in m and "'t99'" in m for m in messages)
    none = tmp_path / "none.csv"
    write_csv(none, answers[0], [["x1", "cat"], ["x2", "dog"]])
    message = predict_error(run, "--data", comp, "--out", tmp_path / "s.csv", "--solution", none)
    assert str(none) in message and "none of its 2 rows" in message and "'x1'" in message


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# ----------------------------------------------------------------------------------------------

def interrupted(*argv) -> tuple[int, str]:
    """(exit status, stderr) of predict.main interrupted."""
    with pytest.raises(SystemExit) as exc:
        run_predict(*argv)
    return exc.value.code


def test_ctrl_c_says_what_was_kept_and_exits_130(run, comp, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.csv"
    out.write_text("previous submission\n")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "ensemble_probs", stop)
    assert interrupted(run, "--data", comp, "--out", out) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"interrupted: nothing was written; the existing {out} is untouched"
    assert out.read_text() == "previous submission\n"
    monkeypatch.undo()
    monkeypatch.setattr(runs, "write_predictions", stop)
    assert interrupted(run, "--data", comp, "--out", out, "--probs", tmp_path / "p.csv") == 130
    assert capsys.readouterr().err.strip() == f"interrupted: wrote {out}; {tmp_path / 'p.csv'} not written"
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob(".*tmp"))


# A predict.py whose --probs writer stops half-way (writes, says so, then waits to be signalled).
SLOW_PROBS = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import fileio, predict, runs
def slow(path, *args, **kwargs):
    def write(tmp):
        Path(tmp).write_text("id,cat\\n" * 1000)
        Path({started!r}).write_text("writing")
        time.sleep(60)
    fileio.atomic_write(path, write)
runs.write_predictions = slow
predict.main(sys.argv[1:])
"""


def test_sigterm_while_writing_probs_leaves_no_temporary_file(run, comp, tmp_path):
    started, out = tmp_path / "started", tmp_path / "out"
    out.mkdir()
    script = SLOW_PROBS.format(root=str(ROOT), started=str(started))
    process = subprocess.Popen([sys.executable, "-c", script, str(run), "--data", str(comp), "--out",
                                str(out / "s.csv"), "--probs", str(out / "p.csv"), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while not started.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert started.exists(), process.communicate()
    assert [p.name for p in out.iterdir() if "tmp" in p.name]  # its temporary file is there now
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == \
        f"terminated: wrote {out / 's.csv'}; {out / 'p.csv'} not written"
    assert sorted(p.name for p in out.iterdir()) == ["s.csv"]  # no temporary file left


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit, predict.cli.Terminated, MemoryError])
def test_the_atomic_writer_removes_its_temporary_file_on_any_exception(tmp_path, stop):
    target = tmp_path / "probs.csv"
    target.write_text("previous\n")

    def write(tmp):
        Path(tmp).write_text("half")
        raise stop

    with pytest.raises(stop):
        fileio.atomic_write(target, write)
    assert target.read_text() == "previous\n" and os.listdir(tmp_path) == ["probs.csv"]
