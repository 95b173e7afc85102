"""Long-tailed subsets of balanced datasets: which images of each class a subset keeps.

Two rules (``SUBSET_RULES``):

- ``shared``: the CIFAR-LT subset nearly every published CIFAR-LT number is on (LDAM-DRW's
  ``imbalance_cifar.py``, copied by RIDE, SADE, BalPoE, MiSLAS, PaCo, BCL, ProCo and others):
  NumPy's legacy generator seeded once with the split seed; for each class in index order, that
  class's indices (in file order) shuffled in place and the first n_i kept, one generator serving
  every class in turn; n_i = ``int(n_max * (1 / IF) ** (i / (C - 1.0)))``, in that float order.
- ``camlt``: this project's own draw (a ``default_rng`` permutation per class) with
  ``int(n_max * IF ** (-i / (C - 1)))``. Fashion-MNIST-LT keeps it: its published tables rest on
  it, and no paper's Fashion-MNIST-LT images exist to match.
"""

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


SUBSET_RULES = ("shared", "camlt")


def shared_counts(num_classes: int, n_max: int, imbalance: float, profile: str) -> list[int]:
    """The shared rule's images per class, with its own float order (``get_img_num_per_cls``)."""
    if profile not in ("exp", "step"):
        raise UsageError(f"unknown long-tail profile '{profile}': expected exp or step")
    factor = 1.0 / imbalance
    if profile == "step":
        half = num_classes // 2
        return [n_max] * half + [int(n_max * factor)] * (num_classes - half)
    if num_classes == 1:
        return [n_max]
    return [int(n_max * (factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]


def select_indices_shared(
    labels: np.ndarray, counts_by_class: Sequence[int], seed: int = 0
) -> np.ndarray:
    """The shared rule's images (sorted): one legacy RandomState, classes in index order, each
    class's indices shuffled in place and the first n_c kept."""
    labels = np.asarray(labels)
    legacy = np.random.RandomState(seed)  # what np.random.seed(seed) seeds for np.random.shuffle
    chosen = []
    for cls, wanted in enumerate(counts_by_class):
        pool = np.where(labels == cls)[0]
        if wanted > len(pool):
            raise UsageError(
                f"class {cls} has {len(pool)} images but the profile asks for {wanted}"
            )
        if wanted < 1:
            raise UsageError(f"class {cls} would keep no image: raise n_max or lower imbalance")
        legacy.shuffle(pool)
        chosen.append(pool[:wanted])
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
