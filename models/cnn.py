"""A small VGG-style CNN: four 3x3 conv layers and two dense layers.

The design follows "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(Simonyan & Zisserman, https://arxiv.org/abs/1409.1556), shrunk for 28x28 to 64x64 images
such as Fashion-MNIST, with BatchNorm (https://arxiv.org/abs/1502.03167) and dropout.
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


class CNN(nn.Module):
    """conv-conv-pool, conv-conv-pool, then Linear-BN-ReLU-Dropout-Linear; returns logits."""

    def __init__(self, num_classes: int, in_chans: int = 1, widths: tuple = (64, 128),
                 hidden: int = 512, dropout: float = 0.3, pool_size: int = 7, img_size: int = 28):
        super().__init__()
        w1, w2 = widths
        # No dropout between the conv blocks: on a CPU its random masks cost a large share of a training step
        # (bench/profile_step.py measures it), and the model reached its accuracy sooner without them.
        self.features = nn.Sequential(
            conv_bn_relu(in_chans, w1), conv_bn_relu(w1, w1), nn.MaxPool2d(2),
            conv_bn_relu(w1, w2), conv_bn_relu(w2, w2), nn.MaxPool2d(2),
        )
        # Larger inputs are averaged down to pool_size x pool_size, keeping the head the same size for
        # any img_size; 28x28 inputs are already 7x7 there, and skip the pool's cost.
        self.pool = nn.AdaptiveAvgPool2d(pool_size) if img_size // 4 != pool_size else nn.Identity()
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w2 * pool_size * pool_size, hidden, bias=False),
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
              dropout: float = 0.3, hidden: int = 512) -> nn.Module:
    """Build the CNN for ``img_size`` (any size >= 4 works)."""
    if pretrained:
        raise OptionError("no pretrained weights exist for 'cnn': it trains from scratch", option="pretrained",
                          value=pretrained)
    return CNN(num_classes, in_chans, hidden=hidden, dropout=dropout, img_size=img_size)
