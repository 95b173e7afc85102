"""Backbone registry: configs name a backbone, the registry builds it (after timm's create_model)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable:
    """Decorator adding a factory ``(in_channels=..., **kwargs) -> nn.Module`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone '{name}' registered twice")
        _BACKBONES[name] = factory
        return factory

    return wrap


def list_backbones() -> list[str]:
    return sorted(_BACKBONES) + ["timm/<any timm CNN>"]


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A backbone that maps images to a feature map and exposes ``out_channels``."""
    if name.startswith("timm/"):
        from camlt.models.timm_backbone import TimmFeatures

        return TimmFeatures(name.removeprefix("timm/"), **kwargs)
    if name not in _BACKBONES:
        raise ValueError(
            f"model.backbone='{name}': unknown; expected one of {', '.join(list_backbones())}"
        )
    return _BACKBONES[name](**kwargs)
