"""The in-memory benchmarks (Fashion-MNIST-LT and its cluttered variant, CIFAR-10-LT,
CIFAR-100-LT): their long-tailed training split and balanced test split, by the field's rule
(docs/datasets.md), from the real files."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from camlt.data.clutter import ClutterSpec, render_split
from camlt.data.inputs import DATASETS, DatasetSpec, normalisation
from camlt.data.longtail import (
    counts_for_order,
    select_indices,
    select_indices_shared,
    shared_counts,
)
from camlt.data.sources import FMNIST_CLASSES, ArraySplit, DataError, load_cifar, load_fmnist
from camlt.data.tensors import TensorImageSet


def _load_raw(cfg: DictConfig) -> tuple[dict[str, ArraySplit], list[str], DatasetSpec]:
    spec = DATASETS.factory(cfg.data.name)
    if spec.files == "fmnist":
        return load_fmnist(cfg.data.root, cfg.data.download), list(FMNIST_CLASSES), spec
    splits, classes = load_cifar(spec.num_classes, cfg.data.root, cfg.data.download)
    return splits, classes, spec


def class_order(cfg: DictConfig, num_classes: int) -> list[int]:
    """Which class holds each rank of the profile."""
    if cfg.data.order == "hard":
        hard = DATASETS[cfg.data.name].hard_order
        if hard is None:
            with_hard = [name for name in DATASETS if DATASETS[name].hard_order]
            raise DataError(f"data.order=hard is defined for {', '.join(with_hard)} only")
        return list(hard)
    return list(range(num_classes))


def train_counts(cfg: DictConfig, available: list[int]) -> list[int]:
    """Per-class training counts the config asks for."""
    num_classes = len(available)
    if cfg.data.balanced:
        return list(available)
    spec = DATASETS[cfg.data.name]
    n_max = cfg.data.n_max or spec.n_max
    if spec.subset_rule == "shared":  # the rule's own float order, classes in index order
        counts = shared_counts(num_classes, n_max, cfg.data.imbalance, cfg.data.profile)
        counts = [counts[rank] for rank in _ranks(class_order(cfg, num_classes))]
    else:
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


def _ranks(order: list[int]) -> list[int]:
    """The rank of each class (in class-index order) under a class order."""
    ranks = [0] * len(order)
    for rank, cls in enumerate(order):
        ranks[cls] = rank
    return ranks


def subset_rule(cfg: DictConfig) -> str:
    """Which rule picks the long-tailed subset's images (``camlt.data.longtail``)."""
    return DATASETS[cfg.data.name].subset_rule


def build_datasets(cfg: DictConfig) -> tuple[TensorImageSet, TensorImageSet]:
    """The long-tailed training set and the whole balanced test set."""
    train, _, test = build_benchmark_sets(cfg)
    return train, test


def build_benchmark_sets(
    cfg: DictConfig,
) -> tuple[TensorImageSet, TensorImageSet | None, TensorImageSet]:
    """Train, val (``data.val_per_class`` > 0, else None) and test sets of a benchmark."""
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
    select = select_indices_shared if spec.subset_rule == "shared" else select_indices
    keep = select(train.labels, counts, cfg.data.split_seed)
    meta = {"split_seed": cfg.data.split_seed, "counts": counts, "subset_rule": spec.subset_rule}
    train_set = _image_set(cfg, spec, "train", train, keep, classes, meta)
    val_set = None
    per_class = OmegaConf.select(cfg, "data.val_per_class", default=0) or 0
    if per_class > 0:
        val_keep = val_indices(train.labels, keep, per_class, cfg.data.split_seed)
        val_set = _image_set(cfg, spec, "train", train, val_keep, classes, {})
    test_set = _image_set(cfg, spec, "test", test, np.arange(len(test.labels)), classes, {})
    return train_set, val_set, test_set


def val_indices(
    labels: np.ndarray, keep: np.ndarray, per_class: int, split_seed: int
) -> np.ndarray:
    """A balanced validation split of ``per_class`` images a class, drawn (seeded by the split
    seed) from the training images the long-tailed subset left out: the subset is unchanged,
    and no validation image is a training image or a test image."""
    unused = np.ones(len(labels), dtype=bool)
    unused[keep] = False
    rng = np.random.default_rng([split_seed, 1])  # a stream of its own, apart from the subset's
    chosen = []
    for cls in range(int(labels.max()) + 1):
        pool = np.flatnonzero(unused & (labels == cls))
        if len(pool) < per_class:
            raise DataError(
                f"data.val_per_class={per_class}: class {cls} has only {len(pool)} training "
                "images outside the long-tailed subset; lower data.val_per_class or data.n_max"
            )
        chosen.append(rng.permutation(pool)[:per_class])
    return np.sort(np.concatenate(chosen))


def _image_set(
    cfg: DictConfig,
    spec: DatasetSpec,
    split_name: str,
    split: ArraySplit,
    keep: np.ndarray,
    classes: list[str],
    meta: dict,
) -> TensorImageSet:
    """The pictures of the kept images: padded as the spec says, or drawn among clutter."""
    boxes = None
    if spec.cluttered:
        clutter = ClutterSpec(**cfg.data.clutter)
        sources = split.images[:, 0]
        images, boxes = render_split(sources, keep, cfg.data.split_seed, split_name, clutter)
    else:
        images = split.images[keep]
        if spec.pad:  # Fashion-MNIST 28x28 -> 32x32, as the CIFAR ResNets expect
            images = np.pad(images, ((0, 0), (0, 0), (spec.pad,) * 2, (spec.pad,) * 2))
    return TensorImageSet(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(np.asarray(split.labels[keep], dtype=np.int64)),
        classes,
        *normalisation(cfg, spec),
        meta,
        None if boxes is None else torch.from_numpy(boxes),
    )
