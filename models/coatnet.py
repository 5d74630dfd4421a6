"""CoAtNet-0 from timm (``coatnet_0_rw_224``, which has ImageNet weights).

"CoAtNet: Marrying Convolution and Attention for All Data Sizes" (Dai et al.,
https://arxiv.org/abs/2106.04803).
"""
from torch import nn

from errors import OptionError

from .timm_net import create_timm_model
from .weights import timm_info

WEIGHTS = timm_info("coatnet_0_rw_224")  # the published weights' normalisation, classifier and stem


def build_coatnet(num_classes: int, in_chans: int, img_size: int, pretrained=False,
                  drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Module:
    """Build CoAtNet-0 for ``img_size``, from scratch unless ``pretrained`` (True/"imagenet": timm's
    ImageNet weights, downloaded; a path: a local copy of them)."""
    if img_size % 32:
        # timm sizes the attention windows as img_size / 32; other sizes fail later with a shape error.
        raise OptionError(f"coatnet needs an image size divisible by 32, got {img_size}", option="img_size",
                          value=img_size, fix="give e.g. 32, 64 or 224")
    return create_timm_model("coatnet", "coatnet_0_rw_224", pretrained, num_classes=num_classes,
                             in_chans=in_chans, img_size=img_size, drop_rate=drop_rate,
                             drop_path_rate=drop_path_rate)
