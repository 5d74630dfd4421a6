"""Model registry: one builder per architecture, looked up by name.

Every builder takes ``(num_classes, in_chans, img_size, pretrained=False)`` (``pretrained``: False, True /
"imagenet", or a local weight file or folder) and returns an
``nn.Module`` that maps a ``(B, in_chans, img_size, img_size)`` batch to ``(B, num_classes)``
logits. To add an architecture, write ``models/<name>.py`` with a ``build_<name>`` function and
add it to ``MODELS``.
"""
import importlib
from collections.abc import Mapping

from torch import nn

from .weights import WeightsError, WeightsInfo

__all__ = ["MODELS", "MODEL_OPTIONS", "WEIGHTS", "WeightsError", "WeightsInfo", "build_model", "head_name"]

# Each architecture's module is imported when it is first used: timm and torchvision (seconds of start-up)
# are imported only by the runs that need them.
ARCHS = ("cnn", "alexnet", "resnet", "rexnet", "coatnet")
PRETRAINED = ("alexnet", "resnet", "rexnet", "coatnet")  # those with published weights (the CNN has none)
# Options of one architecture's builder (training's flags of the same names; checkpoints record them): option -> arch.
MODEL_OPTIONS = {"head_pool": "cnn"}


def _module(arch: str):
    return importlib.import_module(f"{__name__}.{arch}")


def _builder(arch: str):
    def build(*args, **kwargs) -> nn.Module:
        return getattr(_module(arch), f"build_{arch}")(*args, **kwargs)
    build.__name__ = build.__qualname__ = f"build_{arch}"
    return build


MODELS = {arch: _builder(arch) for arch in ARCHS}


class _Weights(Mapping):
    """What each architecture's published weights expect (normalisation) and where their ends are: its
    module's WEIGHTS, read when first asked for."""

    def __getitem__(self, arch: str) -> WeightsInfo:
        if arch not in PRETRAINED:
            raise KeyError(arch)
        return _module(arch).WEIGHTS

    def __contains__(self, arch) -> bool:  # without importing the module
        return arch in PRETRAINED

    def __iter__(self):
        return iter(PRETRAINED)

    def __len__(self) -> int:
        return len(PRETRAINED)


WEIGHTS: Mapping[str, WeightsInfo] = _Weights()


def build_model(arch: str, num_classes: int, in_chans: int, img_size: int,
                pretrained=False, **kwargs) -> nn.Module:
    """Build the registered architecture ``arch``; ``pretrained``: False, True/"imagenet" (download the published
    weights) or the path of a local copy (a weight file or folder; nothing is fetched). Extra keyword args go to
    its builder."""
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}")
    return MODELS[arch](num_classes, in_chans, img_size, pretrained=pretrained, **kwargs)


def head_name(arch: str) -> str:
    """The module of ``arch`` that maps features to class logits: the layer replaced for new classes (the
    whole dense head for the CNN, which has no published weights)."""
    return WEIGHTS[arch].classifier if arch in WEIGHTS else "head"
