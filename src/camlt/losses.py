"""Training losses, built by name; each maps (logits, targets) to a scalar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn


class CrossEntropy(nn.Module):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets)


LossFactory = Callable[[DictConfig, Sequence[int]], nn.Module]

LOSSES: dict[str, LossFactory] = {
    "ce": lambda cfg, counts: CrossEntropy(),
}


def build_loss(loss_cfg: DictConfig, class_counts: Sequence[int]) -> nn.Module:
    """The loss ``loss_cfg.name`` names; class counts serve the re-weighting losses."""
    if loss_cfg.name not in LOSSES:
        raise ValueError(
            f"loss.name='{loss_cfg.name}': unknown; expected one of {', '.join(LOSSES)}"
        )
    return LOSSES[loss_cfg.name](loss_cfg, class_counts)
