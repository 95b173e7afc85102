"""Classification heads on a backbone's feature map, built by name from the model config."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from omegaconf import DictConfig
from torch import nn

from camlt.heads.base import HeadOutput
from camlt.heads.camc import CAMCHead
from camlt.heads.linear import LinearHead
from camlt.heads.normalized import NormalizedClassifier, NormalizedHead

__all__ = [
    "CAMCHead",
    "HEADS",
    "HeadOutput",
    "LinearHead",
    "NormalizedClassifier",
    "NormalizedHead",
    "build_head",
]

HeadFactory = Callable[[int, int, DictConfig, Sequence[int]], nn.Module]

HEADS: dict[str, HeadFactory] = {
    "linear": lambda c, k, m, counts: LinearHead(c, k),
    "normalized": lambda c, k, m, counts: NormalizedHead(c, k, m.scale, m.learn_scale),
    "camc": CAMCHead.from_config,
}


def build_head(
    in_features: int, num_classes: int, model_cfg: DictConfig, class_counts: Sequence[int]
) -> nn.Module:
    """The head ``model_cfg.head`` names; class counts serve heads that use the training prior."""
    if model_cfg.head not in HEADS:
        raise ValueError(
            f"model.head='{model_cfg.head}': unknown; expected one of {', '.join(HEADS)}"
        )
    return HEADS[model_cfg.head](in_features, num_classes, model_cfg, class_counts)
