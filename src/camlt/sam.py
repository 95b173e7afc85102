"""Sharpness-aware minimisation (Foret et al. 2021) and ImbSAM's tail-only variant (Zhou et al.
2023), as ``train.sam=sam|imbsam`` with radius ``train.sam_rho``.

SAM descends with the gradient taken at the worst nearby weights, ``w + rho g / ||g||``: flat
minima generalise better, and a rare class, fitted from a few images, sits in the sharpest ones.
ImbSAM spends the sharpness term on the tail classes only (``train.sam_tail_max``: classes with
at most that many training images): the head's loss keeps its plain gradient at ``w``, the tail's
is taken at ``w + e`` with ``e`` from the tail's own gradient. Each step costs a second forward
and backward. The engine hands in the loss as a function (``camlt.engine.sam_step``); nothing
here knows what it computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class SharpnessAware:
    """The ascent to ``w + rho g / ||g||`` (one norm over every trained parameter) and back."""

    def __init__(self, params: Sequence[nn.Parameter], rho: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.rho = rho
        self._origin: list[torch.Tensor] = []

    @torch.no_grad()
    def ascend(self, grads: Sequence[torch.Tensor | None] | None = None) -> None:
        """Move the weights up the gradient (default: each parameter's ``.grad``)."""
        grads = [p.grad for p in self.params] if grads is None else list(grads)
        present = [g for g in grads if g is not None]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in present])) if present else 0
        scale = self.rho / (norm + 1e-12)
        self._origin = [p.detach().clone() for p in self.params]  # w, kept exactly
        for p, g in zip(self.params, grads, strict=True):
            if g is not None:
                p.add_(g * scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Back to exactly the weights the ascent started from (the optimiser steps from there)."""
        for p, origin in zip(self.params, self._origin, strict=True):
            p.copy_(origin)
        self._origin = []


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Undo what a forward pass writes into buffers (batch-norm statistics, CAMC's prototypes):
    the pass at the perturbed weights is a probe, and the step should update them once."""
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)


def tail_classes(counts: Sequence[int], tail_max: int) -> torch.Tensor:
    """(K,) bool: the classes ImbSAM treats as tail (at most ``tail_max`` training images)."""
    return torch.tensor([n <= tail_max for n in counts])


def _clear(params: Sequence[nn.Parameter]) -> None:
    for p in params:
        p.grad = None


def sam_gradients(
    sam: SharpnessAware,
    model: nn.Module,
    loss_at: Callable[[], torch.Tensor],
    check: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """SAM: ``.grad`` = the gradient of ``loss_at()`` at ``w + e``, the weights left at ``w``;
    returns the loss at ``w`` (what the epoch reports), refused by ``check`` before any move."""
    loss = loss_at()
    check(loss)
    loss.backward()
    sam.ascend()
    _clear(sam.params)
    with buffers_kept(model):
        loss_at().backward()
    sam.restore()
    return loss


def imbsam_gradients(
    sam: SharpnessAware,
    model: nn.Module,
    parts_at: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    check: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """ImbSAM: ``.grad`` = the head part's gradient at ``w`` plus the tail part's at ``w + e``,
    ``e`` from the tail part's own gradient; ``parts_at()`` returns (head loss, tail loss)."""
    head, tail = parts_at()
    loss = head + tail
    check(loss)
    head_grads = torch.autograd.grad(head, sam.params, retain_graph=True, allow_unused=True)
    tail_grads = torch.autograd.grad(tail, sam.params, allow_unused=True)
    sam.ascend(tail_grads)
    with buffers_kept(model):
        parts_at()[1].backward()
    sam.restore()
    with torch.no_grad():
        for p, g in zip(sam.params, head_grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)
    return loss
