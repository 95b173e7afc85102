"""Classify image files with a trained run (opened by ``camlt.trained.open_run``).

Images are decoded with PIL and brought to the training input: same channels, size, padding
and normalisation as the training tensors of ``camlt.data``; the scores are the run's decision
rule (its fitted tau and temperature, and the prior given for where it is used).
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from camlt.data.inputs import IMAGE_SUFFIXES, load_images
from camlt.errors import UsageError, printable
from camlt.trained import LoadedModel


# ----------------------------------------------------------------------------- images
def collect_images(items: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (searched recursively for image suffixes) and globs, in a stable order.

    Returns the image paths and (item, reason) for arguments that matched nothing.
    """
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found += files
            if not files:
                missing.append((item, "folder holds no image file"))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            found += matches
            if not matches:
                missing.append((item, "pattern matches no file"))
        else:
            missing.append((item, "no such file or folder"))
    unique = list(dict.fromkeys(found))
    return unique, missing


# ----------------------------------------------------------------------------- prediction
@dataclass
class Prediction:
    """Top-k classes of one image, most probable first."""

    path: str
    classes: list[int]
    names: list[str]
    probs: list[float]


def probabilities(loaded: LoadedModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Probabilities (N, K) of a uint8 image batch under the run's decision rule."""
    return loaded.logits(images, batch_size).softmax(dim=1)


def predict_files(
    loaded: LoadedModel, paths: Sequence[Path], topk: int = 5, batch_size: int = 256, warn=None
) -> list[Prediction]:
    """Top-k predictions of image files; undecodable files are reported and skipped."""
    if topk < 1:
        raise UsageError(f"--topk {topk}: must be at least 1")
    k = min(topk, len(loaded.classes))
    results = []
    for start in range(0, len(paths), batch_size):  # decode lazily, one batch in memory
        kept, images = load_images(paths[start : start + batch_size], loaded.spec, warn)
        if images is None:
            continue
        probs = probabilities(loaded, images, batch_size)
        top_p, top_i = probs.topk(k, dim=1)
        for path, p, i in zip(kept, top_p.tolist(), top_i.tolist(), strict=True):
            results.append(Prediction(str(path), i, [loaded.classes[c] for c in i], p))
    return results


def format_predictions(results: Sequence[Prediction], fmt: str) -> str:
    """Predictions as an aligned table, CSV (one row per image and rank) or JSON."""
    if fmt == "json":
        return json.dumps(
            [
                {
                    "path": r.path,
                    "top": [
                        {"rank": n + 1, "class": c, "name": name, "prob": p}
                        for n, (c, name, p) in enumerate(
                            zip(r.classes, r.names, r.probs, strict=True)
                        )
                    ],
                }
                for r in results
            ],
            indent=2,
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "name", "prob"])
        for r in results:
            for n, (c, name, p) in enumerate(zip(r.classes, r.names, r.probs, strict=True)):
                writer.writerow([printable(r.path), n + 1, c, printable(name), f"{p:.6f}"])
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise UsageError(f"--format {fmt}: expected table, csv or json")
    paths = [printable(r.path) for r in results]  # a name never drives the terminal
    width = max([len("image")] + [len(path) for path in paths])
    lines = [f"{'image':<{width}}  top predictions"]
    for r, path in zip(results, paths, strict=True):
        top = "  ".join(
            f"{printable(name)} {100 * p:5.1f}%" for name, p in zip(r.names, r.probs, strict=True)
        )
        lines.append(f"{path:<{width}}  {top}")
    return "\n".join(lines)
