"""Any timm CNN as a backbone, through its unpooled ``forward_features`` output."""

from __future__ import annotations

import torch
from torch import nn

from camlt.errors import UsageError
from camlt.models.pretrained import load_into


class TimmFeatures(nn.Module):
    """A timm model without pooling and classifier; timm is an optional dependency.

    ``pretrained``: a weights file (timm or efficientnet_pytorch layout, camlt.models.pretrained)
    or ``hub`` for timm's own ImageNet weights, downloaded (the machine must reach the hub)."""

    def __init__(self, name: str, in_channels: int = 3, pretrained: str | None = None) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ImportError("timm backbones need timm: pip install 'camlt[timm]'") from None
        hub = pretrained == "hub"
        try:
            self.net = timm.create_model(
                name, pretrained=hub, num_classes=0, global_pool="", in_chans=in_channels
            )
        except Exception as err:  # timm's or huggingface_hub's download errors, many kinds
            if not hub:
                raise
            raise UsageError(
                f"model.pretrained=hub: timm could not fetch {name}'s weights ({type(err).__name__})"
                "; this machine may not reach the model hub: download the file where it does and "
                "pass model.pretrained=FILE"
            ) from None
        self.pretrained_note = f"model.pretrained: timm's own weights of {name}" if hub else None
        if pretrained and not hub:
            self.pretrained_note = load_into(self.net, pretrained, f"timm/{name}")
        self.out_channels = self.net.num_features

    def stages(self) -> list[nn.Module]:
        """The network's stages (EfficientNet's blocks, a ResNet's layers; model.finetune)."""
        if hasattr(self.net, "blocks"):
            return list(self.net.blocks)
        layers = [getattr(self.net, f"layer{i}", None) for i in range(1, 5)]
        if not all(layers):
            raise UsageError(f"{type(self.net).__name__}: camlt does not know its stages")
        return layers

    def after_stages(self) -> list[nn.Module]:
        """What follows the last stage (EfficientNet's conv_head and bn2): trains with it."""
        after = (getattr(self.net, "conv_head", None), getattr(self.net, "bn2", None))
        return [m for m in after if m is not None]

    def split(self) -> tuple[nn.Sequential, nn.Module, int]:
        """(the stem and every stage but the last, the last stage and what follows it, how many
        stages the first holds): the trunk and an expert's part (model.experts). Known for the
        EfficientNet / MobileNet family (stem, blocks, head conv) and ResNets (stem, layer1..4)."""
        net, shared = self.net, self.stages()[:-1]
        if hasattr(net, "blocks") and hasattr(net, "conv_stem"):
            stem = [net.conv_stem, net.bn1]
        elif hasattr(net, "layer4"):
            stem = [net.conv1, net.bn1, net.act1, net.maxpool]
        else:
            raise UsageError(f"model.experts: camlt does not know {type(net).__name__}'s stem")
        last = nn.Sequential(self.stages()[-1], *self.after_stages())
        return nn.Sequential(*stem, *shared), last, len(shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features(x)
        if features.dim() != 4:
            raise UsageError(
                f"timm model returns {features.dim()}-d features; CAMC needs a CNN map"
            )
        return features
