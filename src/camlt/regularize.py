"""MaxNorm: a projected-gradient bound on the classifier's per-class weight norms (``train.maxnorm``).

Weight balancing (Alshammari et al. 2022) caps the norm of every class weight vector of the
classifier: after each step (or epoch) a vector longer than the threshold is scaled back onto the
ball, one inside it is left exactly as it is. On a long-tailed set the frequent classes grow the
longest vectors, and the cap keeps them from dominating the logits. It is a projection, not a
penalty: the loss never sees it.

The threshold is ``train.maxnorm_threshold``, or, when that is null, the paper's rule evaluated
once when training starts: ``min + 0.1 (max - min)`` of the per-class norms (in a stage 2, of the
stage-1 classifier it starts from). The value is saved in every checkpoint, so a resumed run
projects onto the same ball.
"""

from __future__ import annotations

import torch
from torch import nn

from camlt.errors import UsageError
from camlt.heads import LinearHead

RULE_SHARE = 0.1  # the rule's threshold: this share of the way from the shortest to the longest


def class_weights(head: nn.Module) -> torch.Tensor | None:
    """The (classes, features) weight matrix a norm bound applies to, or None for a head without
    free-length class vectors (normalized and CAMC heads unit-normalise them in the forward)."""
    return head.classifier.weight if isinstance(head, LinearHead) else None


def rule_threshold(weight: torch.Tensor, share: float = RULE_SHARE) -> float:
    """Weight balancing's threshold: ``min + share (max - min)`` of the per-class norms."""
    norms = weight.detach().float().norm(dim=1)
    return float(norms.min() + share * (norms.max() - norms.min()))


@torch.no_grad()
def project_rows(weight: torch.Tensor, threshold: float) -> None:
    """Scale every row longer than ``threshold`` back onto the ball; the others stay bit-identical."""
    norms = weight.float().norm(dim=1, keepdim=True)
    over = norms > threshold
    scaled = (weight.float() * (threshold / norms.clamp(min=1e-12))).to(weight.dtype)
    weight.copy_(torch.where(over, scaled, weight))


class MaxNorm:
    """The projection of one run: when it applies (``step`` or ``epoch``) and onto which ball."""

    def __init__(self, head: nn.Module, when: str, threshold: float | None) -> None:
        weight = class_weights(head)
        if weight is None:
            raise UsageError(
                f"train.maxnorm={when}: the head ({type(head).__name__}) has no linear classifier "
                "whose class weight norms could be bounded; use model.head=linear"
            )
        self.weight, self.when = weight, when
        self.threshold = float(threshold) if threshold is not None else None

    def start(self) -> None:
        """Fix the rule's threshold from the weights as training starts (after a stage 2 has
        loaded its stage-1 classifier); a given or restored threshold stays."""
        if self.threshold is None:
            self.threshold = rule_threshold(self.weight)
            print(f"MaxNorm: threshold {self.threshold:.4f} (min + 0.1 (max - min))", flush=True)

    def after_step(self) -> None:
        if self.when == "step":
            project_rows(self.weight, self.threshold)

    def after_epoch(self) -> None:
        if self.when == "epoch":
            project_rows(self.weight, self.threshold)

    def state_dict(self) -> dict:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])


def build_maxnorm(head: nn.Module, when: str, threshold: float | None) -> MaxNorm | None:
    """The run's MaxNorm, or None when ``train.maxnorm=off``."""
    return None if when == "off" else MaxNorm(head, when, threshold)
