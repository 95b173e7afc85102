"""Tiny trained runs and test images shared by the predict / cam / report tests."""

from __future__ import annotations

from pathlib import Path

import conftest
import numpy as np
from conftest import write_fmnist
from PIL import Image

from camlt import engine
from camlt.data import build_datasets


def data_root(base: Path) -> Path:
    root = base / "fmnist"
    return root if root.exists() else write_fmnist(root)


def tiny_config(base: Path, name: str, *extra: str):
    return conftest.tiny_config(data_root(base), base / name, "train.epochs=1", *extra)


def train_tiny(base: Path, name: str, *extra: str) -> Path:
    """Train a one-epoch resnet8 run on generated Fashion-MNIST files; returns its directory."""
    engine.train(tiny_config(base, name, *extra), base / name)
    return base / name


def write_test_pngs(base: Path, count: int) -> tuple[list[Path], list[int]]:
    """The first ``count`` test images as 28x28 grey PNGs (Fashion-MNIST's own size)."""
    _, test = build_datasets(tiny_config(base, "unused"))
    folder = base / "pngs"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(test.images[i, 0, 2:30, 2:30].numpy().astype(np.uint8)).save(path)
        paths.append(path)
    return paths, test.labels[:count].tolist()
