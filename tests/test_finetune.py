"""Fine-tuning from pretrained weights given as local files, offline: every format and folder layout loads,
adapts (head, input channels) and trains; a wrong file gets a clear error; the recipe options work.

The weight files are made here: each architecture built by torchvision/timm with random weights and saved
as its published checkpoint would be. Every download function is replaced by one that fails, so a test
passes only if nothing is fetched."""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import checkpoint
import trainer
from conftest import write_dataset
from errors import explain
from models import WEIGHTS, WeightsError, build_model

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16"]
TIMM_NAMES = {"rexnet": "rexnet_100", "coatnet": "coatnet_0_rw_224"}
FIRST_CONV = {"resnet": "conv1.weight", "rexnet": "stem.conv.weight", "coatnet": "stem.conv1.weight",
              "alexnet": "features.0.weight"}


def published(arch: str) -> dict[str, torch.Tensor]:
    """Random weights with the names and shapes of the published ImageNet checkpoint of `arch`."""
    torch.manual_seed(0)
    if arch == "resnet":
        return torchvision.models.resnet18().state_dict()
    if arch == "alexnet":
        return torchvision.models.alexnet().state_dict()
    return timm.create_model(TIMM_NAMES[arch]).state_dict()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every weight download fails, and is recorded."""
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("[Errno 101] Network is unreachable (the tests are offline)")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_path", no_network)
    return calls


def write_weights(state: dict, path: Path, how: str) -> Path:
    """`state` saved as a user might have it: a .safetensors, a bare .pth, a wrapped .bin, a folder with
    config.json + weights, or a Hugging Face hub cache (the snapshot's file a link to a blob)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    if how == "safetensors":
        save_file(state, str(path / "weights.safetensors"))
        return path / "weights.safetensors"
    if how == "pth":
        torch.save(state, path / "weights.pth")
        return path / "weights.pth"
    if how == "bin-wrapped":
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 90}, path / "weights.bin")
        return path / "weights.bin"
    if how == "folder":
        (path / "config.json").write_text(json.dumps({"architecture": "x", "num_classes": 1000}))
        save_file(state, str(path / "model.safetensors"))
        return path
    if how == "hub-cache":
        repo = path / "models--timm--x.in1k"
        (repo / "blobs").mkdir(parents=True)
        save_file(state, str(repo / "blobs" / "0123abcd"))
        snapshot = repo / "snapshots" / "c0ffee"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        os.symlink("../../blobs/0123abcd", snapshot / "model.safetensors")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("c0ffee")
        return path
    raise ValueError(how)


@pytest.mark.parametrize("arch,img_size,in_chans,how", [
    ("resnet", 32, 1, "safetensors"), ("resnet", 96, 3, "bin-wrapped"), ("rexnet", 32, 1, "pth"),
    ("rexnet", 32, 3, "hub-cache"), ("coatnet", 32, 3, "folder"), ("alexnet", 128, 1, "pth")])
def test_local_weights_load_and_adapt(arch, img_size, in_chans, how, tmp_path, offline):
    state = published(arch)
    source = write_weights(state, tmp_path / "w", how)
    model = build_model(arch, 5, in_chans, img_size, pretrained=str(source)).eval()
    loaded = model.state_dict()
    if arch == "alexnet":  # torchvision's dense layers are named classifier.N, ours head.M
        state = {{"classifier.1.weight": "head.2.weight", "classifier.1.bias": "head.2.bias",
                  "classifier.4.weight": "head.5.weight", "classifier.4.bias": "head.5.bias",
                  "classifier.6.weight": "head.7.weight", "classifier.6.bias": "head.7.bias"}.get(k, k): v
                 for k, v in state.items()}
    first = FIRST_CONV[arch]
    same = [k for k in loaded if k != first and k in state and loaded[k].shape == state[k].shape]
    # all but the stem, the head and (coatnet at 32 px) its resized attention position tables
    assert len(same) >= len(loaded) - 3 or len(same) > 0.9 * len(loaded)
    assert all(torch.equal(loaded[k], state[k]) for k in same), "weights not loaded"
    head = WEIGHTS[arch].classifier + ".weight"
    assert loaded[head].shape[0] == 5  # the head is replaced for the competition's classes
    if loaded[first].shape[2:] == state[first].shape[2:]:  # the stem, adapted to 1 or 3 channels
        expected = state[first].sum(1, keepdim=True) if in_chans == 1 else state[first]
        assert torch.allclose(loaded[first], expected)
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, img_size, img_size)).shape == (2, 5)
    assert offline == []  # nothing was fetched


