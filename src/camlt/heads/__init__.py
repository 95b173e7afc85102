"""Classification heads on a backbone's feature map, built by name from the model config.

Each head's module registers it in ``HEADS`` (camlt.heads.registry) with its own settings; importing
the package registers them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig
from torch import nn

from camlt.heads.base import HeadOutput
from camlt.heads.camc import CAMCHead, CAMCSettings
from camlt.heads.linear import LinearHead
from camlt.heads.normalized import NormalizedClassifier, NormalizedHead
from camlt.heads.proco import ProCoHead, ProCoSettings
from camlt.heads.registry import HEADS

__all__ = [
    "CAMCHead",
    "CAMCSettings",
    "HEADS",
    "HeadOutput",
    "LinearHead",
    "NormalizedClassifier",
    "NormalizedHead",
    "ProCoHead",
    "ProCoSettings",
    "build_head",
    "logit_scale",
]

# Heads whose class vectors are unit length in the forward: a norm bound (MaxNorm) changes nothing.
UNIT_NORM_HEADS = ("normalized", "camc")


def logit_scale(model_cfg: DictConfig) -> float:
    """What a unit of cosine is worth in logits: the scale s of a unit-norm head, 1 for a linear
    one (LDAM's margins are given in cosine units)."""
    return float(model_cfg.scale) if model_cfg.head in UNIT_NORM_HEADS else 1.0


def build_head(
    in_features: int, num_classes: int, model_cfg: DictConfig, class_counts: Sequence[int]
) -> nn.Module:
    """The head ``model_cfg.head`` names; class counts serve heads that use the training prior."""
    return HEADS.factory(model_cfg.head)(in_features, num_classes, model_cfg, class_counts)
