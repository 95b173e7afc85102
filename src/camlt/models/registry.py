"""Backbone registry: configs name a backbone, the registry builds it (after timm's create_model)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from camlt.errors import UsageError
from camlt.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("model.backbone")


def register_backbone(name: str) -> Callable:
    """Decorator adding a factory ``(in_channels=..., **kwargs) -> nn.Module`` under ``name``."""
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    return sorted(BACKBONES) + ["timm/<any timm CNN>"]


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A backbone that maps images to a feature map and exposes ``out_channels``."""
    if name.startswith("timm/"):
        from camlt.models.timm_backbone import TimmFeatures

        return TimmFeatures(name.removeprefix("timm/"), **kwargs)
    if name not in BACKBONES:
        raise UsageError(
            f"model.backbone='{name}': unknown; expected one of {', '.join(list_backbones())}"
        )
    return BACKBONES[name](**kwargs)
