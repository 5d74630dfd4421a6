"""Model registry: one builder per architecture, looked up by name.

Every builder takes ``(num_classes, in_chans, img_size, pretrained=False)`` (``pretrained``: False, True /
"imagenet", or a local weight file or folder) and returns an
``nn.Module`` that maps a ``(B, in_chans, img_size, img_size)`` batch to ``(B, num_classes)``
logits. To add an architecture, write ``models/<name>.py`` with a ``build_<name>`` function and
add it to ``MODELS``.
"""
from torch import nn

from . import alexnet, cnn, coatnet, resnet, rexnet
from .weights import WeightsError, WeightsInfo

__all__ = ["MODELS", "WEIGHTS", "WeightsError", "WeightsInfo", "build_model", "head_name"]

MODELS = {
    "cnn": cnn.build_cnn,
    "alexnet": alexnet.build_alexnet,
    "resnet": resnet.build_resnet,
    "rexnet": rexnet.build_rexnet,
    "coatnet": coatnet.build_coatnet,
}


# What each architecture's published weights expect (normalisation) and where their ends are; the CNN has none.
WEIGHTS: dict[str, WeightsInfo] = {"alexnet": alexnet.WEIGHTS, "resnet": resnet.WEIGHTS, "rexnet": rexnet.WEIGHTS,
                                   "coatnet": coatnet.WEIGHTS}


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
