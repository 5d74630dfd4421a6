"""Training's faults of issue 26, each on tiny generated data: every flag's value checked where it is parsed, a
run resumed after its dataset moved or from another working folder, data whose channels changed, --folds larger
than the data, batches of one image, --patience without validation images, --pretrained on the CNN, and a cache
larger than the free space."""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import config as options
import data
import decode
import predict
import runs
import session
import trainer
from conftest import ROOT, write_dataset
from errors import DataError, OptionError, explain

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--img-size", "16"]


def train(arch: str, *args) -> Path:
    return trainer.main(arch, [str(a) for a in args], **importlib.import_module(f"train_{arch}").DEFAULTS)


def error_of(main, argv, capsys) -> tuple[int, str]:
    """(exit status, the `error: ...` message) of a command line that must be refused: status 1 with our error, 2
    with argparse's; any other exception (a traceback) fails the test."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    if isinstance(exc.value.code, str):
        status, message = 1, exc.value.code
    else:
        status, message = exc.value.code, capsys.readouterr().err
    assert message.startswith("error: "), message
    return status, message


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=6, size=16)


# ----------------------------------------------------------------------------------------------
# Every flag's value, where it is parsed
# ----------------------------------------------------------------------------------------------

LONG = "n" * 250  # a folder name of 250 bytes; its folds' names and out-of-fold file are longer than 255
BAD_TRAINING_FLAGS = [
    (["--device", "gpu0"], ["--device"]), (["--device", "cuda:x"], ["--device"]), (["--device", ""], ["--device"]),
    (["--seed", 2**64], ["--seed"]), (["--seed", 2**32], ["--seed"]), (["--seed", -1], ["--seed"]),
    (["--seed", "1.5"], ["--seed"]), (["--name", "n" * 256], ["--name"]), (["--name", LONG, "--folds", 5], ["--name"]),
    (["--batch-size", 1], ["--batch-size"]), (["--batch-size", 0], ["--batch-size"]), (["--epochs", 0], ["--epochs"]),
    (["--img-size", 4], ["--img-size"]), (["--lr", 0], ["--lr"]), (["--lr", "nan"], ["--lr"]),
    (["--momentum", 1], ["--momentum"]), (["--weight-decay", -1], ["--weight-decay"]),
    (["--warmup-epochs", -1], ["--warmup-epochs"]), (["--label-smoothing", 1], ["--label-smoothing"]),
    (["--grad-clip", -1], ["--grad-clip"]), (["--val-split", 1], ["--val-split"]), (["--rotate", 400], ["--rotate"]),
    (["--translate", -1], ["--translate"]), (["--erase", 1.5], ["--erase"]), (["--mixup", -1], ["--mixup"]),
    (["--cutmix", -1], ["--cutmix"]), (["--folds", 1], ["--folds"]), (["--folds", -2], ["--folds"]),
    (["--folds", 2, "--fold", 3], ["--fold"]), (["--fold", 1], ["--fold"]), (["--patience", -1], ["--patience"]),
    (["--ema", 1], ["--ema"]), (["--head-lr-mult", 0], ["--head-lr-mult"]), (["--freeze-epochs", -1], ["--freeze-epochs"]),
    (["--stop-at-epoch", -1], ["--stop-at-epoch"]), (["--optimizer", "adam"], ["--optimizer"]),
    (["--precision", "fp8"], ["--precision"]), (["--metric", "nope"], ["--metric"]), (["--balance", "x"], ["--balance"]),
    (["--init", "missing.pt"], ["--init"]), (["--val-split", 0, "--patience", 3], ["--val-split", "--patience"]),
    (["--pretrained", "missing.pth"], ["--pretrained"]), (["--epochs", "ten"], ["--epochs"]),
    (["--resume", "nowhere"], ["--resume"]), (["--data", "no/such/folder"], ["--data"]),
    (["--runs-dir", ROOT / "README.md"], ["--runs-dir"]),
]


@pytest.mark.parametrize("argv,named", BAD_TRAINING_FLAGS, ids=[" ".join(map(str, a))[:40] for a, _ in BAD_TRAINING_FLAGS])
def test_a_bad_flag_value_is_an_error_naming_the_flag_before_anything_is_done(dataset, tmp_path, capsys, argv, named):
    def main(args):
        return trainer.main("cnn", args)
    status, message = error_of(main, ["--data", dataset, "--runs-dir", tmp_path / "runs", *FAST, *argv], capsys)
    assert status in (1, 2) and all(flag in message for flag in named), message
    assert not (tmp_path / "runs").exists()


BAD_OTHER_FLAGS = [
    (predict.main, ["run", "--data", "d", "--top-k", 0], "--top-k"),
    (predict.main, ["run", "--data", "d", "--batch-size", 0], "--batch-size"),
    (predict.main, ["run", "--data", "d", "--device", "gpu0"], "--device"),
    (data.main, ["show", "d", "--seed", -1], "--seed"), (data.main, ["show", "d", "--seed", 2**64], "--seed"),
    (data.main, ["fashion-mnist", "d", "--limit", 0], "--limit"),
    (runs.main, ["table", "--runs-dir", "no/such/folder"], "--runs-dir"),
]


@pytest.mark.parametrize("main,argv,named", BAD_OTHER_FLAGS, ids=[" ".join(map(str, a)) for _, a, _ in BAD_OTHER_FLAGS])
def test_the_other_commands_check_their_flags_where_they_are_parsed(capsys, main, argv, named):
    status, message = error_of(main, argv, capsys)
    assert status == 2 and named in message, message


def test_every_numeric_option_declares_its_range_and_check_config_holds_it():
    for f in dataclasses.fields(options.TrainConfig):
        if f.type not in ("int", "float"):
            continue
        limits = options.LIMITS.get(f.name, {})
        assert "minimum" in limits or "above" in limits, f"{f.name} has no range in config.LIMITS"
        low = limits.get("minimum", limits.get("above"))
        outside = low - 1 if "minimum" in limits else low
        with pytest.raises(OptionError, match=options.flag(f.name)):  # the same check from Python (bench, tests)
            options.make_config("cnn", {}, data="d", **{f.name: outside})


def test_seeds_and_device_names_at_the_edges_of_their_ranges(tmp_path):
    assert options.make_config("cnn", {}, data="d", seed=2**32 - 1).seed == 2**32 - 1
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert options.make_config("cnn", {}, data="d", device=device).device == device
    with pytest.raises(OptionError) as err:
        options.make_config("cnn", {}, data="d", device="gpu0")
    assert explain(err.value).startswith("--device gpu0: not a device: expected auto, cpu, cuda or cuda:N")
    # the longest name whose folds' names and out-of-fold file still fit in 255 bytes
    fits = 255 - len(".-oof.json.9999999.tmp")
    assert options.make_config("cnn", {}, data="d", name="n" * fits, folds=5).name
    with pytest.raises(OptionError, match="bytes is too long for a run name .with --folds 5"):
        options.make_config("cnn", {}, data="d", name="n" * (fits + 1), folds=5)
    assert options.make_config("cnn", {}, data="d", name="é" * 127).name  # 254 bytes


def test_flag_errors_from_the_script_are_one_line_without_a_traceback(dataset, tmp_path):
    for argv, flag in ((["--device", "gpu0"], "--device gpu0"), (["--seed", str(2**64)], "--seed")):
        done = subprocess.run([sys.executable, "train_cnn.py", "--data", str(dataset), "--runs-dir", str(tmp_path),
                               *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode in (1, 2) and done.stderr.startswith("error: ") and flag in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2


def test_pretrained_on_the_cnn_says_it_has_no_weights(dataset, tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")

    def main(args):
        return trainer.main("cnn", args)
    _, message = error_of(main, ["--data", dataset, "--runs-dir", tmp_path / "runs", "--pretrained", weights], capsys)
    assert message == (f"error: --pretrained {weights}: cnn has no pretrained weights: it trains from scratch; train "
                       "without --pretrained")
    assert "--norm-stats" not in message


# ----------------------------------------------------------------------------------------------
# Resuming after the dataset moved, from another working folder, on other data
# ----------------------------------------------------------------------------------------------

def test_a_run_resumes_after_its_dataset_moved_and_from_another_working_folder(tmp_path, monkeypatch, capsys):
    write_dataset(tmp_path / "comp", layout="csv", per_class=6, size=16)
    monkeypatch.chdir(tmp_path)
    run = train("cnn", "--data", "comp", "--runs-dir", "runs", "--name", "r", "--epochs", 1, *FAST).resolve()
    assert json.loads((run / "config.json").read_text())["data_path"] == str(tmp_path / "comp")
    assert json.loads((run / "run.json").read_text())["data_path"] == str(tmp_path / "comp")
    shutil.move(tmp_path / "comp", tmp_path / "moved")
    _, message = error_of(lambda a: train("cnn", *a), ["--resume", run, "--epochs", 2], capsys)
    assert "dataset folder comp does not exist" in message and "--data NEWPATH" in message
    train("cnn", "--resume", run, "--data", "moved", "--epochs", 2, "--no-progress")
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "moved" is not there from here: its absolute path, recorded, is
    train("cnn", "--resume", run, "--epochs", 3, "--no-progress")
    info = json.loads((run / "run.json").read_text())
    assert info["epochs_done"] == 3 and info["status"] == "finished"
    # other data at the new place: the fingerprint refuses it, as before
    write_dataset(tmp_path / "other", layout="csv", per_class=7, size=16, seed=1)
    before = snapshot(run)
    _, message = error_of(lambda a: train("cnn", *a), ["--resume", run, "--data", tmp_path / "other", "--epochs", 4],
                          capsys)
    assert "changed since the run began" in message and "--allow-data-change" in message
    assert snapshot(run) == before


def test_resuming_on_images_whose_channels_changed_is_refused_with_the_counts(tmp_path, capsys):
    comp = write_dataset(tmp_path / "comp", layout="csv", per_class=6, size=16)  # gray
    run = train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", "gray", "--epochs", 2,
                "--stop-at-epoch", 1, *FAST)
    before = snapshot(run)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 2] = 200
    cv2.imwrite(str(comp / "train" / "0_9.png"), colour)  # one more image, in colour
    with open(comp / "train.csv", "a", newline="") as f:
        csv.writer(f).writerow(["0_9", "cat"])
    _, message = error_of(lambda a: train("cnn", *a), ["--resume", run, "--allow-data-change"], capsys)
    assert "channels changed" in message and "trained on 1 (gray)" in message and "now have 3 (colour)" in message
    assert "cannot continue on them" in message
    # an image replaced in place by a colour one: the same files and labels, so without --allow-data-change too
    write_dataset(tmp_path / "comp2", layout="csv", per_class=6, size=16)
    run2 = train("cnn", "--data", tmp_path / "comp2", "--runs-dir", tmp_path / "runs", "--name", "gray2",
                 "--epochs", 2, "--stop-at-epoch", 1, *FAST)
    cv2.imwrite(str(tmp_path / "comp2" / "train" / "1_0.png"), colour)
    _, message = error_of(lambda a: train("cnn", *a), ["--resume", run2], capsys)
    assert "channels changed" in message
    assert snapshot(run) == before


# ----------------------------------------------------------------------------------------------
# Folds, batches of one image, --patience without validation images
# ----------------------------------------------------------------------------------------------

def test_more_folds_than_images_is_refused_before_the_first_fold(tmp_path, capsys):
    comp = write_dataset(tmp_path / "comp", layout="csv", per_class=3, size=16)  # 9 images
    _, message = error_of(lambda a: train("cnn", *a), ["--data", comp, "--runs-dir", tmp_path / "runs", "--folds", 10,
                                                       "--name", "k", *FAST], capsys)
    assert message.startswith("error: --folds 10: the dataset has 9 images, too few for 10 folds")
    assert not (tmp_path / "runs").exists()  # no fold was trained
    with pytest.raises(DataError, match="too few for 5 folds"):
        data.check_folds(np.zeros((4, 3), np.uint8), 5, ["a", "b", "c"])  # multi-label: its images count


def test_classes_smaller_than_the_folds_are_named_in_one_warning(tmp_path, caplog, capsys):
    labels = np.array([0] * 6 + [1] * 2 + [2] * 1)
    warning = data.check_folds(labels, 3, ["big", "small", "single"])
    assert warning.startswith("--folds 3: classes with fewer images than folds: 'small' (2), 'single' (1)")
    assert data.check_folds(labels, 2, ["big", "small", "single"]).endswith(
        "'single' (1); some folds' validation images hold none of them (those folds' scores do not measure them)")
    comp = write_dataset(tmp_path / "comp", layout="csv", classes=("a", "b"), per_class=4, size=16)
    config = options.make_config("cnn", {}, data=str(comp), folds=5)
    with caplog.at_level(logging.WARNING, logger="imgcomp"):
        session.check_folds_fit(config, session.Runtime(device=None))
    assert [r.getMessage() for r in caplog.records] == [
        "--folds 5: classes with fewer images than folds: 'a' (4), 'b' (4); some folds' validation images hold none "
        "of them (those folds' scores do not measure them)"]
    train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--folds", 5, "--fold", 2, "--epochs", 1, *FAST)
    assert capsys.readouterr().out.count("classes with fewer images than folds") == 1  # once, for the one fold


def test_a_training_batch_never_holds_one_image_per_process(tmp_path, capsys):
    config = options.make_config("cnn", {}, data="d", batch_size=3)
    session.check_batch_size(config, 1)
    with pytest.raises(OptionError) as err:  # torchrun with 2 processes: one of them would get 1 image
        session.check_batch_size(config, 2)
    assert explain(err.value) == ("--batch-size 3: split among 2 processes, a training batch holds fewer than 2 images "
                                  "per process (BatchNorm needs at least 2); raise it to at least 4 with --batch-size")
    session.check_training_split(options.make_config("cnn", {}, data="d"), 3, 1)  # one batch of 3: fine
    with pytest.raises(DataError) as err:
        session.check_training_split(options.make_config("cnn", {}, data="d", val_split=0.5), 3, 2)
    assert explain(err.value).startswith("--val-split 0.5: only 3 training image(s) after the validation split for 2 "
                                         "processes")
    # the epoch's last, smaller batch is dropped: no batch of one, on any process, for the splits that pass the check
    for n in range(2, 12):
        if n < 4:
            with pytest.raises(DataError):
                session.check_training_split(options.make_config("cnn", {}, data="d", batch_size=4), n, 2)
            continue
        sizes = [len(y) for rank in (0, 1) for _, y in data.iterate_batches(
            np.zeros((n, 1, 2, 2), np.uint8), np.zeros(n, np.int64), np.arange(n), 4, drop_last=True, rank=rank,
            world_size=2)]
        assert min(sizes) >= 2, (n, sizes)
    # a split smaller than the batch is one batch of all of it; a fold's split of one image is refused
    comp = write_dataset(tmp_path / "comp", layout="csv", classes=("a", "b", "c"), per_class=2, size=16)
    run = train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", "three", "--val-split", 0.5,
                "--epochs", 1, *FAST[:-4], "--batch-size", 128, "--img-size", 16)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    tiny = write_dataset(tmp_path / "tiny", layout="csv", classes=("a", "b"), per_class=1, size=16)
    (tiny / "train" / "1_0.png").rename(tiny / "train" / "0_1.png")
    (tiny / "train.csv").write_text("id,label\n0_0,a\n0_1,a\n1_1,b\n")
    shutil.copy(tiny / "train" / "0_1.png", tiny / "train" / "1_1.png")
    _, message = error_of(lambda a: train("cnn", *a), ["--data", tiny, "--runs-dir", tmp_path / "runs", "--folds", 2,
                                                       "--fold", 1, *FAST], capsys)
    assert message.startswith("error: --folds 2: only 1 training image(s) after the validation split")


def test_torchrun_with_one_image_per_process_is_refused_before_it_trains(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "train_cnn.py", "--data", str(dataset), "--runs-dir", str(tmp_path / "runs"), "--name", "b3",
                          "--epochs", "1", *FAST[:-4], "--batch-size", "3", "--img-size", "16"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert ("error: --batch-size 3: split among 2 processes, a training batch holds fewer than 2 images per process"
            in out.stderr), out.stderr[-3000:]
    assert "batch_norm" not in out.stderr and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------
# The cache's space
# ----------------------------------------------------------------------------------------------

def test_a_cache_larger_than_the_free_space_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    files = []
    for i in range(8):
        files.append(tmp_path / "imgs" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        cv2.imwrite(str(files[-1]), np.full((8, 8), 10 * i, np.uint8))
    cache = tmp_path / "cache"
    cache.mkdir()
    free = 8 * 512 * 512 - 1  # a byte short of 8 gray images of 512 x 512
    monkeypatch.setattr(decode.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    reserved = []
    monkeypatch.setattr(os, "posix_fallocate", lambda *a: reserved.append(a))
    with pytest.raises(DataError) as err:
        data.load_images(files, 512, cache_dir=cache, progress=False)
    assert explain(err.value) == (f"no space left on the device of {cache} for the cache of 8 decoded images: it "
                                  "needs 2 MB, 2 MB are free; free some space, or put the cache elsewhere "
                                  "($IMGCOMP_CACHE); or name another folder with --cache-dir")
    assert reserved == [] and list(cache.iterdir()) == []
    assert data.load_images(files, 256, cache_dir=cache, progress=False).pixels.shape == (8, 1, 256, 256)
