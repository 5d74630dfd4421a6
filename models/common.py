"""What the timm-based builders share: creating a timm model with its published weights (downloaded) or with
weights from a local file or folder (models/weights.py), and one clear error when weights cannot be fetched."""
import timm
from torch import nn

from .weights import load_local_weights, timm_info, weights_source


def create_timm_model(arch: str, timm_name: str, pretrained, **kwargs) -> nn.Module:
    """timm.create_model with `pretrained` False, True / "imagenet" (timm downloads its published weights; a failed
    download is a RuntimeError that says what to do) or a local weight file or folder (nothing is fetched)."""
    source = weights_source(pretrained)
    if source is None:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    if source != "imagenet":
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        return load_local_weights(model, source, timm_info(timm_name), arch)
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except OSError as err:  # hub unreachable, offline mode, file missing from the cache
        raise RuntimeError(
            f"could not fetch pretrained weights for {arch} (are you offline?) from the Hugging Face hub "
            f"(timm/{timm_name}); give a local copy with --pretrained FILE_OR_FOLDER (README: fine-tuning "
            f"offline), or train from scratch. Cause: {err}") from err
