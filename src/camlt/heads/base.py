"""What every head returns, so the engine treats all heads alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as nnf


@dataclass
class HeadOutput:
    """Logits to classify with; optional auxiliary logits and their loss weight; optional maps."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    aux_weight: float = 0.0
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None  # the pooled feature the classifier saw

    def loss(
        self,
        targets,
        criterion: Callable[..., torch.Tensor] = nnf.cross_entropy,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The head's training loss, the one place its rule is written: the criterion on the
        logits plus, for a head with an auxiliary output (CAMC's z0), ``aux_weight`` times the
        criterion on that. ``rows`` takes the loss of some images of the batch only (their
        ``targets`` given alone)."""
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        loss = criterion(pick(self.logits), targets)
        if self.aux_logits is not None and self.aux_weight:
            loss = loss + self.aux_weight * criterion(pick(self.aux_logits), targets)
        return loss


@runtime_checkable
class NoWeightDecay(Protocol):
    """A module whose named parameters take no weight decay (a learned output scale, per-class
    logit scales): decay would only pull them toward 0, which is not a prior anyone wants."""

    def no_weight_decay(self) -> set[str]:
        """Names of this module's own parameters, as ``named_parameters`` gives them."""
        ...


@runtime_checkable
class MapsHead(Protocol):
    """A head that computes its own maps (CAMC's raw and calibrated CAM, correlation,
    importance); for any other head the raw CAM is computed from its classifier weights."""

    def maps(self, fmap: torch.Tensor, classes: torch.Tensor) -> HeadOutput:
        """The head's output with ``maps`` filled for each image's class in ``classes``."""
        ...
