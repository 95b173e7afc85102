"""Time of ``camlt data check`` on an iNaturalist-2018-sized split file (437,513 lines, 8,142
classes, 1,000 .. 2 images per class), without images: the whole command, interpreter start
included, as a user runs it.

    python benchmarks/data_check_speed.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from table import RESULTS, machine, publish

LINES, CLASSES = 437_513, 8_142


def inat_like_counts() -> list[int]:
    """Exponential 1,000 .. 2 per class, scaled so the total is exactly 437,513."""
    raw = 1000 * (2 / 1000) ** (np.arange(CLASSES) / (CLASSES - 1))
    counts = np.maximum(2, np.floor(raw * LINES / raw.sum())).astype(int)
    counts[0] += LINES - counts.sum()
    return counts.tolist()


def main() -> None:
    counts = inat_like_counts()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "iNaturalist18_train.txt"
        with open(path, "w") as fh:
            for label, n in enumerate(counts):
                for j in range(n):
                    fh.write(f"train_val2018/Plantae/{label}/{j:07d}.jpg {label}\n")
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "camlt.cli", "data", "check", str(path), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import camlt.cli, camlt.data.check"], check=True)
        startup = time.perf_counter() - start
    report = json.loads(done.stdout)
    assert report["num_images"] == LINES and report["num_classes"] == CLASSES
    results = {
        "lines": LINES,
        "classes": CLASSES,
        "command_s": round(seconds, 2),
        "import_s": round(startup, 2),
        "many": report["many"],
        "medium": report["medium"],
        "few": report["few"],
        "machine": machine(),
        "torch": torch.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    publish(
        "data_check_speed",
        results,
        "# `camlt data check` on an iNaturalist-2018-sized split file\n\n"
        f"{LINES:,} lines, {CLASSES:,} classes, no image root: {results['command_s']} s for the "
        f"whole command ({results['import_s']} s of it importing Python modules). "
        f"Shot groups: many {report['many']}, medium {report['medium']}, few {report['few']}. "
        f"Machine: {results['machine']}.\n",
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
