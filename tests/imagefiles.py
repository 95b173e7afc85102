"""Generated JPEG trees in the layouts of the circulating ImageNet-LT / Places-LT copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")
PLACES = ("airfield", "bakery", "canyon")


def write_jpeg(path: Path, label: int, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    """A tiny JPEG whose colour says its class (so a model can learn it)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.zeros((h, w, 3), dtype=np.int64)
    base[..., label % 3] = 200
    pixels = np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def imagenet_lt(root: Path, val_foldered: bool, counts=(12, 6, 3), per_test: int = 2) -> dict:
    """ImageNet-LT: train/<wnid>/<wnid>_j.JPEG; val images flat or re-foldered by class.

    The split files always say ``val/ILSVRC2012_val_X.JPEG`` (the flat form).
    """
    train, test, k = [], [], 0
    for label, wnid in enumerate(WNIDS):
        for j in range(counts[label]):
            rel = f"train/{wnid}/{wnid}_{j}.JPEG"
            write_jpeg(root / rel, label, seed=1000 * label + j)
            train.append(f"{rel} {label}")
        for _ in range(per_test):
            k += 1
            name = f"ILSVRC2012_val_{k:08d}.JPEG"
            disk = f"val/{wnid}/{name}" if val_foldered else f"val/{name}"
            write_jpeg(root / disk, label, seed=50_000 + k)
            test.append(f"val/{name} {label}")
    return {
        "train": write_lines(root / "ImageNet_LT_train.txt", train),
        "test": write_lines(root / "ImageNet_LT_test.txt", test),
    }


def places_lt(root: Path, disk: str, counts=(10, 5, 3), per_test: int = 2) -> dict:
    """Places-LT with split files saying ``data_256/a/<cls>/N.jpg`` and ``val/<cls>/X.jpg``.

    ``disk``: ``places365`` stores ``data_256/<c>/<cls>/N.jpg`` and a flat ``val_256/X.jpg``;
    ``refoldered`` stores ``train/<cls>/N.jpg`` (names repeat across classes) and
    ``val/<cls>/X.jpg``.
    """
    train, val, k = [], [], 0
    for label, cls in enumerate(PLACES):
        for j in range(1, counts[label] + 1):
            name = f"{j:08d}.jpg"  # the same file names in every class, as in Places365
            on_disk = (
                f"data_256/{cls[0]}/{cls}/{name}" if disk == "places365" else f"train/{cls}/{name}"
            )
            write_jpeg(root / on_disk, label, seed=2000 * label + j)
            train.append(f"data_256/{cls[0]}/{cls}/{name} {label}")
        for _ in range(per_test):
            k += 1
            name = f"Places365_val_{k:08d}.jpg"
            on_disk = f"val_256/{name}" if disk == "places365" else f"val/{cls}/{name}"
            write_jpeg(root / on_disk, label, seed=60_000 + k)
            val.append(f"val/{cls}/{name} {label}")
    return {
        "train": write_lines(root / "Places_LT_train.txt", train),
        "test": write_lines(root / "Places_LT_test.txt", val),
    }


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    """root/<class name>/img_j.jpg"""
    for label, (name, n) in enumerate(counts.items()):
        for j in range(n):
            write_jpeg(root / name / f"img_{j}.jpg", label, seed=3000 * label + j)
    return root


def file_overrides(run_dir: Path, *extra: str) -> list[str]:
    """A config that trains on generated 40x30 JPEGs in seconds."""
    return [
        "model.backbone=resnet8",
        "data.image_size=32",
        "data.resize_size=36",
        "train.epochs=1",
        "train.batch_size=8",
        "train.warmup_epochs=0",
        "train.workers=0",
        "train.progress=false",
        "train.threads=1",
        "train.eval_every=1",  # the Fashion-MNIST recipe tests every 5 epochs
        f"train.run_dir={run_dir}",
        *extra,
    ]