def test_a_file_that_does_not_fit_names_the_file_and_the_tensors(tmp_path):
    resnet_file = write_weights(published("resnet"), tmp_path / "w", "safetensors")
    with pytest.raises(ValueError) as err:
        build_model("rexnet", 5, 3, 32, pretrained=str(resnet_file))
    message = explain(err.value)  # the facts, led by the option and the file at fault
    assert isinstance(err.value, WeightsError) and "--pretrained" not in str(err.value)  # no flags below the CLI
    assert str(resnet_file) in message and "does not fit rexnet" in message and "first:" in message
    assert "layer1.0.conv1.weight" in message or "stem.conv.weight" in message
    assert message.startswith(f"--pretrained {resnet_file}: ")
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("hello")
    with pytest.raises(ValueError, match="cannot be read as weights"):
        build_model("resnet", 5, 3, 32, pretrained=str(not_weights))
    with pytest.raises(ValueError, match="no such file or folder"):
        build_model("resnet", 5, 3, 32, pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "two").mkdir()
    for name in ("a.pth", "b.pth"):
        torch.save(published("resnet"), tmp_path / "two" / name)
    with pytest.raises(ValueError, match="several weight files"):
        build_model("resnet", 5, 3, 32, pretrained=str(tmp_path / "two"))
    with pytest.raises(ValueError, match="below 128 px"):
        build_model("alexnet", 5, 3, 32, pretrained=str(resnet_file))


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="folder", per_class=8, size=32,
                         channels=3, ext=".jpg", classes=("a", "b", "c", "d"))


def train(arch: str, *args) -> Path:
    return trainer.main(arch, [str(a) for a in args], **importlib.import_module(f"train_{arch}").DEFAULTS)


def test_fine_tuning_with_a_frozen_backbone_and_a_faster_head(rgb, tmp_path, offline):
    source = write_weights(published("resnet"), tmp_path / "w", "pth")
    run = train("resnet", "--data", rgb, "--runs-dir", tmp_path / "runs", "--name", "ft", "--epochs", 1,
                "--img-size", 32, "--pretrained", source, "--freeze-epochs", 1, "--head-lr-mult", 10, *FAST)
    ckpt = checkpoint.load_checkpoint(run / "last.pt")
    spec = checkpoint.read_spec(ckpt)
    # normalised with the weights' own mean/std, not the data's
    assert spec.mean == list(WEIGHTS["resnet"].mean) and spec.std == list(WEIGHTS["resnet"].std)
    assert ckpt["config"]["pretrained"] == str(source)
    state, trained = published("resnet"), ckpt["model"]
    backbone = [k for k in trained if not k.startswith("fc.") and k != "conv1.weight" and "running" not in k
                and "num_batches" not in k]
    assert all(torch.equal(trained[k], state[k]) for k in backbone)  # frozen: unchanged
    fresh = build_model("resnet", 4, 3, 32)  # the head trained
    assert not torch.equal(trained["fc.weight"], fresh.state_dict()["fc.weight"])
    groups = ckpt["training"]["optimizer"]["param_groups"]
    assert sorted({g["lr_scale"] for g in groups}) == [1.0, 10.0]
    assert offline == []
    # resumed for a second epoch, the backbone trains
    train("resnet", "--resume", run, "--epochs", 2, "--no-progress")
    again = checkpoint.load_checkpoint(run / "last.pt")["model"]
    assert not all(torch.equal(again[k], state[k]) for k in backbone)


@pytest.mark.parametrize("arch", ["rexnet", "coatnet"])
def test_timm_architectures_fine_tune_from_a_local_file_end_to_end(arch, rgb, tmp_path, offline):
    source = write_weights(published(arch), tmp_path / "w", "safetensors")
    run = train(arch, "--data", rgb, "--runs-dir", tmp_path / "runs", "--name", arch, "--epochs", 1,
                "--img-size", 32, "--pretrained", source, "--norm-stats", "data", *FAST)
    spec = checkpoint.read_spec(checkpoint.load_checkpoint(run / "best.pt"))
    assert spec.mean != list(WEIGHTS[arch].mean)  # --norm-stats data: the images' own statistics
    assert offline == []


def test_a_wrong_weight_file_is_a_clear_error_from_the_script(rgb, tmp_path):
    source = write_weights(published("resnet"), tmp_path / "w", "pth")
    with pytest.raises(SystemExit) as err:
        train("rexnet", "--data", rgb, "--runs-dir", tmp_path / "runs", "--img-size", 32, "--pretrained", source, *FAST)
    assert str(err.value.code).startswith("error: --pretrained") and str(source) in str(err.value.code)
    with pytest.raises(SystemExit) as err:  # the download, offline
        train("rexnet", "--data", rgb, "--runs-dir", tmp_path / "runs", "--img-size", 32, "--pretrained", *FAST)
    assert "could not fetch pretrained weights" in str(err.value.code) and "--pretrained FILE" in str(err.value.code)
