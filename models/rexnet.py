"""ReXNet-1.0 from timm (``rexnet_100``).

"Rethinking Channel Dimensions for Efficient Model Design" (Han et al.,
https://arxiv.org/abs/2007.00992).
"""
from torch import nn

from .timm_net import create_timm_model
from .weights import timm_info

WEIGHTS = timm_info("rexnet_100")  # the published weights' normalisation, classifier and stem


def build_rexnet(num_classes: int, in_chans: int, img_size: int, pretrained=False,
                 drop_rate: float = 0.2) -> nn.Module:
    """Build ReXNet-1.0, from scratch unless ``pretrained`` (True/"imagenet": timm's ImageNet weights,
    downloaded; a path: a local copy of them)."""
    model = create_timm_model("rexnet", "rexnet_100", pretrained, num_classes=num_classes,
                              in_chans=in_chans, drop_rate=drop_rate)
    if img_size < 64:
        # The network downsamples 32x; a stride-1 stem makes that 16x, so 28x28 ends at 2x2, not 1x1.
        model.stem.conv.stride = (1, 1)
    return model
