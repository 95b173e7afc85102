"""torchvision ResNet / ResNeXt backbones cut before global pooling, so a head sees the map."""

from __future__ import annotations

import torch
from torch import nn

from camlt.models.pretrained import load_into
from camlt.models.registry import register_backbone

TORCHVISION_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
)


class TorchvisionFeatures(nn.Module):
    """Everything of a torchvision ResNet up to layer4; output (B, C, H/32, W/32)."""

    def __init__(self, name: str, in_channels: int = 3, pretrained: str | None = None) -> None:
        super().__init__()
        import torchvision  # here, not at module level: it costs seconds of every CLI start

        net = getattr(torchvision.models, name)(weights=None)
        self.pretrained_note = load_into(net, pretrained, name) if pretrained else None
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.body = nn.Sequential(
            net.conv1,
            net.bn1,
            net.relu,
            net.maxpool,
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.out_channels = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self) -> list[nn.Module]:
        """layer1 .. layer4 (model.finetune=last:N)."""
        return list(self.body)[4:]

    def split(self) -> tuple[nn.Sequential, nn.Module, int]:
        """(stem and layer1 .. layer3, layer4, 3): the trunk and an expert's part (model.experts)."""
        return nn.Sequential(*list(self.body)[:-1]), self.body[-1], 3


for _name in TORCHVISION_NAMES:
    register_backbone(_name)(lambda name=_name, **kw: TorchvisionFeatures(name, **kw))
