"""Every registered model through forward and backward at small size, plus the builders' errors.

All on CPU and offline: downloads of pretrained weights are replaced by fakes.
"""
import subprocess
import sys

import pytest
import timm
import timm.models._builder
import torch
import torchvision
import torchvision.models._api

from conftest import ROOT
from errors import explain
from models import MODELS, build_model
from models.cnn import conv_plan

NUM_CLASSES = 7  # not 10, so a hard-coded class count shows up
SMALL_SIZE = {"coatnet": 32}  # coatnet needs a multiple of 32; the rest start at 28 (MNIST)
PRETRAINED = ["resnet", "rexnet", "coatnet"]


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("arch", list(MODELS))
def test_forward_backward(arch, in_chans):
    img_size = SMALL_SIZE.get(arch, 28)
    model = build_model(arch, NUM_CLASSES, in_chans, img_size).train()
    logits = model(torch.randn(2, in_chans, img_size, img_size))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()

    torch.nn.functional.cross_entropy(logits, torch.tensor([0, NUM_CLASSES - 1])).backward()
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert params
    no_grad = [name for name, p in params if p.grad is None]
    assert not no_grad, f"no gradient reached {no_grad}"
    bad = [name for name, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad}"
    assert any(p.grad.abs().sum() > 0 for _, p in params)


@pytest.mark.parametrize("arch,img_size", [(arch, 64) for arch in MODELS]
                         + [("alexnet", 224), ("resnet", 224)])
def test_larger_inputs(arch, img_size):
    model = build_model(arch, NUM_CLASSES, 3, img_size).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, img_size, img_size))
    assert logits.shape == (1, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("img_size,side", [(28, 7), (16, 4), (64, 7), (128, 7)])
def test_cnn_map_head_sees_the_last_map_at_most_7_across(img_size, side):
    model = build_model("cnn", NUM_CLASSES, 1, img_size, head_pool="map").eval()
    chans = conv_plan(img_size)[-1][0]
    assert model.head[0].in_features == chans * side * side
    x = torch.randn(2, 1, img_size, img_size)
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)
        # Moving the content moves the features the head sees: "map" keeps where things are.
        assert not torch.allclose(model.forward_features(x), model.forward_features(torch.roll(x, img_size // 2, 3)))


def test_cnn_global_head_does_not_depend_on_where_the_map_is_found():
    model = build_model("cnn", NUM_CLASSES, 1, 32, head_pool="global").eval()
    assert model.head[0].in_features == 6 * 128  # average, maximum and 4 quadrants of 128 channels
    feats = torch.zeros(1, 128, 8, 8)
    feats[0, :, 1, 1] = 1.0
    moved = torch.zeros(1, 128, 8, 8)
    moved[0, :, 2, 2] = 1.0  # the same quadrant
    assert torch.equal(model.pool(feats), model.pool(moved))


def test_cnn_refuses_an_unknown_head_pooling():
    with pytest.raises(ValueError, match="unknown head pooling 'avg'"):
        build_model("cnn", NUM_CLASSES, 1, 28, head_pool="avg")


def test_unknown_arch_names_it_and_the_known_ones():
    with pytest.raises(ValueError, match="'vgg'") as info:
        build_model("vgg", NUM_CLASSES, 3, 32)
    assert all(arch in str(info.value) for arch in MODELS)


@pytest.mark.parametrize("img_size", [28, 48])
def test_coatnet_rejects_img_size_not_divisible_by_32(img_size):
    with pytest.raises(ValueError, match=f"divisible by 32, got {img_size}") as info:
        build_model("coatnet", NUM_CLASSES, 3, img_size)
    assert explain(info.value).startswith(f"--img-size {img_size}: ")  # the command line names the flag


@pytest.mark.parametrize("arch", ["cnn", "alexnet"])
def test_pretrained_without_weights_raises(arch):
    with pytest.raises(ValueError, match=f"no pretrained weights exist for '{arch}'") as info:
        build_model(arch, NUM_CLASSES, 3, 32, pretrained=True)
    assert "--" not in str(info.value) and info.value.option == {"cnn": "pretrained", "alexnet": "img_size"}[arch]


def patch_downloads(monkeypatch, fake):
    """Route every weight download that torchvision and timm make through ``fake``."""
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", fake)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", fake)


@pytest.mark.parametrize("arch", PRETRAINED)
def test_pretrained_offline_is_a_clear_runtime_error(arch, monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("[Errno 101] Network is unreachable")

    patch_downloads(monkeypatch, offline)
    with pytest.raises(RuntimeError, match=rf"could not fetch pretrained weights for {arch} "
                                           r"\(are you offline\?\)") as info:
        build_model(arch, NUM_CLASSES, 1, 32, pretrained=True)
    assert calls, "the download was not the patched one"
    assert isinstance(info.value.__cause__, ConnectionError)
    assert "Network is unreachable" in str(info.value) and "--pretrained" not in str(info.value)
    assert explain(info.value).endswith("name it with --pretrained FILE_OR_FOLDER")


def imagenet_state_dict(arch):
    """Random weights shaped like the published ImageNet checkpoint of ``arch``."""
    if arch == "resnet":
        return torchvision.models.resnet18().state_dict()
    name = {"rexnet": "rexnet_100", "coatnet": "coatnet_0_rw_224"}[arch]
    return timm.create_model(name).state_dict()


@pytest.mark.parametrize("arch,img_size", [("resnet", 32), ("resnet", 224),
                                           ("rexnet", 32), ("coatnet", 32)])
def test_pretrained_weights_load_and_adapt_to_one_channel(arch, img_size, monkeypatch):
    published = imagenet_state_dict(arch)
    patch_downloads(monkeypatch, lambda *args, **kwargs: {k: v.clone() for k, v in published.items()})
    model = build_model(arch, NUM_CLASSES, 1, img_size, pretrained=True).eval()
    loaded = model.state_dict()

    first = {"resnet": "conv1.weight", "rexnet": "stem.conv.weight",
             "coatnet": "stem.conv1.weight"}[arch]
    # everything whose shape did not change (all but the head, the first conv and, for
    # coatnet at 32, the resized attention position tables) comes through unchanged
    same = [k for k in loaded if k != first and loaded[k].shape == published[k].shape]
    assert len(same) > 0.9 * len(loaded)
    changed = [k for k in same if not torch.equal(loaded[k], published[k])]
    assert not changed, f"weights not loaded: {changed}"
    # the first conv is summed over RGB where its kernel shape allows
    if loaded[first].shape[2:] == published[first].shape[2:]:
        assert torch.allclose(loaded[first], published[first].sum(1, keepdim=True))
    with torch.no_grad():
        assert model(torch.randn(1, 1, img_size, img_size)).shape == (1, NUM_CLASSES)


def test_the_cnn_starts_without_importing_timm_or_torchvision():
    # Importing them takes seconds at every start; only the architectures built on them (or their weights) do.
    code = ("import sys, trainer, predict; from models import WEIGHTS, build_model; build_model('cnn', 3, 1, 16); "
            "assert 'resnet' in WEIGHTS and 'cnn' not in WEIGHTS; "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys; from models import build_model, WEIGHTS; build_model('rexnet', 3, 1, 28); print('timm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "True"
