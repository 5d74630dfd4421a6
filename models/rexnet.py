"""ReXNet-1.0 from timm (``rexnet_100``).

"Rethinking Channel Dimensions for Efficient Model Design" (Han et al.,
https://arxiv.org/abs/2007.00992).
"""
import timm
from torch import nn


def build_rexnet(num_classes: int, in_chans: int, img_size: int, pretrained: bool = False,
                 drop_rate: float = 0.2) -> nn.Module:
    """Build ReXNet-1.0, from scratch unless ``pretrained`` (timm's ImageNet weights)."""
    try:
        model = timm.create_model("rexnet_100", pretrained=pretrained, num_classes=num_classes,
                                  in_chans=in_chans, drop_rate=drop_rate)
    except OSError as err:  # hub unreachable, offline mode, file missing from the cache
        if not pretrained:
            raise
        raise RuntimeError(
            "could not fetch pretrained weights for rexnet (are you offline?) from the Hugging Face "
            "hub (timm/rexnet_100.nav_in1k); fill the hub cache ($HF_HOME) or use pretrained=False. "
            f"Cause: {err}") from err
    if img_size < 64:
        # The network downsamples 32x; a stride-1 stem makes that 16x, so 28x28 ends at 2x2, not 1x1.
        model.stem.conv.stride = (1, 1)
    return model
