"""A ResNet-18 cut to its first stage: the stem and ``layer1``'s BasicBlocks, batchnorm on.

"Start with a small architecture — a ResNet-18 cut to its first blocks": this is ResNet-18
(He et al. 2015) built the way torchvision builds it — ``BasicBlock`` (conv3x3-BN-ReLU-conv3x3-BN
plus the identity, then ReLU), Kaiming-normal init (fan_out) for convs, BN weight 1 and bias 0,
an optional zero-init of each block's last BN — but with the stem and ``layer1`` only, then
global average pooling and the classifier. Written here rather than imported: torchvision's
wheel on the package index is a CUDA build whose compiled ops do not load against the CPU
torch build CI uses.

For the project's 24×24 shapes the stem defaults to a 3×3 stride-1 convolution (the CIFAR
variant); ``stem_kernel: 7, stem_stride: 2`` gives ImageNet's stem, which would leave 6×6
pixels after its max-pool here.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batchnorm else nn.Identity()

        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = norm(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetSmall(nn.Module):
    """Stem, ``blocks`` BasicBlocks at ``width`` channels (ResNet-18's layer1: 2 at 64), pool, fc.

    Tricks for ``cockpit ablate --tricks``: ``dropout`` before the classifier (off), ``width``,
    ``blocks``; ``batchnorm`` is on, as the recipe's ResNet has it (the init stage warns)."""

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 5,
        width: int = 32,
        blocks: int = 2,
        stem_kernel: int = 3,
        stem_stride: int = 1,
        batchnorm: bool = True,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels,
            width,
            stem_kernel,
            stride=stem_stride,
            padding=stem_kernel // 2,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(
            *[BasicBlock(width, width, batchnorm=batchnorm) for _ in range(blocks)]
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width * BasicBlock.expansion, classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock) and isinstance(m.bn2, nn.BatchNorm2d):
                    nn.init.constant_(m.bn2.weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))
