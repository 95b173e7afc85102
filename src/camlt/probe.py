"""A linear probe on cached features (``model.finetune=probe`` with ``train.probe_cache``).

A probe trains the head alone on a frozen backbone, so the backbone computes the same feature map
of an image in every epoch: it is computed once, for every training, val and test image (the
training images without augmentation, as probes are trained), kept in memory in half precision,
and each epoch runs the head alone on it. With a pretrained backbone at its pretraining size this
is what makes a probe affordable on a CPU (``benchmarks/probe_speed.py``). Training features are
kept in half precision, evaluation features in full, so ``camlt eval`` of the finished run
repeats its numbers.

The cache is rebuilt when a run resumes (it is not saved; the features are deterministic), and
is not used where the backbone's input changes from epoch to epoch or batch to batch: batch
mixing (``train.mix``), or several processes (each would need its shard).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from omegaconf import DictConfig
from torch import nn

from camlt.data.tensors import Sampler, epoch_order


def uses_cache(cfg: DictConfig, world: int) -> bool:
    """Whether this run trains its probe on cached features."""
    return (
        cfg.model.finetune == "probe"
        and cfg.train.probe_cache
        and cfg.train.mix == "none"
        and cfg.stage2.method == "none"
        and world == 1
    )


@torch.no_grad()
def compute_features(
    model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None, keep: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature map of every image a loader gives, kept on the CPU as ``keep``, and labels."""
    model.eval()
    maps, labels = [], []
    for images, y in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fmap = model.features(images.to(device))
        maps.append(fmap.to("cpu", keep))
        labels.append(y.cpu())
    return torch.cat(maps), torch.cat(labels)


class FeatureLoader:
    """(feature maps, labels) batches of cached features, for the head alone.

    Shuffled per (seed, epoch) as the image loaders are, or drawn by the run's class-aware
    sampler; a training loader drops its last partial batch, as they do.
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        train: bool,
        seed: int = 0,
        sampler: Sampler | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.features, self.labels = features, labels
        self.batch_size, self.train, self.seed, self.sampler = batch_size, train, seed, sampler
        self.device = torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = epoch_order(len(self.labels), self.train, self.epoch, generator, self.sampler)
        stop = len(idx) - len(idx) % self.batch_size if self.train else len(idx)
        for start in range(0, stop, self.batch_size):
            sel = idx[start : start + self.batch_size]
            yield self.features[sel].to(self.device).float(), self.labels[sel]


class HeadOnly(nn.Module):
    """What a cached probe's steps and evaluations call: the model's head on a feature map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model.head(fmap, targets)


def cached_loaders(
    cfg: DictConfig, model: nn.Module, plain_train, val, test, sampler, device, dtype, say=print
) -> tuple[FeatureLoader, FeatureLoader | None, FeatureLoader]:
    """The train, val and test loaders of cached features, computed now."""
    start = time.perf_counter()
    batch = cfg.train.batch_size

    def cache(loader, train: bool) -> FeatureLoader:
        # training features in half precision (half the memory; the head's step sees no
        # difference that matters), evaluation features exact: eval repeats the run's numbers
        keep = torch.float16 if train else torch.float32
        maps, labels = compute_features(model, loader, device, dtype, keep)
        return FeatureLoader(maps, labels, batch if train else 256, train, cfg.train.seed,
                             sampler if train else None, device)  # fmt: skip

    train = cache(plain_train, True)
    val_cached = cache(val, False) if val is not None else None
    test_cached = cache(test, False)
    cached = (train, val_cached, test_cached)
    size = sum(x.features.nbytes for x in cached if x is not None)
    say(
        f"model.finetune=probe: the backbone's features of {len(train.labels)} training images "
        f"(unaugmented) and the evaluation images cached in {time.perf_counter() - start:.0f} s "
        f"({size / 2**20:.0f} MiB); each epoch trains the head alone"
    )
    return train, val_cached, test_cached
