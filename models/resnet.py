"""ResNet-18 from torchvision.

"Deep Residual Learning for Image Recognition" (He et al., https://arxiv.org/abs/1512.03385).
For inputs of 64 pixels or less the 7x7 stride-2 conv and max-pool stem is replaced by a 3x3
stride-1 conv without pooling, as the paper does for CIFAR-10, so small images are not reduced
to 1x1 before the last stage.
"""
import torchvision
from torch import nn

from .weights import IMAGENET_MEAN, IMAGENET_STD, WeightsInfo, fetch_error, load_local_weights, weights_source

WEIGHTS = WeightsInfo(IMAGENET_MEAN, IMAGENET_STD, classifier="fc", first_conv="conv1")


def build_resnet(num_classes: int, in_chans: int, img_size: int, pretrained=False) -> nn.Module:
    """Build ResNet-18; ``pretrained`` True/"imagenet" loads torchvision's ImageNet weights, a path a local copy
    (torchvision's or timm's resnet18 files): all but the head, and all but the stem conv for small inputs,
    whose 3x3 shape differs from the 7x7 weights."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    if img_size <= 64:
        model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
    source = weights_source(pretrained)
    if source == "imagenet":
        load_imagenet_weights(model, in_chans)
    elif source is not None:
        load_local_weights(model, source, WEIGHTS, "resnet")
    return model


def load_imagenet_weights(model: nn.Module, in_chans: int) -> None:
    """Load ResNet18_Weights.IMAGENET1K_V1 into ``model``, adapting conv1 to ``in_chans``."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    try:
        state_dict = weights.get_state_dict(progress=False)
    except OSError as err:  # URLError, ConnectionError, timeouts, an unwritable cache
        raise fetch_error("resnet", weights.url, err) from err
    del state_dict["fc.weight"], state_dict["fc.bias"]
    from timm.models import adapt_input_conv  # here: importing timm takes seconds
    if model.conv1.weight.shape[2:] == state_dict["conv1.weight"].shape[2:]:
        state_dict["conv1.weight"] = adapt_input_conv(in_chans, state_dict["conv1.weight"])
    else:
        del state_dict["conv1.weight"]  # the small-input 3x3 stem keeps its fresh init
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    expected = {"fc.weight", "fc.bias", "conv1.weight"}
    if unexpected or not set(missing) <= expected:
        raise RuntimeError(f"resnet weights do not fit: missing {missing}, unexpected {unexpected}")
