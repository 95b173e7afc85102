"""Backbones (feature maps) and the classifier that joins a backbone to a head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from camlt.heads import HeadOutput, build_head
from camlt.models import cifar_resnet, torchvision_backbones  # noqa: F401  (registration)
from camlt.models.experts import ExpertHeads, split_backbone
from camlt.models.pretrained import weights_source
from camlt.models.registry import create_backbone, list_backbones, register_backbone

__all__ = [
    "LongTailClassifier",
    "build_model",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]


class LongTailClassifier(nn.Module):
    """Backbone feature map -> head; ``forward`` returns a HeadOutput.

    ``input_size`` (``model.input_size``) resizes every input inside the model, so a pretrained
    backbone sees the size it was trained at (224 for ImageNet weights) whatever the data's own
    (Fashion-MNIST's 28 padded to 32): training, eval, predict, maps and export alike."""

    def __init__(self, backbone: nn.Module, head: nn.Module, input_size: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_size = input_size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map of a batch, at the model's input size."""
        if self.input_size and images.shape[-2:] != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return self.backbone(images)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        return self.head(self.features(images), targets)


def build_model(
    model_cfg: DictConfig, num_classes: int, in_channels: int, class_counts: Sequence[int]
) -> LongTailClassifier:
    """The backbone and head the model section names; with ``model.experts`` N > 1, a shared
    trunk and N experts (camlt.models.experts), each from a backbone of its own random start."""
    experts = OmegaConf.select(model_cfg, "experts", default=1)
    weights = weights_source(model_cfg.pretrained)  # resolved once, for every expert
    backbones = [
        create_backbone(model_cfg.backbone, in_channels=in_channels, pretrained=weights)
        for _ in range(experts)
    ]
    heads = [build_head(b.out_channels, num_classes, model_cfg, class_counts) for b in backbones]
    size = OmegaConf.select(model_cfg, "input_size", default=None)
    if experts == 1:
        model = LongTailClassifier(backbones[0], heads[0], size)
    else:
        parts = [split_backbone(b) for b in backbones]
        trunk = parts[0][0]
        trunk.pretrained_note = getattr(backbones[0], "pretrained_note", None)
        model = LongTailClassifier(trunk, ExpertHeads([last for _, last in parts], heads), size)
    if OmegaConf.select(model_cfg, "init", default="camlt") == "fan_in":
        reference_init(model)
    return model


def reference_init(model: nn.Module) -> None:
    """kaiming normal (fan_in) on every conv and linear weight, as LDAM-DRW's CIFAR ResNets
    start (``model.init=fan_in``), for reproducing a reference row."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight)
