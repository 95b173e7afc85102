"""What every head returns, so the engine treats all heads alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as nnf
from torch import nn


@dataclass
class HeadOutput:
    """Logits to classify with; optional auxiliary logits and their loss weight; optional maps."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    aux_weight: float = 0.0
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None  # the pooled feature the classifier saw
    experts: list[HeadOutput] | None = None  # a multi-expert model's experts, each its own output

    def loss(
        self,
        targets,
        criterion: Callable[..., torch.Tensor] = nnf.cross_entropy,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The head's training loss, the one place its rule is written: the criterion on the
        logits plus, for a head with an auxiliary output (CAMC's z0), ``aux_weight`` times the
        criterion on that. ``rows`` takes the loss of some images of the batch only (their
        ``targets`` given alone). A multi-expert output's criterion is the experts' joint loss
        (camlt.losses.ExpertLosses), which applies this rule to each expert with its own loss."""
        if self.experts is not None:
            if not isinstance(criterion, ExpertsCriterion):
                raise TypeError("a multi-expert output needs the experts' loss (ExpertLosses)")
            return criterion.experts_loss(self.experts, targets, rows)
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        loss = criterion(pick(self.logits), targets)
        if self.aux_logits is not None and self.aux_weight:
            loss = loss + self.aux_weight * criterion(pick(self.aux_logits), targets)
        return loss


def classifier_cam(
    head: nn.Module, fmap: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor | None:
    """The raw CAM of a head without maps, (B, h, w) for each image's class; None if unknown."""
    clf = getattr(head, "classifier", None)
    fmap = fmap.float()
    if isinstance(clf, nn.Linear):
        weight = clf.weight.float()[classes]  # (B, C)
        return torch.einsum("bchw,bc->bhw", fmap, weight)
    if hasattr(clf, "unit_weight"):  # NormalizedClassifier: s cos(W, f0) = s/|f0| mean_u <F_u, ŵ>
        weight = clf.unit_weight()[classes]
        return torch.einsum("bchw,bc->bhw", fmap, weight)
    return None


def whole_batch(*parts: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor gathered over every process under torch.distributed (equal batch sizes).

    Every rank then makes the same update of a head's running statistics (CAMC's prototypes,
    ProCo's class means) from the whole global batch, as one process would; otherwise DDP's
    buffer broadcast would keep rank 0's update alone.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(parts)
    out = []
    for t in parts:
        pieces = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, t.contiguous())
        out.append(torch.cat(pieces))
    return out


@runtime_checkable
class ExpertsCriterion(Protocol):
    """The loss of a multi-expert model: each expert's own loss, and what joins them."""

    def experts_loss(
        self, outputs: list[HeadOutput], targets, rows: torch.Tensor | None
    ) -> torch.Tensor: ...


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
