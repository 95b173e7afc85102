"""Long-tailed subsets of balanced datasets, exactly as BENCHMARKS.md specifies them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camlt.errors import UsageError


def profile_counts(
    num_classes: int, n_max: int, imbalance: float, profile: str = "exp"
) -> list[int]:
    """Images kept per rank: ``int(n_max * IF ** (-i / (C - 1)))`` or the two-level step."""
    if imbalance < 1:
        raise UsageError(f"imbalance factor {imbalance} is below 1 (it is n_max / n_min)")
    if num_classes < 1 or n_max < 1:
        raise UsageError(f"need at least one class and one image (got {num_classes}, {n_max})")
    if profile == "exp":
        if num_classes == 1:
            return [n_max]
        return [int(n_max * imbalance ** (-i / (num_classes - 1))) for i in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [n_max] * half + [int(n_max / imbalance)] * (num_classes - half)
    raise UsageError(f"unknown long-tail profile '{profile}': expected exp or step")


def select_indices(labels: np.ndarray, counts_by_class: Sequence[int], seed: int = 0) -> np.ndarray:
    """The first n_c images of each class c after one seeded shuffle per class, in class order.

    A single generator seeded with ``seed`` shuffles class 0's indices, then class 1's, and so
    on, so the seed alone fixes the split; the result is sorted to keep the source order.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, wanted in enumerate(counts_by_class):
        pool = np.flatnonzero(labels == cls)
        if wanted > len(pool):
            raise UsageError(
                f"class {cls} has {len(pool)} images but the profile asks for {wanted}"
            )
        if wanted < 1:
            raise UsageError(f"class {cls} would keep no image: raise n_max or lower imbalance")
        chosen.append(rng.permutation(pool)[:wanted])
    return np.sort(np.concatenate(chosen))


def counts_for_order(
    num_classes: int, n_max: int, imbalance: float, profile: str, order: Sequence[int]
) -> list[int]:
    """Per-class counts (in class-index order) when rank r of the profile goes to class order[r]."""
    if sorted(order) != list(range(num_classes)):
        raise UsageError(f"class order {list(order)} is not a permutation of 0..{num_classes - 1}")
    by_rank = profile_counts(num_classes, n_max, imbalance, profile)
    counts = [0] * num_classes
    for rank, cls in enumerate(order):
        counts[cls] = by_rank[rank]
    return counts
