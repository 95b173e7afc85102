"""Cost of the leak check (camlt.data.leaks) on ImageNet-LT's split sizes: 115,846 training,
20,000 val and 50,000 test paths, files of JPEG-like sizes (log-normal around ImageNet's ~110 KB
median), some of them planted byte-for-byte copies across splits.

Each file is written as a random first and last 4 KB around a sparse middle, so 186k files take
about 1.5 GB on disk whatever their stated size; the check reads only a sample of files whose
sizes collide and whole files only where samples agree, which is what the numbers measure. The
files were just written, so the page cache is warm unless it can be dropped (root): the result
says which.

    python benchmarks/leak_check_speed.py                 # ImageNet-LT sizes
    python benchmarks/leak_check_speed.py --scale 0.01    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from table import RESULTS, machine, publish

from camlt.data.leaks import SAMPLE_BYTES, check_splits
from camlt.data.splitfile import SplitList

SPLITS = {"train": 115_846, "val": 20_000, "test": 50_000}  # ImageNet-LT's split files
CLASSES = 1000
PLANTED = {"val": 50, "test": 200}  # copies of training images in each evaluation split


def write_file(path: Path, size: int, rng: np.random.Generator) -> None:
    with open(path, "wb") as fh:
        fh.write(rng.bytes(SAMPLE_BYTES))
        fh.seek(size - SAMPLE_BYTES)
        fh.write(rng.bytes(SAMPLE_BYTES))


def build_tree(root: Path, scale: float, seed: int = 0) -> dict[str, SplitList]:
    """The splits' files on disk and their lists, the planted copies among them."""
    rng = np.random.default_rng(seed)
    splits = {}
    train_paths: list[str] = []
    for name, full in SPLITS.items():
        n = max(2, round(full * scale))
        folder = root / name
        folder.mkdir(parents=True)
        sizes = np.clip(rng.lognormal(np.log(110_000), 0.6, n), 3 * SAMPLE_BYTES, 5_000_000)
        paths = []
        planted = min(round(PLANTED.get(name, 0) * max(scale, 0.01)), n) if name != "train" else 0
        for i, size in enumerate(sizes.astype(int)):
            path = folder / f"{i:06d}.JPEG"
            if i < planted:
                os.link(train_paths[int(rng.integers(len(train_paths)))], path)  # same bytes
            else:
                write_file(path, int(size), rng)
            paths.append(str(path))
        if name == "train":
            train_paths = paths
        labels = rng.integers(0, CLASSES, n)
        splits[name] = SplitList(f"ImageNet_LT_{name}.txt", paths, labels, np.arange(1, n + 1))
    return splits


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of ImageNet-LT's sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        start = time.perf_counter()
        splits = build_tree(Path(tmp), args.scale)
        written_s = time.perf_counter() - start
        cold = drop_page_cache()
        start = time.perf_counter()
        found = check_splits(splits, [f"n{c:08d}" for c in range(CLASSES)])
        check_s = time.perf_counter() - start
    paths = sum(len(s) for s in splits.values())
    results = {
        "paths": paths,
        "splits": {name: len(split) for name, split in splits.items()},
        "files_read": found.files_hashed,
        "leaks_found": len(found.leaks),
        "planted": {
            k: min(round(v * max(args.scale, 0.01)), len(splits[k])) for k, v in PLANTED.items()
        },
        "check_s": round(check_s, 2),
        "page_cache": "dropped" if cold else "warm (files just written; dropping needs root)",
        "files_written_s": round(written_s, 1),
        "scale": args.scale,
        "machine": machine(threads=1),
        "torch": torch.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "leak_check_speed" if args.scale == 1.0 else f"leak_check_speed_{args.scale:g}"
    publish(
        stem,
        results,
        "# The leak check on ImageNet-LT's split sizes\n\n"
        f"{paths:,} paths ({', '.join(f'{k} {v:,}' for k, v in results['splits'].items())}), "
        f"JPEG-like sizes: {results['check_s']} s for camlt.data.leaks.check_splits, which read a "
        f"sample of {results['files_read']:,} files whose sizes collide and found "
        f"{results['leaks_found']} leaks (planted: {results['planted']}). Page cache: "
        f"{results['page_cache']}. Machine: {results['machine']}; one process.\n",
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
