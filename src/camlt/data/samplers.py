"""Class-aware samplers: which training images an epoch draws, as ``(epoch, generator) -> indices``.

Each sampler gives class c a share p_c of the epoch's draws (one epoch = as many draws as there
are training images, so the schedule's steps stay the same):

- instance: p_c proportional to n_c, every image once (the plain shuffle);
- class: p_c = 1 / K (class-balanced);
- sqrt: p_c proportional to sqrt(n_c) (square-root sampling);
- progressive: (1 - t/T) * instance + (t/T) * class at epoch t of T (Kang et al.).

The number of draws per class is the share rounded so the totals match (largest remainders),
not a random multinomial count, so every epoch hits its target frequencies exactly up to one
draw. Within a class, images are drawn from reshuffled passes over the class (each image once
before any repeats). Everything depends only on the generator, which the loader seeds from
(seed, epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from camlt.errors import UsageError
from camlt.registry import Registry


def class_shares(counts: Sequence[int], power: float) -> torch.Tensor:
    """p_c proportional to n_c ** power: 1 instance-balanced, 0.5 square-root, 0 class-balanced."""
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    weights = n**power
    return weights / weights.sum()


def allocate(shares: torch.Tensor, total: int) -> torch.Tensor:
    """Integer draws per class summing to ``total``, each within one of ``shares * total``."""
    exact = shares * total
    draws = exact.floor().long()
    missing = total - int(draws.sum())
    if missing > 0:  # largest fractional parts first; ties to the lower class index
        order = torch.argsort(exact - draws, descending=True, stable=True)
        draws[order[:missing]] += 1
    return draws


class ClassAwareSampler:
    """Draws each class's allotted number of images; a subclass says how shares evolve."""

    def __init__(
        self, labels: torch.Tensor, num_classes: int | None = None, num_samples: int | None = None
    ) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes = num_classes or (int(self.labels.max()) + 1 if len(self.labels) else 0)
        self.members = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]
        empty = [c for c, m in enumerate(self.members) if len(m) == 0]
        if empty:
            raise UsageError(f"sampler: classes {empty} have no training image")
        self.counts = [len(m) for m in self.members]
        self.num_samples = num_samples or len(self.labels)

    def shares(self, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def _draw_from(self, members: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """``k`` images of one class: whole reshuffled passes, then part of one more."""
        passes = -(-k // len(members))
        order = [members[torch.randperm(len(members), generator=generator)] for _ in range(passes)]
        return torch.cat(order)[:k] if order else members[:0]

    def __call__(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        draws = allocate(self.shares(epoch), self.num_samples)
        picked = [
            self._draw_from(m, int(k), generator) for m, k in zip(self.members, draws, strict=True)
        ]
        idx = torch.cat(picked)
        return idx[torch.randperm(len(idx), generator=generator)]


class PowerSampler(ClassAwareSampler):
    """Fixed shares p_c proportional to n_c ** power."""

    def __init__(self, labels: torch.Tensor, power: float, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        self.power = power

    def shares(self, epoch: int) -> torch.Tensor:
        return class_shares(self.counts, self.power)


class ProgressiveSampler(ClassAwareSampler):
    """Shares moving linearly from instance- to class-balanced over ``epochs`` epochs."""

    def __init__(self, labels: torch.Tensor, epochs: int, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        self.epochs = max(1, epochs)

    def shares(self, epoch: int) -> torch.Tensor:
        t = min(epoch, self.epochs) / self.epochs
        return (1 - t) * class_shares(self.counts, 1.0) + t * class_shares(self.counts, 0.0)


def build_sampler(
    name: str, labels: torch.Tensor, epochs: int, num_classes: int | None = None
) -> ClassAwareSampler | None:
    """The sampler ``data.sampler`` names; None for instance-balanced (the loader's own shuffle)."""
    return SAMPLERS.factory(name)(labels, epochs, num_classes)


SAMPLERS: Registry[Callable[..., ClassAwareSampler | None]] = Registry(
    "data.sampler",
    {
        "instance": lambda labels, epochs, k: None,
        "class": lambda labels, epochs, k: PowerSampler(labels, 0.0, num_classes=k),
        "sqrt": lambda labels, epochs, k: PowerSampler(labels, 0.5, num_classes=k),
        "progressive": lambda labels, epochs, k: ProgressiveSampler(labels, epochs, num_classes=k),
    },
)
