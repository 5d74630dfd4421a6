"""The training scripts end to end on tiny data: outputs, checkpoints, resume, interruption, torchrun."""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import batches
import checkpoint
import compute
import config as options
import data
import runs
import runtime
import session
import trainer
from conftest import ROOT, to_version_1, write_dataset
from models import build_model

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16"]
# Bit-for-bit comparisons (resumed vs in one go) pin the CPU: GPU kernels (cuDNN autotuning, TF32, atomics) are
# not deterministic run to run.
EXACT = ["--device", "cpu"]


def train(arch: str, *args, **overrides) -> Path:
    script = importlib.import_module(f"train_{arch}")
    return trainer.main(arch, [str(a) for a in args], **{**script.DEFAULTS, **overrides})


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def comparable(rows):
    """Metric rows without the wall-clock columns."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=20, size=16)


@pytest.fixture(scope="module")
def rgb_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="folder", per_class=8, size=32,
                         channels=3, ext=".jpg", classes=("a", "b", "c", "d"))


def test_cnn_trains_and_writes_every_output(dataset, tmp_path):
    (tmp_path / "notes").mkdir()  # a run.json in the runs folder that is not one of ours
    (tmp_path / "notes" / "run.json").write_text('{"note": "not a run"}')
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "cnn-a", "--epochs", 3,
                "--img-size", 16, "--lr", 3e-3, *FAST)
    assert run == tmp_path / "cnn-a"
    for name in ("metrics.csv", "config.json", "last.pt", "best.pt", "curves.png", "run.json"):
        assert (run / name).is_file(), name
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == set(runs.METRIC_COLUMNS)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_acc"]) >= 0.8  # the bars are easy to tell apart

    ckpt = checkpoint.load_checkpoint(run / "best.pt")
    spec = checkpoint.read_spec(ckpt)
    assert ckpt["version"] == checkpoint.CHECKPOINT_VERSION
    assert spec.arch == "cnn" and spec.class_names == ["bird", "cat", "dog"]
    assert spec.img_size == 16 and spec.channels == 1 and len(spec.mean) == 1 and len(spec.std) == 1
    assert ckpt["config"]["lr"] == 3e-3 and ckpt["config"]["arch"] == "cnn"
    assert "training" not in ckpt and "optimizer" in checkpoint.load_checkpoint(run / "last.pt")["training"]
    assert len(ckpt["val_files"]) == 6  # 10% of each of the 3 classes of 20
    # The checkpoint alone rebuilds the model.
    model = checkpoint.model_from_checkpoint(ckpt).eval()
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    # Version 3 added the spec's multi_label and thresholds: a version-2 file (a spec without them) loads as
    # single-label and predicts the same, and a toolkit that knew only version 2 refuses this file as newer.
    raw = torch.load(run / "best.pt", weights_only=True)
    assert raw["version"] == 3 and raw["spec"]["multi_label"] is False and raw["spec"]["thresholds"] is None
    dropped = {k: v for k, v in raw["spec"].items() if k not in ("multi_label", "thresholds")}
    checkpoint.save_checkpoint(tmp_path / "v2.pt", {**raw, "version": 2, "spec": dropped})
    v2 = checkpoint.load_checkpoint(tmp_path / "v2.pt")
    assert v2["version"] == 3 and v2["spec"]["multi_label"] is False and v2["spec"]["thresholds"] is None
    assert checkpoint.read_spec(v2) == spec
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(checkpoint.model_from_checkpoint(v2).eval()(x), model(x))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "CHECKPOINT_VERSION", 2)
        with pytest.raises(checkpoint.DataError, match="written by a newer version"):
            checkpoint.load_checkpoint(run / "best.pt")

    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["name"] == "cnn-a"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == 3
    assert info["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-6)
    table = (tmp_path / "runs.md").read_text()
    assert "| cnn-a | cnn | 3/3 | 16 | 16 |" in table and "finished" in table
    assert "| notes |" in table and "unreadable run.json" in table  # flagged, and it stopped nothing
    printed = subprocess.run([sys.executable, "runs.py", "table", "--runs-dir", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert printed == table

    # The curves are a view of metrics.csv: the plot command draws them again.
    (run / "curves.png").unlink()
    out = subprocess.run([sys.executable, "runs.py", "plot", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = subprocess.run([sys.executable, "runs.py", "plot", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "has no metrics.csv" in out.stderr

    # The table with commands: each run's command trains the same configuration again.
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\n{runs.TABLE_START}\nold table\n{runs.TABLE_END}\nafter\n")
    subprocess.run([sys.executable, "runs.py", "table", "--runs-dir", str(tmp_path), "--commands", "--into",
                    str(readme)], cwd=ROOT, capture_output=True, text=True, check=True)
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{runs.TABLE_END}\nafter\n") and table in text
    line = next(line for line in text.splitlines() if line.startswith("cnn-a: python train_cnn.py"))
    argv = shlex.split(line.split(": ", 1)[1])[2:]
    assert "--lr" in argv and "--weight-decay" not in argv  # only what differs from the script's defaults
    again = dataclasses.asdict(options.parse_config("cnn", importlib.import_module("train_cnn").DEFAULTS, argv))
    assert {k: v for k, v in again.items() if k not in options.NOT_IN_COMMAND} == \
        {k: v for k, v in config.items() if k not in options.NOT_IN_COMMAND}
    (tmp_path / "plain.md").write_text("no markers")
    out = subprocess.run([sys.executable, "runs.py", "table", "--runs-dir", str(tmp_path), "--into",
                          str(tmp_path / "plain.md")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "plain.md has no" in out.stderr


@pytest.mark.parametrize("arch", ["alexnet", "resnet", "rexnet", "coatnet"])
def test_every_script_trains_on_a_folder_dataset(arch, rgb_dataset, tmp_path):
    run = train(arch, "--data", rgb_dataset, "--runs-dir", tmp_path, "--name", arch, "--epochs", 1,
                "--img-size", 32, *FAST)
    rows = metrics(run)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    spec = checkpoint.read_spec(checkpoint.load_checkpoint(run / "best.pt"))
    assert spec.arch == arch and spec.channels == 3 and spec.class_names == ["a", "b", "c", "d"]
    assert (run / "curves.png").stat().st_size > 1000


def test_scripts_run_from_the_command_line(dataset, tmp_path):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "train_cnn.py", "--data", str(dataset), "--runs-dir", str(tmp_path),
                          "--name", "cli", "--epochs", "1", "--img-size", "16", *FAST], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert [r["epoch"] for r in metrics(tmp_path / "cli")] == ["1"] and (tmp_path / "cli" / "best.pt").is_file()
    # the seconds from the process's start to its first training step: imports included, within the run's wall
    ready = json.loads((tmp_path / "cli" / "run.json").read_text())["startup_s"]
    assert 0.5 < ready < wall and f"(ready {ready:.1f} s after start)" in out.stdout
    helptext = subprocess.run([sys.executable, "train_coatnet.py", "--help"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    assert "--resume" in helptext and "(default: 224)" in helptext  # the script's own largest automatic image size


def test_an_older_runs_command_names_options_it_had_before_they_existed():
    defaults = importlib.import_module("train_cnn").DEFAULTS
    config = {**dataclasses.asdict(options.TrainConfig()), **defaults, "arch": "cnn", "data": "d", "name": "old"}
    assert runs.run_command(config, defaults) == "python train_cnn.py --data d --name old"
    # A script default that differs from the built-in one: a run saved before the option existed had the
    # built-in value (as --resume assumes), so its command must say so.
    del config["lr"]
    assert runs.run_command(config, defaults) == "python train_cnn.py --data d --name old --lr 0.001"


def test_resume_gives_the_same_metrics_as_one_go(dataset, tmp_path):
    common = ["--data", dataset, "--runs-dir", tmp_path, "--epochs", 2, "--img-size", 16, *FAST, *EXACT]
    one_go = train("cnn", *common, "--name", "one-go")
    parts = train("cnn", *common, "--name", "parts", "--stop-at-epoch", 1)
    assert len(metrics(parts)) == 1 and json.loads((parts / "run.json").read_text())["status"] == "paused"
    # The paused run's last.pt rewritten in version 1 of the checkpoint format: an older run still resumes.
    checkpoint.save_checkpoint(parts / "last.pt", to_version_1(checkpoint.load_checkpoint(parts / "last.pt")))
    assert torch.load(parts / "last.pt", weights_only=True)["version"] == 1
    train("cnn", "--resume", parts, "--no-progress")
    assert comparable(metrics(parts)) == comparable(metrics(one_go))
    a, b = (checkpoint.load_checkpoint(r / "last.pt")["model"] for r in (one_go, parts))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint.load_checkpoint(parts / "last.pt")["version"] == checkpoint.CHECKPOINT_VERSION


def test_ema_is_evaluated_saved_and_resumed_exactly(dataset, tmp_path):
    common = ["--data", dataset, "--runs-dir", tmp_path, "--epochs", 2, "--img-size", 16, "--ema", 0.9,
              "--translate", 2, "--erase", 0.5, *FAST, *EXACT]
    one_go = train("cnn", *common, "--name", "one-go")
    parts = train("cnn", *common, "--name", "parts", "--stop-at-epoch", 1)
    train("cnn", "--resume", parts, "--no-progress")
    assert comparable(metrics(parts)) == comparable(metrics(one_go))
    last = checkpoint.load_checkpoint(one_go / "last.pt")
    other = checkpoint.load_checkpoint(parts / "last.pt")
    for weights in (lambda c: c["model"], lambda c: c["training"]["train_model"]):
        assert all(torch.equal(weights(last)[k], weights(other)[k]) for k in weights(last))
    # "model" holds the average, which differs from the trained weights and is what predict.py loads
    assert not torch.equal(last["model"]["head.4.weight"], last["training"]["train_model"]["head.4.weight"])
    best = checkpoint.load_checkpoint(one_go / "best.pt")
    assert "training" not in best and "train_model" not in best and "optimizer" not in best
    model = checkpoint.model_from_checkpoint(last)
    assert torch.equal(model.state_dict()["head.4.weight"], last["model"]["head.4.weight"])


def test_ema_average_follows_the_weights():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = session.EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(4.0)
    before = ema.model[0].weight.clone()
    ema.update(step=100)  # past the ramp: decay 0.5
    assert torch.allclose(ema.model[0].weight, before + 0.5)
    assert torch.allclose(ema.model[1].running_mean, torch.full((2,), 2.0))
    model[1].num_batches_tracked.fill_(7)
    ema.update(step=0)  # the ramp: decay (1 + 0) / 10 = 0.1, nearly a copy
    assert torch.allclose(ema.model[0].weight, model[0].weight - 0.05)
    assert int(ema.model[1].num_batches_tracked) == 7
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_bad_recipe_values_are_refused(dataset, tmp_path):
    for flag, value in (("--erase", 1.5), ("--ema", 1.0), ("--translate", -1)):
        with pytest.raises(SystemExit, match=flag):
            train("cnn", "--data", dataset, "--runs-dir", tmp_path, flag, value, *FAST)


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(dataset, tmp_path, monkeypatch):
    common = ["--data", dataset, "--runs-dir", tmp_path, "--epochs", 2, "--img-size", 16, *EXACT, *FAST[:-2],
              "--batch-size", 8]
    one_go = train("cnn", *common, "--name", "one-go")

    real_prefetch = batches.prefetch

    def interrupt_after_two_batches(batches, device, depth=2):
        for i, batch in enumerate(real_prefetch(batches, device, depth)):
            if i == 2:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, in the middle of epoch 1
            yield batch

    monkeypatch.setattr(batches, "prefetch", interrupt_after_two_batches)  # where data.batches looks it up
    with pytest.raises(SystemExit) as stopped:
        train("cnn", *common, "--name", "interrupted")
    assert stopped.value.code == 130
    run = tmp_path / "interrupted"
    last = checkpoint.load_checkpoint(run / "last.pt")
    assert last["epoch"] == 0 and last["training"]["step"] == 3  # the step in flight when Ctrl-C came was finished
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(batches, "prefetch", real_prefetch)
    paused_time = json.loads((run / "run.json").read_text())["train_time"]
    train("cnn", "--resume", run, "--no-progress")
    assert comparable(metrics(run)) == comparable(metrics(one_go))
    # the training time is the epochs' own seconds, the interrupted epoch's first part counted once
    train_time = json.loads((run / "run.json").read_text())["train_time"]
    assert train_time == pytest.approx(sum(float(r["seconds"]) for r in metrics(run)), abs=1e-4)
    assert train_time > paused_time > 0


def test_raising_epochs_on_resume_continues_the_curve(dataset, tmp_path):
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "grow", "--epochs", 1,
                "--img-size", 16, *FAST)
    train("cnn", "--resume", run, "--epochs", 3, "--no-progress")
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 3
    assert checkpoint.load_checkpoint(run / "last.pt")["epoch"] == 3


def test_resume_refuses_changed_options_and_missing_runs(dataset, tmp_path):
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "r", "--epochs", 1,
                "--img-size", 16, *FAST)
    with pytest.raises(SystemExit, match="--lr cannot change"):
        train("cnn", "--resume", run, "--lr", 0.1)
    with pytest.raises(SystemExit, match="trained 'cnn', not 'resnet'"):
        train("resnet", "--resume", run)
    with pytest.raises(SystemExit, match="no run there"):
        train("cnn", "--resume", tmp_path / "nothing")
    with pytest.raises(SystemExit, match="already holds a run"):
        train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "r", *FAST)
    with pytest.raises(SystemExit, match="--data DIR is required"):
        train("cnn")


def test_a_refused_resume_leaves_the_skipped_images_list_as_it_was(tmp_path):
    comp = write_dataset(tmp_path / "comp", layout="folder", per_class=6, size=16, n_test=1)
    os.symlink(tmp_path / "nowhere.png", comp / "train" / "cat" / "zz_broken.png")
    run = train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", "s", "--epochs", 2,
                "--stop-at-epoch", 1, "--img-size", 16, "--skip-bad", *FAST)
    listed = (run / "skipped.txt").read_text()
    assert listed.count("\n") == 1 and "zz_broken.png\tbroken symbolic link" in listed
    os.symlink(tmp_path / "nowhere.png", comp / "train" / "dog" / "zz_broken.png")  # the data changed
    last = (run / "last.pt").read_bytes()
    with pytest.raises(SystemExit, match="changed since the run began"):
        train("cnn", "--resume", run, "--no-progress")
    assert (run / "skipped.txt").read_text() == listed and (run / "last.pt").read_bytes() == last
    train("cnn", "--resume", run, "--no-progress", "--allow-data-change")  # the session set up: recorded
    assert (run / "skipped.txt").read_text().count("zz_broken.png\tbroken symbolic link") == 2


def test_log_loss_trains_without_label_smoothing_unless_it_is_given(dataset, tmp_path):
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "ll", "--epochs", 2, "--stop-at-epoch", 1,
                "--metric", "log_loss", "--img-size", 16, *FAST)
    assert json.loads((run / "config.json").read_text())["label_smoothing"] == 0.0  # the value trained with
    train("cnn", "--resume", run, "--no-progress")  # resumes with it: no option changed
    assert json.loads((run / "config.json").read_text())["label_smoothing"] == 0.0 and len(metrics(run)) == 2
    log_loss = options.make_config("cnn", {}, data="d", metric="log_loss")
    chosen, notes = trainer.settle_options(log_loss, trainer.given_options("cnn", {}, ["--data", "d"]))
    assert chosen.label_smoothing == 0.0 and len(notes) == 1 and "without label smoothing" in notes[0]
    given = trainer.given_options("cnn", {}, ["--data", "d", "--label-smoothing", "0.1"])
    assert given == {"data", "label_smoothing"}
    assert trainer.settle_options(log_loss, given) == (log_loss, ())  # a flag given always wins
    accuracy = options.make_config("cnn", {}, data="d")
    assert trainer.settle_options(accuracy, set()) == (accuracy, ())


def test_sigkill_then_resume_continues_from_the_last_epoch(dataset, tmp_path):
    cmd = [sys.executable, "train_cnn.py", "--data", str(dataset), "--runs-dir", str(tmp_path), "--name", "killed",
           "--epochs", "50", "--img-size", "16", *FAST[:-2], "--batch-size", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "killed"
    deadline = time.time() + 120
    while not (run / "metrics.csv").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = checkpoint.load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= done < 50
    assert "stopped (resumable)" in runs.runs_table(tmp_path)
    train("cnn", "--resume", run, "--epochs", done + 1, "--no-progress")
    assert [int(r["epoch"]) for r in metrics(run)] == list(range(1, done + 2))


def test_diverging_loss_stops_with_a_clear_message(dataset, tmp_path):
    with pytest.raises(SystemExit, match="training loss became nan"):
        train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "nan", "--epochs", 2,
              "--img-size", 16, "--lr", 1e30, "--warmup-epochs", 0, *FAST)
    assert json.loads((tmp_path / "nan" / "run.json").read_text())["status"] == "diverged"


def test_precision_auto_skips_the_trial_of_a_short_run_and_measures_a_long_one(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # nothing remembered yet
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "auto", "--epochs", 1,
                "--img-size", 16, "--no-progress")
    info = json.loads((run / "run.json").read_text())
    # A few steps in all: the trial would take longer than the run, so the plain format trains
    assert info["mode"] == "fp32" and info["mode_choice"]["how"].startswith("not measured")
    assert np.isfinite(float(metrics(run)[0]["train_loss"]))
    model, rt = build_model("cnn", 3, 1, 16), runtime.Runtime(torch.device("cpu"))
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))
    chosen, how = compute.choose_format("auto", "auto", model, x, y, rt, arch="cnn", run_steps=10**6)
    assert chosen in compute.candidate_formats("auto", "auto", torch.device("cpu")) and how["how"] == "measured"
    assert str(chosen) in how["ms_per_step"] and how["step_s"] > 0
    again, how_again = compute.choose_format("auto", "auto", model, x, y, rt, arch="cnn", run_steps=10**6)
    # A clear winner is remembered; a close call is measured again (and averaged with the first measurement)
    assert how_again["how"] == ("remembered" if how["sure"] else "measured")
    assert how_again.get("measurements", 1) == (1 if how["sure"] else 2)


def test_measure_modes_times_every_mode_and_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = build_model("cnn", 3, 1, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = compute.candidate_formats("auto", "auto", torch.device("cpu"))
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))
    times = compute.measure_formats(model, x, y, modes, torch.device("cpu"), warmup=1, min_steps=2, max_steps=4,
                                  budget_s=0.0)
    assert set(times) == set(modes) and all(0 < t < 10 for t in times.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_steps_too_slow_for_the_budget_are_compared_on_part_of_the_batch_and_scaled_back(monkeypatch):
    # A slow machine at a large size: one step of the whole batch takes most of the trial's budget, so the
    # formats take their turns on a cut batch (at least MIN_TRIAL_BATCH images) and the times are scaled back up
    modes = compute.candidate_formats("fp32", "auto", torch.device("cpu"))
    seen = []

    def fake_step(mode, trial, device):  # 10 ms an image, whatever the format
        seen.append(len(trial[3]))
        return 0.01 * len(trial[3])
    monkeypatch.setattr(compute, "_trial_step", fake_step)
    x, y = torch.randn(128, 1, 16, 16), torch.randint(0, 3, (128,))
    times = compute.measure_formats(build_model("cnn", 3, 1, 16), x, y, modes, torch.device("cpu"), warmup=1,
                                    min_steps=2, max_steps=3, budget_s=3.0)
    assert seen[0] == 128 and set(seen[1:]) == {int(128 * 3.0 / (1.28 * len(modes) * 3))}
    assert all(t == pytest.approx(1.28) for t in times.values())  # the whole batch's step time
    # steps that fit: the whole batch all along
    seen.clear()
    compute.measure_formats(build_model("cnn", 3, 1, 16), x, y, modes, torch.device("cpu"), warmup=1, min_steps=2,
                            max_steps=3, budget_s=60.0)
    assert set(seen) == {128}


def test_curves_are_drawn_beside_training_and_a_failed_drawing_is_a_warning(tmp_path, caplog):
    runs.write_metrics(tmp_path / "metrics.csv", [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": 1.2 / e, "val_acc": 0.4, "lr": 1e-3,
         "seconds": 1.0, "images_per_s": 10.0, "val_score": 0.4} for e in (1, 2, 3)])
    drawer = runs.CurvesDrawer(tmp_path)
    for _ in range(3):
        drawer.request()  # returns at once; requests it had no time for are merged into the next drawing
    drawer.close()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    broken = runs.CurvesDrawer(tmp_path / "missing")
    broken.request()
    broken.close()
    assert not (tmp_path / "missing").exists() and "curves.png not drawn" in caplog.text
    idle = runs.CurvesDrawer(tmp_path)
    idle.close()  # never asked: nothing to wait for


def test_a_modes_step_time_is_the_mean_without_the_slowest_step():
    # a bimodal mode (half its steps slow) must not look as fast as its fast half, as a median would make it
    assert compute.step_time([1.0, 1.0, 1.0, 1.6, 1.6, 1.6]) == pytest.approx(1.24)
    assert compute.step_time([1.0, 1.1, 9.0]) == pytest.approx(1.05)  # one pause of the machine is left out
    assert compute.step_time([1.0, 3.0]) == pytest.approx(2.0)


def test_pick_mode_takes_the_fastest_but_prefers_fp32_when_within_5_percent():
    fp32, fp32_cl, bf16, bf16_cl = (compute.ComputeFormat(p, cl) for p in ("fp32", "bf16") for cl in (False, True))
    # bf16+channels_last clearly fastest (the CNN's case): it is taken
    assert compute.pick_format({fp32: 0.43, fp32_cl: 0.36, bf16: 0.22, bf16_cl: 0.13}) == bf16_cl
    # bf16+channels_last 3% faster than fp32+channels_last: full precision wins, the faster of the fp32 modes
    assert compute.pick_format({fp32: 1.30, fp32_cl: 1.03, bf16: 1.10, bf16_cl: 1.00}) == fp32_cl
    # 6% faster: outside the tolerance, bf16 is taken
    assert compute.pick_format({fp32: 1.30, fp32_cl: 1.06, bf16: 1.10, bf16_cl: 1.00}) == bf16_cl
    assert compute.pick_format({fp32: 1.30, fp32_cl: 1.06, bf16: 1.10, bf16_cl: 1.00}, tolerance=0.1) == fp32_cl
    # fp32 fastest anyway
    assert compute.pick_format({fp32: 1.2, fp32_cl: 0.9, bf16: 1.4, bf16_cl: 1.3}) == fp32_cl
    # a fixed precision (only fp16 candidates) still gets the fastest of them
    fp16, fp16_cl = compute.candidate_formats("fp16", "auto", torch.device("cpu"))
    assert compute.pick_format({fp16: 1.0, fp16_cl: 0.8}) == fp16_cl


def test_precision_auto_measures_bf16_only_where_it_has_fast_kernels(monkeypatch):
    # A CPU without bf16 kernels (AVX2 alone) runs bf16 many times slower than fp32: auto does not even try it,
    # a GPU without native bf16 (before Ampere) tries fp16 instead; bf16 asked for by name is used anyway.
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(compute, "fast_bf16", lambda device: False)
    assert [str(m) for m in compute.candidate_formats("auto", "auto", cpu)] == ["fp32", "fp32+channels_last"]
    assert [str(m) for m in compute.candidate_formats("auto", "on", cuda)] == ["fp32+channels_last",
                                                                              "fp16+channels_last"]
    assert compute.candidate_formats("bf16", "off", cpu) == [compute.ComputeFormat("bf16")]
    monkeypatch.setattr(compute, "fast_bf16", lambda device: True)
    assert [str(m) for m in compute.candidate_formats("auto", "auto", cpu)] == [
        "fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    assert [str(m) for m in compute.candidate_formats("auto", "off", cuda)] == ["fp32", "bf16"]


@pytest.mark.skipif(not shutil.which(os.environ.get("CXX", "g++")), reason="torch.compile on the CPU needs g++ "
                    "($CXX); .ci/run installs it")
def test_compile_trains_the_same_model_and_saves_plain_weights(dataset, tmp_path, monkeypatch):
    import torch._inductor.config
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # dropout draws as eager does
    common = ["--data", dataset, "--runs-dir", tmp_path, "--epochs", 1, "--img-size", 16, *FAST]
    eager = train("cnn", *common, "--name", "eager")
    compiled = train("cnn", *common, "--name", "compiled", "--compile")
    a, b = (checkpoint.load_checkpoint(r / "last.pt")["model"] for r in (eager, compiled))
    assert list(a) == list(b)  # no "_orig_mod." prefix: predict.py and --init read it as any other run
    # the same steps on the same batches and dropout masks: only the rounding of fused kernels differs
    # (Adam's update of a weight whose gradient is ~0 can flip sign on a rounding difference: compare norms)
    # Vectors (biases, BatchNorm's shifts) start at 0 and stay small, so the same rounding is a larger share of
    # them: on an AVX2-only CPU they drifted up to 0.4% of their norm in an epoch, the weight matrices 0.03%.
    drift = {k: float(torch.linalg.vector_norm(a[k].float() - b[k].float()) / torch.linalg.vector_norm(a[k].float()))
             for k in a if a[k].is_floating_point() and a[k].any()}
    assert all(v <= (1e-3 if a[k].ndim > 1 else 1e-2) for k, v in drift.items()), drift
    (ea,), (co,) = metrics(eager), metrics(compiled)
    for column in ("train_loss", "val_loss"):
        assert abs(float(ea[column]) - float(co[column])) < 1e-4, column
    # an image whose two top logits are within rounding of each other may flip: at most one of 48 / 6
    assert abs(float(ea["train_acc"]) - float(co["train_acc"])) <= 1 / 48 + 1e-9
    assert abs(float(ea["val_acc"]) - float(co["val_acc"])) <= 1 / 6 + 1e-9
    # compiling is a speed option: it may be switched off when resuming
    train("cnn", "--resume", compiled, "--epochs", 2, "--no-compile", "--no-progress")
    assert len(metrics(compiled)) == 2


def test_compile_without_a_cpp_compiler_says_so(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match=r"torch.compile on the CPU needs a C\+\+ compiler.*or train without --compile"):
        train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--epochs", 1, "--img-size", 16, "--compile", *FAST)


def test_init_replaces_the_head_when_classes_differ(dataset, tmp_path):
    source = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "src", "--epochs", 1,
                   "--img-size", 16, *FAST)
    other = write_dataset(tmp_path / "two", classes=("x", "y"), per_class=10, size=16)
    run = train("cnn", "--data", other, "--runs-dir", tmp_path, "--name", "dst", "--epochs", 1, "--img-size", 16,
                "--init", source / "best.pt", "--lr", 1e-12, "--weight-decay", 0, *FAST)
    src, dst = (checkpoint.load_checkpoint(r / "best.pt")["model"] for r in (source, run))
    shared = [k for k in src if src[k].shape == dst[k].shape and "num_batches" not in k and "running" not in k]
    replaced = [k for k in src if src[k].shape != dst[k].shape]
    assert replaced and shared
    assert all(torch.allclose(src[k], dst[k], atol=1e-6) for k in shared)  # lr ~ 0: the copied weights stay


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"format": checkpoint.CHECKPOINT_FORMAT, "epoch": 1})

    def crash(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, {"format": checkpoint.CHECKPOINT_FORMAT, "epoch": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_schedule_warms_up_then_decays_to_zero():
    schedule = session.LRSchedule(lr=1.0, epochs=10, steps_per_epoch=200, warmup_epochs=1)
    lrs = [schedule.at(i) for i in range(2000)]
    assert lrs[0] == pytest.approx(1 / 200) and lrs[199] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[199:], lrs[200:])) and lrs[-1] < 1e-3
    # Short epochs: the warm-up takes at least MIN_WARMUP_STEPS steps, and never more than a quarter of the run
    schedule = session.LRSchedule(lr=1.0, epochs=20, steps_per_epoch=10, warmup_epochs=1)
    lrs = [schedule.at(i) for i in range(200)]
    assert lrs[49] == pytest.approx(1.0) and lrs[48] < 1.0 and session.warmup_steps(1, 10) == session.MIN_WARMUP_STEPS
    assert session.warmup_steps(0, 10) == 0 and session.warmup_steps(2, 400) == 800
    schedule = session.LRSchedule(lr=1.0, epochs=1, steps_per_epoch=10, warmup_epochs=1)
    lrs = [schedule.at(i) for i in range(10)]
    assert lrs[1] == pytest.approx(1.0) and lrs[-1] < 0.05  # a one-epoch run warms up briefly, then decays


def test_torchrun_two_processes(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "train_cnn.py", "--data", str(dataset), "--runs-dir", str(tmp_path), "--name", "ddp",
                          "--epochs", "2", "--img-size", "16", *FAST], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "ddp"
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # Only rank 0 writes the run's files, and only rank 0 prints progress (what is tested here is the log
    # itself: one line per epoch, not one per process).
    assert out.stdout.count("epoch 2/2") == 1
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # Both processes saw every validation image once between them: accuracy is a multiple of 1/6.
    assert float(rows[-1]["val_acc"]) * 6 == pytest.approx(round(float(rows[-1]["val_acc"]) * 6), abs=1e-4)


def test_bookkeeping_never_breaks_on_a_foreign_or_damaged_run_json(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "run.json").write_text('{"note": "somebody else\'s file"}')
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "run.json").write_text('{"name": "truncated", "arch": "cnn", "sta')
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "run.json").write_text('["a", "list"]')
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.json").write_text('{"name": "mine", "st')  # our own, damaged (e.g. a full disk earlier)
    runs.update_run_info(mine, name="mine", arch="cnn", epochs=2, epochs_done=1, batch_size=8, img_size=16,
                         status="paused")
    assert json.loads((mine / "run.json").read_text())["status"] == "paused"
    assert runs.read_run_info(tmp_path / "foreign") is None and runs.read_run_info(tmp_path / "truncated") is None
    table = (tmp_path / "runs.md").read_text()
    assert "| mine | cnn | 1/2 | 8 | 16 |" in table and "paused" in table
    for name in ("foreign", "truncated", "listed"):
        assert f"| {name} |" in table
    assert table.count("unreadable run.json") == 3
    assert runs.runs_table(tmp_path, commands=True).count("(no readable config.json)") == 1  # mine has none


def test_the_measured_format_is_remembered_per_model_shape_and_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(compute, "CLOSE", -1.0)  # every lead counts as clear: remembered at once
    rt = runtime.Runtime(torch.device("cpu"))
    model = build_model("cnn", 3, 1, 16)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))
    first, how = compute.choose_format("auto", "auto", model, x, y, rt, arch="cnn")
    assert how["how"] == "measured" and how["seconds"] <= 1.5 * compute.TRIAL_BUDGET_S  # warm-up included
    again, how = compute.choose_format("auto", "auto", model, x, y, rt, arch="cnn")
    assert (again, how["how"]) == (first, "remembered")
    memory = json.loads(compute.format_memory_path().read_text())
    assert list(memory) == [compute.format_key("cnn", x, compute.candidate_formats("auto", "auto", rt.device),
                                               rt.device)]
    # another batch shape, or formats the flags restrict, are measured anew; fixed flags measure nothing
    _, how = compute.choose_format("auto", "auto", model, x[:4], y[:4], rt, arch="cnn")
    assert how["how"] == "measured"
    fixed, how = compute.choose_format("bf16", "on", model, x, y, rt, arch="cnn")
    assert how == {"how": "fixed by flags"} and fixed == compute.ComputeFormat("bf16", True)


def test_deterministic_mode_is_set_once_at_start():
    try:
        runtime.setup_runtime("cpu", deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_resident_images_give_the_same_batches(dataset):
    pixels = np.arange(20 * 4, dtype=np.uint8).reshape(20, 1, 2, 2)
    labels = np.arange(20) % 3
    assert data.resident(pixels, torch.device("cpu")) is pixels  # on the CPU the memory-mapped array serves
    kept = torch.from_numpy(pixels.copy())  # what `resident` makes on a GPU, here in host memory
    for (a, ya), (b, yb) in zip(data.batches(pixels, labels, np.arange(20), 6, torch.device("cpu"), shuffle=True),
                                data.batches(kept, labels, np.arange(20), 6, torch.device("cpu"), shuffle=True)):
        assert torch.equal(a, b) and torch.equal(ya, yb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_keeps_the_images_there_and_resumes(dataset, tmp_path):
    common = ["--data", dataset, "--runs-dir", tmp_path, "--epochs", 2, "--img-size", 16, "--device", "cuda",
              "--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--deterministic"]
    one_go = train("cnn", *common, "--name", "one-go")
    parts = train("cnn", *common, "--name", "parts", "--stop-at-epoch", 1)
    train("cnn", "--resume", parts, "--no-progress")
    assert comparable(metrics(parts)) == comparable(metrics(one_go))
    assert float(metrics(one_go)[-1]["val_acc"]) >= 0.8


def test_device_sums_count_exactly_and_a_peek_does_not_lag_on_the_cpu():
    sums = trainer.DeviceSums(torch.device("cpu"), loss_sum=1.5, correct=2, seen=4)  # an interrupted part
    for loss, correct, n in [(0.5, 3, 4), (0.25, 1, 2)]:
        sums.add(torch.tensor(loss * n), torch.tensor(correct), n)
        assert list(sums.peek()) == pytest.approx(sums.total())  # on the CPU a peek is the current sums
    assert sums.total() == pytest.approx([1.5 + 2.0 + 0.5, 2 + 3 + 1, 4 + 4 + 2])
    assert trainer.DeviceSums(torch.device("cpu")).total() == [0.0, 0.0, 0.0]


def test_cudnn_autotuning_never_runs_in_evaluation_or_the_format_trial(dataset, tmp_path, monkeypatch):
    # On a GPU --cudnn-benchmark tunes the training step's one set of shapes; evaluation's batches (and its
    # last, smaller one) and the trial copies of the format measurement are never tuned. The flag is global
    # torch state, so the CPU can check where it is set.
    config = options.make_config("cnn", {}, data=str(dataset), img_size=16, batch_size=16, precision="fp32",
                                 channels_last="off", runs_dir=str(tmp_path), name="flags", progress=False)
    s, _, _ = session.prepare_session(config, runtime.Runtime(torch.device("cpu")))
    seen = {"trial": set(), "train": set(), "eval": set()}
    where = ["trial"]
    real_forward = torch.nn.Conv2d.forward
    monkeypatch.setattr(torch.nn.Conv2d, "forward",
                        lambda self, x: seen[where[0]].add(torch.backends.cudnn.benchmark) or real_forward(self, x))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # as setup_runtime sets it for --cudnn-benchmark
    x, y = next(data.batches(s.data.pixels, s.data.labels, s.data.train_idx, 16, torch.device("cpu")))
    compute.measure_formats(s.raw_model, s.preprocess(x), y, compute.candidate_formats("auto", "auto", s.rt.device),
                            s.rt.device, warmup=1, min_steps=1, max_steps=1)
    where[0] = "train"
    trainer.train_one_epoch(s, 1, trainer.StopRequest(), stop_step=2)
    where[0] = "eval"
    result = trainer.evaluate(s, s.data.val_idx)
    assert seen == {"trial": {False}, "train": {True}, "eval": {False}} and 0 <= result["acc"] <= 1
    assert torch.backends.cudnn.benchmark  # restored after each
    assert options.make_config("cnn", {}, data=str(dataset)).cudnn_benchmark is False  # off unless asked for


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cudnn_autotuning_is_off_unless_asked_for_and_never_when_deterministic():
    try:
        assert runtime.setup_runtime("cuda").device.type == "cuda" and not torch.backends.cudnn.benchmark
        runtime.setup_runtime("cuda", cudnn_benchmark=True)
        assert torch.backends.cudnn.benchmark
        runtime.setup_runtime("cuda", deterministic=True, cudnn_benchmark=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        runtime.setup_runtime("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_steps_do_not_wait_for_the_gpu(dataset, tmp_path, monkeypatch):
    # The host queues step after step; only the end of an epoch reads its sums back. torch's sync debug mode
    # warns at each synchronising call: as many in 3 steps as in 12 means none of them is per step.
    import warnings
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = options.make_config("cnn", {}, data=str(dataset), img_size=16, batch_size=4, runs_dir=str(tmp_path),
                                 name="syncs", progress=False, device="cuda", precision="bf16", channels_last="on",
                                 translate=2, rotate=10.0)
    s, _, _ = session.prepare_session(config, runtime.setup_runtime("cuda"))
    stop = trainer.StopRequest()
    trainer.train_one_epoch(s, 1, stop, stop_step=3)  # warm-up: kernels chosen, memory allocated
    counts = {}
    for epoch, steps in ((2, 3), (3, 12)):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                result = trainer.train_one_epoch(s, epoch, stop, stop_step=steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[steps] = sum("synchroniz" in str(w.message) for w in caught)
        assert result.seen == 4 * steps
    assert isinstance(s.data.pixels, torch.Tensor) and s.data.pixels.is_cuda  # the resident path was measured
    assert counts[3] >= 1, counts  # the epoch's one read-back is seen: the check can see a wait
    assert counts[3] == counts[12], counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compile_on_a_gpu_replays_cuda_graphs_and_resumes(dataset, tmp_path):
    common = ["--data", dataset, "--runs-dir", tmp_path, "--img-size", 16, "--device", "cuda", *FAST]
    run = train("cnn", *common, "--epochs", 2, "--stop-at-epoch", 1, "--name", "graphs", "--compile")
    train("cnn", "--resume", run, "--no-progress")  # resumed with CUDA graphs again (--compile is kept)
    rows = metrics(run)
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["val_acc"]) >= 0.8
    assert "_orig_mod." not in "".join(checkpoint.load_checkpoint(run / "last.pt")["model"])


def test_relative_file_names_are_those_of_relpath(tmp_path):
    # the fingerprint of a dataset and the names in val_predictions.csv: a string cut, checked against relpath
    for root, path in [("data/comp", Path("data/comp/train/a/1.png")), ("data/comp/", Path("data/comp/train/1.png")),
                       ("./data/comp", Path("data/comp/train/1.png")), (".", Path("train/1.png")),
                       ("data/comp", Path("data/other/1.png")), ("data/co", Path("data/comp/1.png")),
                       (str(tmp_path), tmp_path / "train" / "x y.png")]:
        assert session.relative_name(path, root) == Path(os.path.relpath(path, root)).as_posix(), (root, path)
