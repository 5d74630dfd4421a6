"""Faults a careful user meets, each reproduced on tiny generated data: a read-only dataset, careless output
paths, a diverging model, a stale cache, two runs in one folder, a full disk, and smaller ones. None may
yield a wrong submission or lose work."""
from __future__ import annotations

import csv
import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import checkpoint
import data
import fileio
import predict
import runs
import session
import trainer
from config import make_config
from conftest import ROOT, read_only, small_disk, write_dataset
from errors import DataError, OptionError

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16"]


def train(arch: str, *args) -> Path:
    return trainer.main(arch, [str(a) for a in args], **importlib.import_module(f"train_{arch}").DEFAULTS)


def train_error(arch: str, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        train(arch, *args)
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: "), exc.value.code
    return exc.value.code


def predict_error(*args) -> str:
    with pytest.raises(SystemExit) as exc:
        predict.main([str(a) for a in args] + ["--no-progress"])
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: "), exc.value.code
    return exc.value.code


def snapshot(folder: Path) -> dict:
    """Every file below `folder` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=20, size=16)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    runs_dir = tmp_path_factory.mktemp("runs")
    return train("cnn", "--data", dataset, "--runs-dir", runs_dir, "--name", "cnn", "--epochs", 1, "--img-size", 16,
                 *FAST)


# ----------------------------------------------------------------------------------------------
# 1. A read-only dataset folder
# ----------------------------------------------------------------------------------------------

def test_a_read_only_dataset_trains_and_predicts_with_the_cache_in_the_user_cache(tmp_path, monkeypatch):
    comp = write_dataset(tmp_path / "comp", layout="folder", per_class=10, size=16, channels=3, ext=".jpg")
    monkeypatch.delenv("IMGCOMP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = snapshot(comp)
    with read_only(comp, monkeypatch) as how:
        print("read-only dataset:", how)
        run = train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", "ro", "--epochs", 1,
                    "--img-size", 16, *FAST)
        predict.main([str(run), "--data", str(comp), "--out", str(tmp_path / "sub.csv"), "--no-progress"])
    assert snapshot(comp) == before and not (comp / ".cache").exists()
    # the training images and the test images are each cached once, in the user's cache folder
    assert len(list((tmp_path / "xdg" / "imgcomp").glob("*.npy"))) == 2
    assert len((tmp_path / "sub.csv").read_text().splitlines()) == 1 + 12


# ----------------------------------------------------------------------------------------------
# 2. --out and --probs never destroy an input
# ----------------------------------------------------------------------------------------------

def test_predict_refuses_outputs_that_are_its_inputs(dataset, trained, tmp_path):
    before = snapshot(dataset), (trained / "best.pt").read_bytes()
    solution = tmp_path / "solution.csv"
    shutil.copy(dataset / "solution.csv", solution)
    cases = {
        "a checkpoint": ["--out", trained / "best.pt"],
        "the training labels": ["--out", dataset / "train.csv"],
        "the sample": ["--out", dataset / "sample_submission.csv"],
        "inside the dataset's image folder": ["--out", dataset / "test" / "t0.png"],
        "--solution": ["--out", solution, "--solution", solution],
        "same file": ["--out", tmp_path / "s.csv", "--probs", tmp_path / "s.csv"],
        "is a folder": ["--out", tmp_path],
    }
    for expected, flags in cases.items():
        message = predict_error(trained, "--data", dataset, *flags)
        assert expected in message, (flags, message)
    assert (snapshot(dataset), (trained / "best.pt").read_bytes()) == before
    assert solution.read_bytes() == (dataset / "solution.csv").read_bytes()
    assert "test_acc" not in json.loads((trained / "run.json").read_text())  # nothing scored against itself


# ----------------------------------------------------------------------------------------------
# 3. A diverged model is neither saved nor used; bad numbers in flags
# ----------------------------------------------------------------------------------------------

def test_a_huge_learning_rate_stops_the_run_and_keeps_no_broken_weights(dataset, tmp_path):
    message = train_error("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "huge", "--epochs", 3,
                          "--img-size", 16, "--lr", 1e6, "--warmup-epochs", 0, *FAST)
    assert "became" in message and ("nan" in message.lower() or "inf" in message)
    run = tmp_path / "huge"
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    for name in ("best.pt", "last.pt"):  # whatever was kept is from a finite epoch
        if (run / name).is_file():
            assert not trainer.non_finite(checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(run / name)))


def test_predict_refuses_non_finite_weights_and_probabilities(dataset, trained, tmp_path):
    ckpt = checkpoint.load_checkpoint(trained / "best.pt")
    head = [k for k in ckpt["model"] if k.endswith("weight")][-1]
    nan = {**ckpt, "model": {**ckpt["model"], head: torch.full_like(ckpt["model"][head], float("nan"))}}
    checkpoint.save_checkpoint(tmp_path / "nan.pt", nan)
    assert "NaN or infinite weights" in predict_error(tmp_path / "nan.pt", "--data", dataset, "--out", tmp_path / "a.csv")
    # finite weights whose logits overflow: the probabilities are NaN
    huge = {**ckpt, "model": {**ckpt["model"], head: torch.full_like(ckpt["model"][head], 3e38)}}
    checkpoint.save_checkpoint(tmp_path / "huge.pt", huge)
    assert "NaN or infinite probabilities" in predict_error(tmp_path / "huge.pt", "--data", dataset,
                                                             "--out", tmp_path / "b.csv")
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--img-size", "3"),
                                        ("--label-smoothing", "2"), ("--seed", "-1"), ("--weight-decay", "-0.1"),
                                        ("--grad-clip", "-1"), ("--stop-at-epoch", "-1"), ("--momentum", "1.5")])
def test_bad_numeric_flags_get_a_clear_error(dataset, tmp_path, flag, value):
    message = train_error("cnn", "--data", dataset, "--runs-dir", tmp_path, *FAST, flag, value)
    assert flag in message
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_an_image_size_the_model_cannot_take_is_named(dataset, tmp_path):
    assert "--img-size" in train_error("coatnet", "--data", dataset, "--runs-dir", tmp_path, "--img-size", 16, *FAST)
    too_deep = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.MaxPool2d(4), torch.nn.MaxPool2d(4))
    config = make_config("cnn", {}, data=str(dataset), img_size=8)
    with pytest.raises(OptionError, match="--img-size 8 is too small for cnn"):
        session.check_input_size(too_deep, config, 1)


# ----------------------------------------------------------------------------------------------
# 4. A rewritten image with its old size and time is decoded again
# ----------------------------------------------------------------------------------------------

def test_the_cache_notices_content_rewritten_with_the_old_size_and_time(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = []
    for i in range(3):  # BMP: the same size for any content of the same dimensions
        files.append(folder / f"{i}.bmp")
        cv2.imwrite(str(files[-1]), np.full((8, 8), 10 * i, np.uint8))
    first = data.load_images(files, 8, cache_dir=tmp_path / "cache", progress=False)
    assert int(first.pixels[1, 0, 0, 0]) == 10
    st = files[1].stat()
    time.sleep(0.01)
    cv2.imwrite(str(files[1]), np.full((8, 8), 200, np.uint8))  # as cp -p, tar or unzip leave a file:
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))   # new content, old size and modification time
    assert files[1].stat().st_size == st.st_size and files[1].stat().st_mtime_ns == st.st_mtime_ns
    again = data.load_images(files, 8, cache_dir=tmp_path / "cache", progress=False)
    assert int(again.pixels[1, 0, 0, 0]) == 200 and int(again.pixels[2, 0, 0, 0]) == 20
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # the outdated version was removed


# ----------------------------------------------------------------------------------------------
# 5. Two trainings with the same --name
# ----------------------------------------------------------------------------------------------

def test_a_second_training_in_a_running_runs_folder_is_refused(dataset, tmp_path):
    cmd = [sys.executable, "train_cnn.py", "--data", str(dataset), "--runs-dir", str(tmp_path), "--name", "busy",
           "--epochs", "50", "--img-size", "16", *FAST[:-2], "--batch-size", "4"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = tmp_path / "busy" / "config.json"  # written once the first run has set up
        deadline = time.time() + 120
        while not started.is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        message = train_error("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "busy", "--epochs", 1,
                              "--img-size", 16, *FAST)
        assert f"in use by another training (pid {first.pid}" in message
    finally:
        first.kill()
        first.wait()
    # the first run's files are its own: nothing of the refused one was written
    assert json.loads(started.read_text())["epochs"] == 50
    assert json.loads((tmp_path / "busy" / ".lock").read_text())["pid"] == first.pid


# ----------------------------------------------------------------------------------------------
# 6. A full disk
# ----------------------------------------------------------------------------------------------

def test_a_full_disk_while_caching_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = [folder / f"{i}.png" for i in range(64)]
    for f in files:
        cv2.imwrite(str(f), np.full((8, 8, 3), 100, np.uint8))
    with small_disk(tmp_path / "disk", "256k") as disk:
        if disk is None:  # no mount here: the file system says ENOSPC as a full one would
            disk = tmp_path / "disk"

            def full(fd, offset, length):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(os, "posix_fallocate", full)
        with pytest.raises(DataError, match=r"no space left on the device .* for the cache .*needs \d"):
            data.load_images(files, 64, cache_dir=disk, progress=False)  # 64 x 3 x 64 x 64 bytes = 768 KiB
        assert list(disk.iterdir()) == []  # no temporary files left


def test_a_full_disk_while_saving_says_so_and_keeps_the_previous_file(tmp_path, monkeypatch):
    with small_disk(tmp_path / "disk", "1m") as disk:
        if disk is None:
            disk = tmp_path / "disk"
        checkpoint.save_checkpoint(disk / "last.pt", {"format": checkpoint.CHECKPOINT_FORMAT, "epoch": 1})
        big = {"format": checkpoint.CHECKPOINT_FORMAT, "epoch": 2, "weights": torch.zeros(2**20)}  # 4 MiB
        if not os.path.ismount(disk):
            real_save = torch.save

            def full(obj, f):
                real_save(obj, f)
                raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 16001280 vs 16001184")
            monkeypatch.setattr(torch, "save", full)
        with pytest.raises(fileio.WriteError) as err:
            checkpoint.save_checkpoint(disk / "last.pt", big)
        message = str(err.value)
        assert "no space left on the device" in message and "the previous last.pt is intact" in message
        monkeypatch.undo()
        assert torch.load(disk / "last.pt", weights_only=True)["epoch"] == 1
        assert [p.name for p in disk.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------------------------
# 7. Smaller faults
# ----------------------------------------------------------------------------------------------

def test_a_broken_symlink_is_a_bad_image(tmp_path):
    comp = write_dataset(tmp_path / "comp", layout="folder", per_class=10, size=16)
    os.symlink(tmp_path / "nowhere.png", comp / "train" / "cat" / "zz_broken.png")
    message = train_error("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", "a", "--epochs", 1,
                          "--img-size", 16, *FAST)
    assert "zz_broken.png" in message and "broken symbolic link" in message and "--skip-bad" in message
    run = train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", "b", "--epochs", 1,
                "--img-size", 16, "--skip-bad", *FAST)
    assert "zz_broken.png\tbroken symbolic link" in (run / "skipped.txt").read_text()


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", " padded "])
def test_a_run_name_must_be_one_folder_inside_the_runs_folder(dataset, tmp_path, name):
    runs_dir = tmp_path / "runs"
    assert "--name" in train_error("cnn", "--data", dataset, "--runs-dir", runs_dir, "--name", name, *FAST)
    assert list(tmp_path.iterdir()) == []


def test_a_run_killed_in_its_first_epoch_is_listed_as_not_resumable(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "run.json").write_text(json.dumps({"name": "early", "arch": "cnn", "status": "running",
                                                             "pid": gone.pid, "host": os.uname().nodename}))
    table = runs.runs_table(tmp_path)
    assert "stopped in its first epoch (train it again)" in table and "resumable" not in table
    assert "no run there" in train_error("cnn", "--resume", tmp_path / "early")


def test_resuming_on_changed_data_is_refused_unless_allowed(tmp_path):
    comp = write_dataset(tmp_path / "comp", layout="csv", per_class=10, size=16)
    run = train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", "r", "--epochs", 2,
                "--stop-at-epoch", 1, "--img-size", 16, *FAST)
    with open(comp / "train.csv", "a", newline="") as f:  # more images of the same classes, in place
        for i in range(10, 14):
            shutil.copy(comp / "train" / "0_0.png", comp / "train" / f"0_{i}.png")
            csv.writer(f).writerow([f"0_{i}", "cat"])
    assert "--allow-data-change" in train_error("cnn", "--resume", run, "--no-progress")
    train("cnn", "--resume", run, "--no-progress", "--allow-data-change")
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_ids_with_spaces_around_them_find_their_files(tmp_path):
    (tmp_path / "test").mkdir()
    for name in (" lead.png", "trail .png", "plain.png"):
        cv2.imwrite(str(tmp_path / "test" / name), np.zeros((4, 4), np.uint8))
    index = data.index_test_images(tmp_path)
    found = data.match_ids([" lead", "trail ", " plain "], [2, 3, 4], index, tmp_path / "sample_submission.csv")
    assert [p.name for p in found] == [" lead.png", "trail .png", "plain.png"]


def test_a_read_only_runs_folder_is_a_clear_error(dataset, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with read_only(runs_dir, monkeypatch) as how:
        if how.startswith("simulated"):
            def read_only_open(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system")
            monkeypatch.setattr(os, "open", read_only_open)
        message = train_error("cnn", "--data", dataset, "--runs-dir", runs_dir, "--name", "x", *FAST)
    assert "cannot write in the run folder" in message and "--runs-dir" in message
