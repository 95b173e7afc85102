"""Batch mixing for training: mixup, CutMix and Remix (``train.mix``).

Each mixes every image of a batch with another image of the same batch (a random pairing) by one
factor ``l ~ Beta(alpha, alpha)`` drawn per batch, and returns ``MixedTargets``, which every loss
of ``camlt.losses`` accepts. Remix mixes the images as mixup does but moves the label weight to the
rarer class of a pair (Chou et al. 2020): with counts n_i, n_j and ``kappa``, ``tau``,

- ``n_i / n_j >= kappa`` and ``l < tau``: the label is wholly j's (``l_y = 0``);
- ``n_i / n_j <= 1 / kappa`` and ``1 - l < tau``: the label is wholly i's (``l_y = 1``);
- otherwise ``l_y = l``.

We do not use torchvision.transforms.v2's MixUp / CutMix: they draw from the global generator and
return dense soft labels, so neither Remix's per-pair rule nor a loss's per-class weights (class-
balanced, DRW, LDAM's margins) could be applied. Every draw here comes from the generator the
engine seeds with (seed, epoch, step), so a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camlt.errors import UsageError
from camlt.losses import MixedTargets
from camlt.registry import Registry


@dataclass(frozen=True)
class MixSettings:
    """``train.mix*`` of a config."""

    kind: str  # a name of MIX_FUNCTIONS
    alpha: float = 1.0
    prob: float = 1.0  # share of batches mixed
    stop_epoch: int | None = None  # 0-based epoch from which batches are no longer mixed
    own: Any = None  # the mix's own settings (RemixSettings), where it has some

    def active(self, epoch: int) -> bool:
        return self.stop_epoch is None or epoch < self.stop_epoch


def beta_sample(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), seeded from ``generator`` (torch's Beta sampler only draws
    from the global generator, numpy's takes a seed)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cut_box(h: int, w: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """CutMix's box: side ratio sqrt(1 - lam), centred uniformly, clipped to the image."""
    ratio = (1.0 - lam) ** 0.5
    ch, cw = int(h * ratio), int(w * ratio)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return y0, y1, x0, x1


def remix_weights(
    lam: float, a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, kappa: float, tau: float
) -> torch.Tensor:
    """Remix's label weight of ``a`` per pair (images mixed as ``lam * a + (1 - lam) * b``)."""
    ratio = counts[a].double() / counts[b].double()
    weights = torch.full(a.shape, lam, dtype=torch.float32)
    weights[(ratio >= kappa) & (lam < tau)] = 0.0
    weights[(ratio <= 1.0 / kappa) & (1.0 - lam < tau)] = 1.0
    return weights


@dataclass(frozen=True)
class Pairing:
    """One step's draws: the mixing factor, each image's partner, and the generator for more."""

    lam: float
    perm: torch.Tensor
    generator: torch.Generator
    counts: torch.Tensor
    settings: MixSettings


def mixup(images: torch.Tensor, labels: torch.Tensor, p: Pairing):
    """Images and labels mixed by one factor."""
    mixed = p.lam * images + (1.0 - p.lam) * images[p.perm]
    return mixed, torch.full(labels.shape, p.lam, dtype=torch.float32)


def cutmix(images: torch.Tensor, labels: torch.Tensor, p: Pairing):
    """A box of the partner pasted in; the label weight is the area kept."""
    h, w = images.shape[2], images.shape[3]
    y0, y1, x0, x1 = cut_box(h, w, p.lam, p.generator)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[p.perm, :, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, torch.full(labels.shape, kept, dtype=torch.float32)


def remix(images: torch.Tensor, labels: torch.Tensor, p: Pairing):
    """Images mixed as mixup; the label weight moved to the rarer class of a pair."""
    mixed = p.lam * images + (1.0 - p.lam) * images[p.perm]
    a, b = labels.cpu(), labels[p.perm].cpu()
    s = p.settings
    return mixed, remix_weights(p.lam, a, b, p.counts, s.own.kappa, s.own.tau)


@dataclass
class RemixSettings:
    """``train.remix``: the count ratio from which the label goes wholly to the rarer class,
    and the mixing factor below which it does (Chou et al.)."""

    kappa: float = 3.0
    tau: float = 0.5

    def check(self, section: str) -> None:
        number = (int, float)
        if not (isinstance(self.kappa, number) and self.kappa >= 1):
            raise UsageError(f"{section}.kappa={self.kappa!r}: must be a number >= 1")
        if not (isinstance(self.tau, number) and 0 <= self.tau <= 1):
            raise UsageError(f"{section}.tau={self.tau!r}: must be a number in [0, 1]")


MIX_FUNCTIONS = Registry(
    "train.mix",
    {"mixup": mixup, "cutmix": cutmix, "remix": remix},
    settings={"remix": RemixSettings},
)


class BatchMixer:
    """Mixes training batches by ``MixSettings``; the engine calls it once per step."""

    def __init__(self, settings: MixSettings, class_counts: Sequence[int], seed: int) -> None:
        self.mix = MIX_FUNCTIONS.factory(settings.kind)
        self.settings = settings
        self.counts = torch.as_tensor(list(class_counts), dtype=torch.int64)
        self.seed = seed

    def generator(self, epoch: int, step: int) -> torch.Generator:
        """The draws of one step depend on (seed, epoch, step) alone, as the loader's do."""
        key = ((self.seed * 1_000_003 + epoch) * 100_003 + step) % 2**63
        return torch.Generator().manual_seed(key)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | MixedTargets]:
        s = self.settings
        if not s.active(epoch):
            return images, labels
        gen = self.generator(epoch, step)
        if s.prob < 1.0 and float(torch.rand(1, generator=gen)) >= s.prob:
            return images, labels
        lam = beta_sample(s.alpha, gen)
        perm = torch.randperm(len(labels), generator=gen).to(labels.device)
        mixed, weights = self.mix(images, labels, Pairing(lam, perm, gen, self.counts, s))
        if images.is_contiguous(memory_format=torch.channels_last):
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        return mixed, MixedTargets(labels, labels[perm], weights.to(labels.device))
