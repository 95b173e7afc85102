"""Datasets: the long-tailed benchmarks (docs/datasets.md), built from their real file formats."""

from __future__ import annotations

from camlt.data.benchmarks import build_datasets, class_order, train_counts
from camlt.data.inputs import DATASETS, FMNIST_HARD_ORDER, DatasetSpec
from camlt.data.loaders import Loaders, build_loaders, build_sets
from camlt.data.longtail import counts_for_order, profile_counts, select_indices
from camlt.data.sources import DataError
from camlt.data.tensors import BatchLoader, TensorImageSet, random_crop_flip

__all__ = [
    "BatchLoader",
    "Loaders",
    "build_loaders",
    "build_sets",
    "DataError",
    "DatasetSpec",
    "FMNIST_HARD_ORDER",
    "TensorImageSet",
    "build_datasets",
    "class_order",
    "counts_for_order",
    "profile_counts",
    "random_crop_flip",
    "select_indices",
    "train_counts",
    "DATASETS",
]
