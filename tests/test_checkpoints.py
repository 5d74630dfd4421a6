"""Checkpoints that were edited or belong to something else: every one is refused by the one check of a loaded
checkpoint (checkpoint.check_checkpoint, and load_weights for its tensors) with an `error:` naming the file and
what does not fit, in predict.py, on --resume and for --init; never a traceback. And --init takes a run folder
as predict.py does."""
from __future__ import annotations

import copy
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import trainer
from conftest import ROOT, predict_error, write_dataset

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--img-size", "16"]


def train(*args) -> Path:
    return trainer.main("cnn", [str(a) for a in args], **importlib.import_module("train_cnn").DEFAULTS)


def train_error(*args) -> str:
    with pytest.raises(SystemExit) as exc:
        train(*args)
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: "), exc.value.code
    return exc.value.code


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=8, size=16, n_test=6)


@pytest.fixture(scope="module")
def paused(comp, tmp_path_factory) -> Path:
    """A run paused after its first of two epochs: best.pt to predict with, last.pt to resume."""
    return train("--data", comp, "--runs-dir", tmp_path_factory.mktemp("runs"), "--name", "cnn", "--epochs", 2,
                 "--stop-at-epoch", 1, *FAST)


def _first_weight(ckpt: dict) -> str:
    return next(k for k, v in ckpt["model"].items() if v.ndim == 4)


def _set_spec(key, value):
    def edit(ckpt):
        ckpt["spec"][key] = value
    return edit


def _reshape(ckpt):
    key = _first_weight(ckpt)
    ckpt["model"][key] = torch.zeros(ckpt["model"][key].shape[0] + 1, *ckpt["model"][key].shape[1:])


def _drop_tensor(ckpt):
    del ckpt["model"][_first_weight(ckpt)]


def _add_tensor(ckpt):
    ckpt["model"]["extra.weight"] = torch.zeros(3)


def _not_a_tensor(ckpt):
    ckpt["model"][_first_weight(ckpt)] = [1.0, 2.0]


def _drop_spec_key(ckpt):
    del ckpt["spec"]["img_size"]


def _precision(ckpt):
    ckpt["spec"]["compute"] = {"precision": "fp8", "channels_last": False}


def _no_spec(ckpt):
    del ckpt["spec"]


def _epoch_text(ckpt):
    ckpt["epoch"] = "one"


# (what is edited, the edit, what the error says)
EDITS = [
    ("unknown architecture", _set_spec("arch", "vgg99"), "architecture 'vgg99' is not one of"),
    ("tensor of another shape", _reshape, "of another shape"),
    ("tensor missing", _drop_tensor, "1 tensor(s) missing"),
    ("tensor unexpected", _add_tensor, "1 tensor(s) unexpected (extra.weight)"),
    ("weights not tensors", _not_a_tensor, "not named tensors"),
    ("spec key missing", _drop_spec_key, "the spec has no 'img_size'"),
    ("unknown spec key", _set_spec("colour", True), "unknown key(s) 'colour'"),
    ("no spec", _no_spec, "no model spec"),
    ("unknown precision", _precision, "compute format"),
    ("image size of 2", _set_spec("img_size", 2), "image size 2"),
    ("image size not a number", _set_spec("img_size", "16"), "image size '16'"),
    ("image size a fraction", _set_spec("img_size", 16.5), "image size 16.5"),
    ("classes not strings", _set_spec("class_names", [1, 2, 3]), "class names [1, 2, 3]"),
    ("classes repeated", _set_spec("class_names", ["cat", "cat", "dog"]), "distinct names"),
    ("channels of 2", _set_spec("channels", 2), "channels 2: expected 1, 3 or 4"),
    ("mean of other length", _set_spec("mean", [0.5, 0.5]), "mean has 2 value(s) for 1 channel(s)"),
    ("std of zero", _set_spec("std", [0.0]), "std [0.0]"),
    ("thresholds of other length", _set_spec("thresholds", [0.5]), "thresholds [0.5]"),
    ("flag not a bool", _set_spec("hflip", "yes"), "hflip 'yes'"),
    ("model options not a mapping", _set_spec("model_options", ["map"]), "model options ['map']"),
    ("epoch not a number", _epoch_text, "'epoch' is 'one', not a whole number"),
]


def edited(source: Path, target: Path, edit) -> Path:
    ckpt = copy.deepcopy(torch.load(source, weights_only=True))
    edit(ckpt)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, target)
    return target


