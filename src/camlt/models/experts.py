"""Multi-expert models (RIDE, SADE, BalPoE): one trunk, several experts (``model.experts=N``).

The backbone's stages but the last run once and are shared; each expert is its own copy of the
last stage and its own head (any of camlt's heads). Each expert is trained by its own loss
(camlt.losses.ExpertLosses). The prediction is the weighted mean of the experts' log-probabilities,
``sum_i w_i log softmax(z_i)``: with equal weights this is BalPoE's product of experts, and since
a per-image constant does not change a softmax it ranks classes exactly as the weighted sum of
logits that RIDE and SADE use. The weights are a buffer of the model, equal unless test-time
aggregation (``camlt adapt``, camlt.adapt) learned others, so a checkpoint, eval, predict and an
export all use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camlt.errors import UsageError
from camlt.heads.base import HeadOutput, MapsHead, classifier_cam


class Trunk(nn.Module):
    """The shared stages: a backbone's body up to its last stage. ``stages()`` lists the stages
    it holds (model.finetune counts them)."""

    def __init__(self, body: nn.Sequential, stage_count: int) -> None:
        super().__init__()
        self.body = body
        self.stage_count = stage_count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self) -> list[nn.Module]:
        return list(self.body)[len(self.body) - self.stage_count :]


def split_backbone(backbone: nn.Module) -> tuple[Trunk, nn.Module]:
    """The backbone as (its shared trunk, its last stage and what follows it); the two in a row
    compute what the backbone does."""
    if not hasattr(backbone, "split"):
        raise UsageError(
            f"model.experts: {type(backbone).__name__} does not say where its last stage begins; "
            "experts need a CIFAR ResNet, a torchvision ResNet or a timm ResNet / EfficientNet"
        )
    body, last, stage_count = backbone.split()
    return Trunk(body, stage_count), last


def aggregate(logits: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i log softmax(z_i)``: the experts' joint prediction, as logits."""
    stacked = torch.stack([F.log_softmax(z.float(), dim=1) for z in logits])
    return torch.einsum("e,ebk->bk", weights.float().to(stacked.device), stacked)


class ExpertHeads(nn.Module):
    """The experts on the trunk's map: each a last stage and a head. Its output's ``logits`` are
    the aggregated prediction and ``experts`` each expert's own output, which the loss uses."""

    def __init__(self, stages: Sequence[nn.Module], heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(stages) != len(heads) or len(stages) < 2:
            raise UsageError(f"model.experts={len(stages)}: needs 2 or more experts")
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.register_buffer("expert_weights", torch.full((len(heads),), 1.0 / len(heads)))

    def __len__(self) -> int:
        return len(self.heads)

    def expert_outputs(
        self, fmap: torch.Tensor, targets: torch.Tensor | None = None
    ) -> list[HeadOutput]:
        return [
            head(stage(fmap), targets) for stage, head in zip(self.stages, self.heads, strict=True)
        ]

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        outputs = self.expert_outputs(fmap, targets)
        logits = aggregate([o.logits for o in outputs], self.expert_weights)
        return HeadOutput(logits, experts=outputs)

    def set_weights(self, weights: torch.Tensor) -> None:
        """Test-time aggregation's weights (non-negative, summing to 1)."""
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != self.expert_weights.shape or (weights < 0).any():
            raise UsageError(f"expert weights {weights.tolist()}: one >= 0 number an expert")
        self.expert_weights.copy_(weights / weights.sum())

    def describe(self) -> dict:
        """The weights the prediction used, for the metrics (learned ones: camlt adapt)."""
        return {"expert_weights": [round(w, 6) for w in self.expert_weights.tolist()]}

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to heads that change with it (CAMC's warm-up)."""
        for head in self.heads:
            if hasattr(head, "set_epoch"):
                head.set_epoch(epoch)

    def maps(self, fmap: torch.Tensor, classes: torch.Tensor) -> HeadOutput:
        """Each map the experts' heads give, weighted as the prediction weights the experts (a
        map only some experts have is left out); a plain head's is its raw CAM."""
        per_expert = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            own = stage(fmap)
            if isinstance(head, MapsHead):
                per_expert.append(head.maps(own, classes).maps)
            else:
                cam = classifier_cam(head, own, classes)
                per_expert.append({} if cam is None else {"raw_cam": cam})
        names = set.intersection(*(set(m) for m in per_expert))
        weights = self.expert_weights
        maps = {
            n: sum(w * m[n].float() for w, m in zip(weights, per_expert, strict=True))
            for n in names
        }
        return HeadOutput(self(fmap).logits, maps=maps)
