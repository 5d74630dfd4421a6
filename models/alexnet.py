"""AlexNet: five conv layers and three dense layers with ReLU and dropout.

"ImageNet Classification with Deep Convolutional Neural Networks" (Krizhevsky et al., 2012,
https://papers.nips.cc/paper/4824), in the single-tower form of torchvision's ``alexnet``,
https://arxiv.org/abs/1404.5997. For inputs under 128 pixels the 11x11 stride-4 stem would
shrink the image to almost nothing, so small inputs get a 3x3 stride-1 stem and two poolings.
"""
import torch
import torchvision
from torch import nn

from errors import OptionError

from .weights import (IMAGENET_MEAN, IMAGENET_STD, WeightsInfo, fetch_error, load_into, load_local_weights,
                      weights_source)


def conv_relu(in_chs: int, out_chs: int, kernel: int, stride: int = 1,
              batch_norm: bool = False) -> list:
    layers = [nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_chs))
    return layers + [nn.ReLU(inplace=True)]


class AlexNet(nn.Module):
    """AlexNet; ``small=True`` is the variant for 28x28 to 63x63 inputs. Returns logits."""

    def __init__(self, num_classes: int, in_chans: int = 3, small: bool = False,
                 hidden: int = 4096, dropout: float = 0.5, batch_norm: bool = False):
        super().__init__()
        bn = batch_norm
        if small:
            layers = [
                *conv_relu(in_chans, 64, 3, batch_norm=bn), nn.MaxPool2d(2),
                *conv_relu(64, 192, 3, batch_norm=bn), nn.MaxPool2d(2),
            ]
            pool_size = 3
        else:
            layers = [
                *conv_relu(in_chans, 64, 11, stride=4, batch_norm=bn), nn.MaxPool2d(3, 2),
                *conv_relu(64, 192, 5, batch_norm=bn), nn.MaxPool2d(3, 2),
            ]
            pool_size = 6
        layers += [
            *conv_relu(192, 384, 3, batch_norm=bn),
            *conv_relu(384, 256, 3, batch_norm=bn),
            *conv_relu(256, 256, 3, batch_norm=bn),
        ]
        if not small:
            layers.append(nn.MaxPool2d(3, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256 * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


WEIGHTS = WeightsInfo(IMAGENET_MEAN, IMAGENET_STD, classifier="head.7", first_conv="features.0")


def _torchvision_key(key: str) -> str:
    """torchvision's alexnet names its dense layers classifier.1/.4/.6; ours are head.2/.5/.7."""
    for theirs, ours in (("classifier.1.", "head.2."), ("classifier.4.", "head.5."), ("classifier.6.", "head.7.")):
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def build_alexnet(num_classes: int, in_chans: int, img_size: int, pretrained=False,
                  hidden: int | None = None, dropout: float = 0.5,
                  batch_norm: bool = False) -> nn.Module:
    """Build AlexNet, picking the small-input variant when ``img_size < 128``. ``pretrained`` (True/"imagenet"
    downloads, a path reads a local copy) loads torchvision's ImageNet weights into the classic variant; the
    small variant has a 3x3 stem, a 3x3 second conv and 1024-wide dense layers, so only 3 of its 8 layers
    would match them: it has none."""
    small = img_size < 128  # the classic stem leaves a 64-96 px input at 1x1 before the 6x6 pooling
    source = weights_source(pretrained)
    if source is not None and small:
        raise OptionError("no pretrained weights exist for 'alexnet' below 128 px (its small-image variant has "
                          "other layers than the published AlexNet): there it trains from scratch",
                          option="img_size", value=img_size, fix="give 128 or more")
    if source is not None and (batch_norm or hidden not in (None, 4096)):
        raise ValueError("no pretrained weights exist for 'alexnet' with batch_norm or another hidden width than "
                         "4096 (the published AlexNet's)")
    if hidden is None:
        # 4096 is the paper's width; 1024 keeps the small variant (~6M parameters) trainable on a CPU.
        hidden = 1024 if small else 4096
    model = AlexNet(num_classes, in_chans, small=small, hidden=hidden, dropout=dropout, batch_norm=batch_norm)
    if source == "imagenet":
        weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except OSError as err:
            raise fetch_error("alexnet", weights.url, err) from err
        load_into(model, {_torchvision_key(k): v for k, v in state.items()}, WEIGHTS, "alexnet", source,
                  f"the published file {weights.url}")
    elif source is not None:
        load_local_weights(model, source, WEIGHTS, "alexnet", rename=_torchvision_key)
    return model