@pytest.mark.parametrize("what,edit,says", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_checkpoint_is_an_error_naming_it_in_predict(comp, paused, tmp_path, what, edit, says):
    bad = edited(paused / "best.pt", tmp_path / "run" / "best.pt", edit)
    message = predict_error(bad.parent, "--data", comp, "--out", tmp_path / "s.csv")
    assert str(bad) in message and says in message, message
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("what,edit,says", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_last_checkpoint_is_an_error_naming_it_on_resume(paused, tmp_path, what, edit, says):
    run = tmp_path / "runs" / "cnn"
    shutil.copytree(paused, run)
    bad = edited(paused / "last.pt", run / "last.pt", edit)
    before = (run / "run.json").read_text()
    message = train_error("--resume", run, "--no-progress")
    assert str(bad) in message and says in message, message
    assert (run / "run.json").read_text() == before  # a refused resume leaves the run as it was


def _rename_arch(ckpt):
    ckpt["spec"]["arch"] = "resnet"
    del ckpt["spec"]["model_options"]  # the CNN's own (its head pooling)


@pytest.mark.parametrize("edit,says", [
    (_rename_arch, "holds a resnet of 3 classes, 1 channel(s), 16 px, and the run's config.json says a cnn at 16 px"),
    (_set_spec("model_options", {"head_pool": "avg"}), "head_pool 'avg', and the run's config.json says a cnn at 16 "
                                                       "px, head_pool 'map'"),
    (lambda c: c.pop("training"), "no training state"),
    (lambda c: c["training"]["optimizer"].update(param_groups=[]), "optimiser state does not fit"),
    (lambda c: c["training"].update(scaler=[1]), "its training state's 'scaler' is [1], not a dict"),
])
def test_resume_refuses_a_last_checkpoint_that_is_not_the_runs(paused, tmp_path, edit, says):
    run = tmp_path / "runs" / "cnn"
    shutil.copytree(paused, run)
    bad = edited(paused / "last.pt", run / "last.pt", edit)
    message = train_error("--resume", run, "--no-progress")
    assert str(bad) in message and says in message, message


def test_an_architecture_renamed_to_another_one_says_the_weights_do_not_fit(comp, paused, tmp_path):
    bad = edited(paused / "best.pt", tmp_path / "renamed.pt", _rename_arch)
    message = predict_error(bad, "--data", comp)
    assert str(bad) in message and "do not fit a resnet of 3 classes" in message and "missing" in message


def test_an_unknown_head_pooling_builds_no_model_in_predict(comp, paused, tmp_path):
    bad = edited(paused / "best.pt", tmp_path / "pool.pt", _set_spec("model_options", {"head_pool": "avg"}))
    message = predict_error(bad, "--data", comp)
    assert str(bad) in message and "builds no model: unknown head pooling 'avg'" in message, message


def test_an_architecture_renamed_with_the_cnns_options_names_them(comp, paused, tmp_path):
    bad = edited(paused / "best.pt", tmp_path / "renamed.pt", _set_spec("arch", "resnet"))
    message = predict_error(bad, "--data", comp)
    assert str(bad) in message and "model option(s) 'head_pool' are not options of 'resnet'" in message, message


def test_the_command_line_shows_one_error_line_and_no_traceback(comp, paused, tmp_path):
    bad = edited(paused / "best.pt", tmp_path / "bad.pt", _reshape)
    run = tmp_path / "runs" / "cnn"
    shutil.copytree(paused, run)
    edited(paused / "last.pt", run / "last.pt", _reshape)
    for command in ([str(ROOT / "predict.py"), str(bad), "--data", str(comp), "--out", str(tmp_path / "s.csv")],
                    [str(ROOT / "train_cnn.py"), "--resume", str(run), "--no-progress"]):
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "error: " in result.stderr and "of another shape" in result.stderr
    assert not (tmp_path / "s.csv").exists()


def test_every_loader_goes_through_the_one_check(paused, tmp_path):
    bad = edited(paused / "best.pt", tmp_path / "bad.pt", _set_spec("channels", 5))
    with pytest.raises(checkpoint.DataError, match="channels 5"):
        checkpoint.load_checkpoint(bad)
    with pytest.raises(checkpoint.DataError, match="no training state"):
        checkpoint.load_checkpoint(paused / "best.pt", resumable=True)
    assert checkpoint.load_checkpoint(paused / "last.pt", resumable=True)["training"]  # the run's own: fine


# ----------------------------------------------------------------------------------------------
# --init
# ----------------------------------------------------------------------------------------------

def test_init_takes_a_run_folder_as_predict_does(comp, paused, tmp_path, capsys):
    run = train("--data", comp, "--runs-dir", tmp_path / "runs", "--name", "warm", "--epochs", 1, "--init", paused,
                *FAST)
    assert (run / "best.pt").is_file()
    assert f"weights from {paused / 'best.pt'}: loaded" in capsys.readouterr().out  # the trainer logs to stdout
    # an edited checkpoint is refused there too (a tensor of another shape is only left fresh: --init keeps what
    # fits), and so is a folder that is no run
    bad = edited(paused / "best.pt", tmp_path / "bad" / "best.pt", _precision)
    for given, says in ((bad.parent, "compute format"), (tmp_path / "runs", "has no best.pt")):
        message = train_error("--data", comp, "--runs-dir", tmp_path / "runs", "--name", "warm2", "--epochs", 1,
                              "--init", given, *FAST)
        assert says in message and str(given) in message, message
    assert not (tmp_path / "runs" / "warm2").exists()


def test_init_refuses_a_checkpoint_none_of_whose_tensors_fit(comp, paused, tmp_path):
    def rename(ckpt):
        ckpt["model"] = {f"other.{k}": v for k, v in ckpt["model"].items()}
    bad = edited(paused / "best.pt", tmp_path / "renamed.pt", rename)
    message = train_error("--data", comp, "--runs-dir", tmp_path / "runs", "--name", "warm", "--epochs", 1,
                          "--init", bad, *FAST)
    assert "--init" in message and "none of the tensors" in message and str(bad) in message
