"""In-memory image sets held as uint8 tensors, augmented a whole batch at a time.

Per-image PIL transforms in a DataLoader dominate the step time of small-image training on a
CPU; cropping and flipping a uint8 batch with one gather is an order of magnitude cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from camlt.data.inputs import Normaliser


@dataclass
class TensorImageSet:
    """Images (N, C, H, W) uint8, labels (N,) int64, class names and normalisation constants;
    ``boxes`` (N, 4) int64 (x0, y0, x1, y1, ends exclusive) where the data set knows where each
    object is (cluttered Fashion-MNIST), for measuring where a map looks."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = field(default_factory=dict)
    boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def to(self, device: torch.device) -> TensorImageSet:
        """Keep the whole set on the accelerator, so batches never cross the bus."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self


def random_crop_flip(batch: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad-and-crop plus horizontal flip for a uint8 batch, one random draw per image."""
    b, _, h, w = batch.shape
    dev = batch.device  # draws come from the CPU generator, so a GPU-resident set augments alike
    padded = F.pad(batch, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    cols = ox[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows = oy[:, None] + torch.arange(h, device=dev)
    out = padded[torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


Sampler = Callable[[int, torch.Generator], torch.Tensor]


def epoch_order(
    n: int, train: bool, epoch: int, generator: torch.Generator, sampler: Sampler | None = None
) -> torch.Tensor:
    """The indices an epoch visits: in order for evaluation, else the sampler's draw or a
    shuffle, both from ``generator`` (seeded by seed and epoch: a resumed run sees the same)."""
    if not train:
        return torch.arange(n)
    if sampler is not None:
        return sampler(epoch, generator)
    return torch.randperm(n, generator=generator)


class BatchLoader:
    """Iterates (images, labels) batches of a TensorImageSet: float, normalised, optionally augmented.

    The order and the augmentation of epoch e depend only on (seed, e), so a resumed run sees
    exactly the batches an uninterrupted one would; ``policy`` (strong augmentation) draws from
    the same generator. A sampler (epoch, generator) -> indices
    replaces the plain shuffle (class-aware sampling); ``shard`` = (rank, world) splits every
    epoch's indices across processes.
    """

    def __init__(
        self,
        data: TensorImageSet,
        batch_size: int,
        train: bool,
        seed: int = 0,
        pad: int = 4,
        sampler: Sampler | None = None,
        shard: tuple[int, int] = (0, 1),
        channels_last: bool = False,
        policy: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> None:
        self.data, self.batch_size, self.train = data, batch_size, train
        self.policy = policy  # strong augmentation of a uint8 batch (camlt.data.augment)
        self.seed, self.pad, self.sampler, self.shard = seed, pad, sampler, shard
        self.channels_last = channels_last
        self.epoch = 0
        dev = data.images.device
        self.normalise = Normaliser(data.mean, data.std, dev, channels_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self, generator: torch.Generator) -> torch.Tensor:
        idx = epoch_order(len(self.data), self.train, self.epoch, generator, self.sampler)
        rank, world = self.shard
        if world > 1:  # training pads to equal shards; evaluation counts every image once
            per = -(-len(idx) // world)
            if self.train:
                idx = torch.cat([idx, idx[: per * world - len(idx)]])
            idx = idx[rank::world]
        return idx

    def __len__(self) -> int:
        rank, world = self.shard
        if self.train:
            return -(-len(self.data) // world) // self.batch_size
        return -(-len(range(rank, len(self.data), world)) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = self._indices(generator)
        stop = len(idx) - len(idx) % self.batch_size if self.train else len(idx)
        for start in range(0, stop, self.batch_size):
            sel = idx[start : start + self.batch_size].to(self.data.images.device)
            images = self.data.images[sel]
            if self.train and self.pad > 0:
                images = random_crop_flip(images, self.pad, generator)
            if self.train and self.policy is not None:
                images = self.policy(images, generator)
            yield self.normalise(images), self.data.labels[sel]
