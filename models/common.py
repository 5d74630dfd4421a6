"""What the timm-based builders share: creating a timm model, and one clear error when its
pretrained weights cannot be fetched."""
import timm
from torch import nn


def create_timm_model(arch: str, timm_name: str, pretrained: bool, **kwargs) -> nn.Module:
    """timm.create_model, turning a failed weight download into a RuntimeError that says what to do."""
    try:
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)
    except OSError as err:  # hub unreachable, offline mode, file missing from the cache
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not fetch pretrained weights for {arch} (are you offline?) from the Hugging Face hub "
            f"(timm/{timm_name}); fill the hub cache ($HF_HOME) or use pretrained=False. Cause: {err}") from err
