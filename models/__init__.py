"""Model registry: one builder per architecture, looked up by name.

Every builder takes ``(num_classes, in_chans, img_size, pretrained=False)`` and returns an
``nn.Module`` that maps a ``(B, in_chans, img_size, img_size)`` batch to ``(B, num_classes)``
logits. To add an architecture, write ``models/<name>.py`` with a ``build_<name>`` function and
add it to ``MODELS``.
"""
from torch import nn

from . import alexnet, cnn, coatnet, resnet, rexnet

MODELS = {
    "cnn": cnn.build_cnn,
    "alexnet": alexnet.build_alexnet,
    "resnet": resnet.build_resnet,
    "rexnet": rexnet.build_rexnet,
    "coatnet": coatnet.build_coatnet,
}


def build_model(arch: str, num_classes: int, in_chans: int, img_size: int,
                pretrained: bool = False, **kwargs) -> nn.Module:
    """Build the registered architecture ``arch``; extra keyword args go to its builder."""
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}")
    return MODELS[arch](num_classes, in_chans, img_size, pretrained=pretrained, **kwargs)
