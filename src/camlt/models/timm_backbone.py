"""Any timm CNN as a backbone, through its unpooled ``forward_features`` output."""

from __future__ import annotations

import torch
from torch import nn

from camlt.errors import UsageError


class TimmFeatures(nn.Module):
    """A timm model without pooling and classifier; timm is an optional dependency."""

    def __init__(self, name: str, in_channels: int = 3, pretrained: str | None = None) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ImportError("timm backbones need timm: pip install 'camlt[timm]'") from None
        kwargs = {"pretrained_cfg_overlay": {"file": pretrained}} if pretrained else {}
        self.net = timm.create_model(
            name,
            pretrained=bool(pretrained),
            num_classes=0,
            global_pool="",
            in_chans=in_channels,
            **kwargs,
        )
        self.out_channels = self.net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features(x)
        if features.dim() != 4:
            raise UsageError(
                f"timm model returns {features.dim()}-d features; CAMC needs a CNN map"
            )
        return features
