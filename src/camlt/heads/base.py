"""What every head returns, so the engine treats all heads alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class HeadOutput:
    """Logits to classify with; optional auxiliary logits and their loss weight; optional maps."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    aux_weight: float = 0.0
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None  # the pooled feature the classifier saw
