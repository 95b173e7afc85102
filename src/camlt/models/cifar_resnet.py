"""The CIFAR ResNets of He et al. (2016): 3 stages of n basic blocks, widths 16/32/64.

Shortcuts that change shape subsample and zero-pad channels (option A), which keeps ResNet-32
at the 0.46M parameters that the long-tail literature reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from camlt.errors import UsageError
from camlt.models.registry import register_backbone


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes if stride != 1 or in_planes != planes else 0
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Returns the last feature map (B, 64, 8, 8) for 32x32 inputs."""

    def __init__(
        self, depth: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise UsageError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, 2 if i > 0 and b == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.blocks_per_stage = blocks
        self.out_channels = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(F.relu(self.bn1(self.conv1(x))))

    def stages(self) -> list[nn.Module]:
        """The three widths' groups of blocks (model.finetune=last:N)."""
        n, blocks = self.blocks_per_stage, list(self.layers)
        return [nn.Sequential(*blocks[i : i + n]) for i in range(0, len(blocks), n)]

    def split(self) -> tuple[nn.Sequential, nn.Module, int]:
        """(the stem and every stage but the last, the last stage, how many stages the first
        holds): the shared trunk and one expert's part (model.experts)."""
        *shared, last = self.stages()
        return nn.Sequential(self.conv1, self.bn1, nn.ReLU(), *shared), last, len(shared)


def _cifar(depth: int):
    def factory(in_channels: int = 3, pretrained: str | None = None) -> CifarResNet:
        if pretrained:
            raise UsageError("CIFAR ResNets have no pretrained weights; unset model.pretrained")
        return CifarResNet(depth, in_channels)

    return factory


for _depth in (8, 20, 32, 44, 56, 110):
    register_backbone(f"resnet{_depth}")(_cifar(_depth))
