"""Fixtures that write small datasets in the exact real on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from camlt.config import load_config
from camlt.data.sources import write_idx


def make_images(n: int, shape: tuple[int, ...], labels: np.ndarray, seed: int) -> np.ndarray:
    """Class-dependent uint8 images, so a tiny model can learn something."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=(n, *shape), dtype=np.int64)
    labels = labels.astype(np.int64)
    signal = labels[:, None] * 23 % 190
    flat = base.reshape(n, -1)
    width = flat.shape[1] // 10
    for i, label in enumerate(labels):
        flat[i, label * width : (label + 1) * width] += signal[i, 0] + 60
    return np.clip(flat, 0, 255).astype(np.uint8).reshape(n, *shape)


def write_fmnist(root: Path, per_class_train: int = 30, per_class_test: int = 8) -> Path:
    """Fashion-MNIST's four IDX .gz files (as in the Debian package) in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class, prefix in (
        ("train", per_class_train, "train"),
        ("test", per_class_test, "t10k"),
    ):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        np.random.default_rng(1).shuffle(labels)
        images = make_images(len(labels), (28, 28), labels, seed=2 if split == "train" else 3)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_cifar(
    root: Path, num_classes: int = 10, per_class_train: int = 12, per_class_test: int = 3
) -> Path:
    """CIFAR "python version" pickles exactly as torchvision downloads them."""
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        labels = np.tile(np.arange(10), per_class_train)
        data = make_images(len(labels), (3072,), labels, seed=4)
        for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), 1):
            _dump(
                folder / f"data_batch_{i}",
                {
                    b"batch_label": b"training batch",
                    b"labels": labels[part].tolist(),
                    b"data": data[part],
                    b"filenames": [b"x.png"] * len(part),
                },
            )
        test_labels = np.tile(np.arange(10), per_class_test)
        _dump(
            folder / "test_batch",
            {
                b"labels": test_labels.tolist(),
                b"data": make_images(len(test_labels), (3072,), test_labels, 5),
            },
        )
        _dump(
            folder / "batches.meta",
            {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072},
        )
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, per_class in (("train", per_class_train), ("test", per_class_test)):
            labels = np.tile(np.arange(100), per_class)
            _dump(
                folder / split,
                {
                    b"fine_labels": labels.tolist(),
                    b"coarse_labels": (labels // 5).tolist(),
                    b"data": make_images(len(labels), (3072,), labels % 10, 6),
                },
            )
        _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return folder


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    """The one generated Fashion-MNIST (30 train / 8 test images a class) every test reads;
    a test that needs other counts or damaged files writes its own with ``write_fmnist``."""
    return write_fmnist(tmp_path_factory.mktemp("fmnist"))


def tiny_overrides(root: Path, run_dir: Path) -> list[str]:
    """A config small enough to train in seconds on generated data."""
    return [
        f"data.root={root}",
        "data.n_max=30",
        "data.imbalance=10",
        "model.backbone=resnet8",
        "train.epochs=2",
        "train.batch_size=16",
        "train.warmup_epochs=1",
        "train.milestones=[1]",
        "train.progress=false",
        f"train.run_dir={run_dir}",
        "train.threads=1",
        "train.eval_every=1",  # the Fashion-MNIST recipe tests every 5 epochs
        # fp32 on every machine: tests that compare two code paths (eager and compiled, one
        # process and two) hold to fp32 rounding; auto would pick bf16 on a CPU that has it
        "train.amp=off",
    ]


def tiny_config(root: Path, run_dir: Path, *extra: str):
    """The tiny config of ``tiny_overrides`` on ``root``, writing to ``run_dir``: the one
    helper every test that trains Fashion-MNIST builds its config with."""
    return load_config(
        ROOT / "configs" / "fmnist_lt.yaml", tiny_overrides(root, run_dir) + list(extra)
    )


@pytest.fixture
def tiny_cfg(fmnist_root: Path, tmp_path: Path):
    return lambda *extra: tiny_config(fmnist_root, tmp_path / "run", *extra)


ROOT = Path(__file__).resolve().parents[1]
