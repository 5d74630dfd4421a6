"""Building a timm architecture (ReXNet, CoAtNet) with its published weights (downloaded by timm) or with
weights from a local file or folder (models/weights.py)."""
import timm
from torch import nn

from .weights import fetch_error, load_local_weights, timm_info, weights_source


def create_timm_model(arch: str, timm_name: str, pretrained, **kwargs) -> nn.Module:
    """timm.create_model with `pretrained` False, True / "imagenet" (timm downloads its published weights; a failed
    download is a SetupError that says what to do) or a local weight file or folder (nothing is fetched)."""
    source = weights_source(pretrained)
    if source is None:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    if source != "imagenet":
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        return load_local_weights(model, source, timm_info(timm_name), arch)
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except OSError as err:  # hub unreachable, offline mode, file missing from the cache
        raise fetch_error(arch, f"the Hugging Face hub (timm/{timm_name})", err) from err
