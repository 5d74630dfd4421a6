"""A small VGG-style CNN: four 3x3 conv layers and two dense layers.

The design follows "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(Simonyan & Zisserman, https://arxiv.org/abs/1409.1556), shrunk for 28x28 to 128x128 images,
with BatchNorm (https://arxiv.org/abs/1502.03167), dropout, and global pooling before the dense
layers (the average and the maximum of each channel, as fastai's AdaptiveConcatPool): the
dense layers see what the convolutions found, not where, so objects anywhere in the frame are
recognised alike. The pooling between the convolutions and the widths follow the image size
(`conv_plan`): larger images are halved more often, so the last map is 4-8 pixels across and
the receptive field covers most of the image at any size. Where things sit in place (centred,
upright garments), where a feature is found tells classes apart: there the dense layers take
the last feature map itself (``head_pool="map"``, the seed's design), which the training run
chooses from the images' layout (recipe.choose_head_pool) and the checkpoint records.
"""
import torch
from torch import nn

from errors import OptionError


def conv_bn_relu(in_chs: int, out_chs: int) -> nn.Sequential:
    """3x3 same-padding conv, BatchNorm, ReLU (the conv bias is redundant before BatchNorm)."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def conv_plan(img_size: int) -> list[tuple[int, bool]]:
    """(width, halve after it) for each of the four conv layers at `img_size`: two halvings up to 32 px (the last
    map 7-8 px), one more for every doubling past that, up to one after every conv; the width doubles at each
    halving from 64 (32 for inputs that are halved four times, which keeps a step's cost in check)."""
    halvings = 2 + sum(img_size >= s for s in (48, 96))
    pools = {2: (False, True, False, True), 3: (True, True, True, False), 4: (True, True, True, True)}[halvings]
    width = 64 if halvings < 4 else 32
    plan = []
    for pool in pools:
        plan.append((width, pool))
        width = min(width * 2, 256) if pool else width
    return plan


class ConcatPool(nn.Module):
    """Each channel's global average and global maximum (what was found, anywhere), and its averages over the
    image's four quadrants (roughly where): (B, C, H, W) -> (B, 6C). Position still helps where objects sit in
    place (Fashion-MNIST's garments), and no longer decides where they do not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quadrants = nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.cat([x.mean((2, 3)), x.amax((2, 3)), quadrants], dim=1)


# The "map" head's input: the last feature map, averaged down to at most this many pixels a side (28 px inputs are
# already 7 across there).
MAP_SIDE = 7
HEAD_POOLS = ("global", "map")


def map_pool(last_side: int) -> tuple[nn.Module, int]:
    """The "map" head's pooling for a last feature map `last_side` pixels across, and the side it gives."""
    if last_side <= MAP_SIDE:
        return nn.Flatten(), last_side
    return nn.Sequential(nn.AdaptiveAvgPool2d(MAP_SIDE), nn.Flatten()), MAP_SIDE


class CNN(nn.Module):
    """Four conv layers (with halvings by `conv_plan`), global pooling ("global") or the last map ("map"), then
    Linear-BN-ReLU-Dropout-Linear; returns logits."""

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, hidden: int = 512,
                 dropout: float = 0.3, head_pool: str = "global"):
        super().__init__()
        if head_pool not in HEAD_POOLS:
            raise ValueError(f"unknown head pooling {head_pool!r}; known: {', '.join(HEAD_POOLS)}")
        layers, chans, side = [], in_chans, img_size
        # No dropout between the conv blocks: on a CPU its random masks cost a large share of a training step
        # (bench/profile_step.py measures it), and the model reached its accuracy sooner without them.
        for width, pool in conv_plan(img_size):
            layers.append(conv_bn_relu(chans, width))
            if pool:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            chans = width
        self.features = nn.Sequential(*layers)
        if head_pool == "map":
            self.pool, side = map_pool(side)
            features = chans * side * side
        else:
            self.pool, features = ConcatPool(), 6 * chans
        self.head = nn.Sequential(
            nn.Linear(features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_cnn(num_classes: int, in_chans: int, img_size: int, pretrained: bool = False,
              dropout: float = 0.3, hidden: int = 512, head_pool: str = "global") -> nn.Module:
    """Build the CNN for ``img_size`` (any size >= 4 works), its head pooling ``head_pool`` (HEAD_POOLS)."""
    if pretrained:
        raise OptionError("no pretrained weights exist for 'cnn': it trains from scratch", option="pretrained",
                          value=pretrained)
    return CNN(num_classes, in_chans, img_size=img_size, hidden=hidden, dropout=dropout, head_pool=head_pool)

