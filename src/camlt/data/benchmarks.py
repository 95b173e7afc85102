"""The in-memory benchmarks (Fashion-MNIST-LT, CIFAR-10-LT, CIFAR-100-LT): their long-tailed
training split and balanced test split, as BENCHMARKS.md defines them, from the real files."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from camlt.data.inputs import DATASETS, DatasetSpec
from camlt.data.longtail import counts_for_order, select_indices
from camlt.data.sources import FMNIST_CLASSES, ArraySplit, DataError, load_cifar, load_fmnist
from camlt.data.tensors import TensorImageSet

# Fashion-MNIST-LT hard order: rank r of the profile holds original class HARD_ORDER[r].
FMNIST_HARD_ORDER = (1, 5, 7, 8, 9, 3, 0, 2, 4, 6)


def _load_raw(cfg: DictConfig) -> tuple[dict[str, ArraySplit], list[str], DatasetSpec]:
    name = cfg.data.name
    spec = DATASETS.factory(name)
    if name == "fmnist_lt":
        splits = load_fmnist(cfg.data.root, cfg.data.download)
        pad = spec.pad
        for split in splits.values():  # 28x28 -> 32x32, as the CIFAR ResNets expect
            split.images = np.pad(split.images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        classes = list(FMNIST_CLASSES)
    else:
        splits, classes = load_cifar(spec.num_classes, cfg.data.root, cfg.data.download)
    return splits, classes, spec


def class_order(cfg: DictConfig, num_classes: int) -> list[int]:
    """Which class holds each rank of the profile."""
    if cfg.data.order == "hard":
        if cfg.data.name != "fmnist_lt":
            raise DataError("data.order=hard is defined for fmnist_lt only")
        return list(FMNIST_HARD_ORDER)
    return list(range(num_classes))


def train_counts(cfg: DictConfig, available: list[int]) -> list[int]:
    """Per-class training counts the config asks for."""
    num_classes = len(available)
    if cfg.data.balanced:
        return list(available)
    spec = DATASETS[cfg.data.name]
    n_max = cfg.data.n_max or spec.n_max
    counts = counts_for_order(
        num_classes, n_max, cfg.data.imbalance, cfg.data.profile, class_order(cfg, num_classes)
    )
    for cls, (want, have) in enumerate(zip(counts, available, strict=True)):
        if want > have:
            raise DataError(f"class {cls} has {have} training images; the profile asks for {want}")
        if want < 1:
            raise DataError(
                f"class {cls} would keep no image (n_max={n_max}, imbalance={cfg.data.imbalance})"
            )
    return counts


def build_datasets(cfg: DictConfig) -> tuple[TensorImageSet, TensorImageSet]:
    """The long-tailed training set and the whole balanced test set."""
    splits, classes, spec = _load_raw(cfg)
    train, test = splits["train"], splits["test"]
    for split_name, split in splits.items():
        bad = split.labels[(split.labels < 0) | (split.labels >= len(classes))]
        if len(bad):
            raise DataError(f"{split_name} labels out of range 0..{len(classes) - 1}: {bad[:5]}")
    available = np.bincount(train.labels, minlength=len(classes)).tolist()
    if 0 in available:
        raise DataError(f"class {available.index(0)} has no training image")
    counts = train_counts(cfg, available)
    keep = select_indices(train.labels, counts, cfg.data.split_seed)
    meta = {"split_seed": cfg.data.split_seed, "counts": counts}
    train_set = _to_tensors(train.images[keep], train.labels[keep], classes, spec, meta)
    test_set = _to_tensors(test.images, test.labels, classes, spec, {})
    return train_set, test_set


def _to_tensors(images, labels, classes, spec, meta) -> TensorImageSet:
    return TensorImageSet(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        classes,
        spec.mean,
        spec.std,
        meta,
    )
