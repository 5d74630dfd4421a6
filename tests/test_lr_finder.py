"""The learning-rate finder (--find-lr): its suggestion on a known curve, a tiny range test end to end (its files,
nothing trained kept, the runs table unaffected), multi-label data, and the options it is refused with."""
from __future__ import annotations

import csv
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import config as options
import lr_finder
import runs
import trainer
from conftest import write_dataset
from errors import OptionError, explain
from runtime import Runtime
from test_multilabel import write_tagged_dataset

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--img-size", "16"]


def run_cnn(*args):
    script = importlib.import_module("train_cnn")
    return trainer.main("cnn", [str(a) for a in args], **script.DEFAULTS)


def error_of(*args) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cnn(*args)
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: "), exc.value.code
    return exc.value.code


def curve(steps: int = 200) -> list[dict]:
    """A range test's rows: flat up to 1e-4, falling (fastest at 1e-2) to a minimum near 1, then exploding."""
    lrs = np.geomspace(1e-7, 10, steps)
    x = np.log10(lrs)
    smoothed = 2.0 - 1.5 / (1 + np.exp(-3 * (x + 2)))  # falls between about 1e-4 and 1
    smoothed += np.where(x > 0, 20 * x ** 2, 0.0)  # and explodes past 1
    return [{"lr": float(r), "loss": float(v), "smoothed": float(v)} for r, v in zip(lrs, smoothed)]


def test_suggestion_lies_where_the_loss_falls():
    rows = curve()
    rate, rule = lr_finder.suggest_lr(rows)
    steepest, minimum = lr_finder.landmarks(rows)
    assert 1e-4 < rate < 1 and "minimum" in rule
    assert 0.3 < minimum < 2 and rate == pytest.approx(minimum / 10, rel=0.06)  # to two figures
    assert steepest == pytest.approx(1e-2, rel=0.15)  # the steepest point of the falling part


def test_a_loss_that_never_falls_suggests_a_tenth_of_its_minimum():
    rows = [{"lr": float(r), "loss": 1.0 + r, "smoothed": 1.0 + r} for r in np.geomspace(1e-7, 10, 50)]
    rate, rule = lr_finder.suggest_lr(rows)
    assert lr_finder.landmarks(rows)[0] is None and rate == pytest.approx(1e-8) and "never fell" in rule


def test_a_loss_still_falling_at_the_end_says_so():
    rows = [{"lr": float(r), "loss": 2 - i / 50, "smoothed": 2 - i / 50}
            for i, r in enumerate(np.geomspace(1e-7, 10, 50))]
    rate, rule = lr_finder.suggest_lr(rows)
    assert rate == pytest.approx(1.0) and "still falling" in rule


def test_the_ramp_rises_exponentially_from_start_to_end():
    ramp = lr_finder.ExponentialRamp(1e-7, 10, 41)
    rates = [ramp.at(i) for i in range(41)]
    assert rates[0] == pytest.approx(1e-7) and rates[-1] == pytest.approx(10) and rates[20] == pytest.approx(1e-3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", per_class=16, size=16)


def test_range_test_writes_its_files_and_trains_nothing_that_stays(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lr_finder, "MAX_STEPS", 24)
    folder = run_cnn("--data", dataset, "--runs-dir", tmp_path, "--name", "probe", "--find-lr", *FAST)
    assert folder == tmp_path / "probe-lr-find"
    with open(folder / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["lr", "loss", "smoothed"] and 5 < len(rows) <= 24
    rates = [float(r["lr"]) for r in rows]
    assert rates[0] == pytest.approx(1e-7) and all(a < b for a, b in zip(rates, rates[1:]))
    assert all(math.isfinite(float(r["loss"])) for r in rows[:5])
    assert (folder / "lr_find.png").stat().st_size > 1000
    found = json.loads((folder / "lr_find.json").read_text())
    assert rates[0] <= found["suggested_lr"] <= rates[-1] and found["steps"] == len(rows)
    assert "--lr" in found["command"] and "--find-lr" not in found["command"] and "--name probe" in found["command"]
    # Nothing that trains or resumes: no checkpoints, no run folder, no run.json for the runs table.
    assert not list(tmp_path.rglob("*.pt")) and not (tmp_path / "probe").exists()
    assert not (folder / "run.json").exists() and "probe" not in runs.runs_table(tmp_path)
    log = capsys.readouterr().out.splitlines()  # the log is for people: its last line is the command to run
    assert log[-1] == f"train with: {found['command']}" and any("suggested --lr" in line for line in log)


def test_range_test_on_tags_stopped_by_ctrl_c_keeps_its_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(lr_finder, "MAX_STEPS", 40)
    real_step = trainer._step

    def step(s, x, y, i, sums):  # Ctrl-C during the 9th step
        if i == 8:
            raise KeyboardInterrupt
        return real_step(s, x, y, i, sums)
    monkeypatch.setattr(trainer, "_step", step)
    tagged = write_tagged_dataset(tmp_path / "tags", n=48)
    folder = run_cnn("--data", tagged, "--runs-dir", tmp_path / "runs", "--name", "tags", "--find-lr",
                     "--metric", "f2_samples", *FAST)
    found = json.loads((folder / "lr_find.json").read_text())
    assert found["steps"] == 8 and not found["diverged"] and found["suggested_lr"] > 0
    assert (folder / "lr_find.png").is_file() and len(lr_finder.read_rows(folder / "lr_find.csv")) == 8


def test_find_lr_is_refused_with_resume_and_with_folds(dataset, tmp_path):
    message = error_of("--data", dataset, "--resume", tmp_path / "nothing-here", "--find-lr")
    assert "--find-lr" in message and "--resume" in message
    message = error_of("--data", dataset, "--runs-dir", tmp_path, "--folds", "3", "--find-lr", *FAST)
    assert "--find-lr" in message and "--folds" in message
    assert not list(tmp_path.iterdir())
    with pytest.raises(OptionError, match="--find-lr"):
        options.make_config("cnn", {}, data=str(dataset), find_lr=True, resume=str(tmp_path))


def test_find_lr_is_refused_under_torchrun(dataset, tmp_path):
    config = options.make_config("cnn", {}, data=str(dataset), runs_dir=str(tmp_path), find_lr=True)
    with pytest.raises(OptionError) as exc:
        lr_finder.find_lr(config, Runtime(torch.device("cpu"), world_size=2), {}, trainer._step)
    assert "--find-lr" in explain(exc.value) and "torchrun" in str(exc.value)


def test_find_lr_is_left_out_of_a_run_command():
    assert "find_lr" in options.NOT_IN_COMMAND
