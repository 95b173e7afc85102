"""Images/s of the image-file pipeline (decode + augment) against torchvision's ImageFolder.

Both sides read the same generated 500x375 JPEGs with the same transforms (random-resized
crop 224 + flip for training; resize 256 + centre crop 224 for evaluation), 2 DataLoader
workers, batch 32, and end with the same normalised float batch; they alternate, best of
``--repeats`` passes each, in one run.

    python benchmarks/image_pipeline.py              # ~2 minutes on 2 cores
    python benchmarks/image_pipeline.py --images 200 --repeats 1   # quicker
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from table import RESULTS, machine
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from camlt.checkpoint import atomic_write_json, atomic_write_text
from camlt.data.files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FileImageSet,
    FileLoader,
    LoaderOptions,
    imagenet_transform,
)
from camlt.data.owndata import read_image_folder


def make_jpegs(root: Path, count: int, classes: int = 10) -> None:
    """Smooth random 500x375 photos-like JPEGs (quality 90), one folder per class."""
    rng = np.random.default_rng(0)
    for i in range(count):
        low = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((500, 375), Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (375, 500, 3))
        path = root / f"class{i % classes}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def rate(batches, normalise) -> float:
    """Images per second over one pass; each batch is normalised as training would."""
    start, seen = time.perf_counter(), 0
    for images, _labels in batches:
        normalise(images)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def camlt_loader(root: Path, train: bool, workers: int, batch: int) -> FileLoader:
    entries = read_image_folder(root)
    data = FileImageSet(
        [str(root / p) for p in entries.paths],
        torch.from_numpy(entries.labels),
        entries.classes,
        imagenet_transform(train),
    )
    options = LoaderOptions(workers=workers, persistent_workers=False, pin_memory=False)
    return FileLoader(data, batch, train, options=options)


def imagefolder_loader(root: Path, train: bool, workers: int, batch: int):
    data = ImageFolder(str(root), transform=imagenet_transform(train))
    loader = DataLoader(data, batch_size=batch, shuffle=train, num_workers=workers, drop_last=train)
    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1) * 255
    return loader, lambda x: (x.float() - mean) / std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {"images": args.images, "workers": args.workers, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root, args.images)
        for mode, train in (("train", True), ("eval", False)):
            ours, theirs = [], []
            for _ in range(args.repeats):
                loader = camlt_loader(root, train, args.workers, args.batch)
                ours.append(rate(loader, lambda x: x))  # FileLoader yields normalised floats
                ref, normalise = imagefolder_loader(root, train, args.workers, args.batch)
                theirs.append(rate(ref, normalise))
            results[mode] = {
                "camlt_images_per_s": round(max(ours), 1),
                "imagefolder_images_per_s": round(max(theirs), 1),
                "ratio": round(max(ours) / max(theirs), 3),
            }
            print(mode, results[mode], flush=True)
    results["machine"] = machine()
    results["torch"] = torch.__version__
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "image_pipeline.json", results)
    lines = [
        "# Image pipeline throughput (decode + augment)",
        "",
        f"{args.images} generated 500x375 JPEGs, {args.workers} workers, batch {args.batch}, "
        f"best of {args.repeats}; same transforms on both sides. Machine: {results['machine']}.",
        "",
        "| pipeline | camlt FileLoader (img/s) | torchvision ImageFolder (img/s) | ratio |",
        "|---|---|---|---|",
    ]
    for mode, label in (("train", "train: RandomResizedCrop 224 + flip"),
                        ("eval", "eval: Resize 256 + CenterCrop 224")):  # fmt: skip
        r = results[mode]
        lines.append(
            f"| {label} | {r['camlt_images_per_s']} | {r['imagefolder_images_per_s']} | "
            f"{r['ratio']} |"
        )
    atomic_write_text(RESULTS / "image_pipeline.md", "\n".join(lines) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
