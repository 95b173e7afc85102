"""``camlt data check``: what a split file, CSV or image folder holds, and what is wrong with it.

From the list alone (no image root) it reports classes, images, the per-class histogram and the
many/medium/few class counts; with an image root it also stats every file (missing, zero-byte),
and with ``decode`` it opens every image in a process pool. Nothing is decoded by default, so
iNaturalist 2018's 437,513 lines take seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from camlt.data.leaks import DataCheck, check_splits
from camlt.data.owndata import read_csv_list, read_image_folder
from camlt.data.paths import resolve_paths
from camlt.data.splitfile import SplitList, read_split_file
from camlt.errors import UsageError, printable
from camlt.metrics import FEW_BELOW, MANY_ABOVE, shot_groups

CHECK_KEYS = ("leaks", "conflicts", "repeats", "lookalike_classes", "files_hashed")
HISTOGRAM_BINS = (1, 2, 5, 10, 20, 50, 101, 201, 501, 1001)  # lower edges of images-per-class bins


def read_any(path: str | Path) -> tuple[SplitList, Path | None]:
    """A folder tree, a CSV or a split file, and the folder its paths are relative to (a CSV's
    own folder, as training reads it; a split file's only with --image-root)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_image_folder(path, skip_empty=True), path  # empty folders: reported
    if path.suffix.lower() == ".csv":
        return read_csv_list(path), path.parent
    return read_split_file(path), None


def decode_error(path: str) -> str | None:
    """Why ``path`` does not decode as an image (None when it does); decoded at reduced size."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, enough to find damage
            img.load()
    except Exception as err:  # any failure means unusable
        return f"{type(err).__name__}: {err}"
    return None


def histogram(counts: np.ndarray) -> list[dict]:
    """How many classes have 1, 2-4, 5-9, ... images."""
    edges = [*HISTOGRAM_BINS, None]
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        n = int(((counts >= low) & (counts < high if high else True)).sum())
        label = f"{low}-{high - 1}" if high and high - 1 > low else str(low) if high else f">={low}"
        rows.append({"images": label, "classes": n})
    return rows


def check(
    path: str | Path,
    image_root: str | Path | None = None,
    decode: bool = False,
    workers: int = 0,
    path_map: str = "auto",
    allow_outside_root: bool = False,
    against: Sequence[str | Path] = (),
) -> dict:
    """The report of ``camlt data check`` as a dict (the ``--json`` output).

    ``against``: other lists (e.g. the test split of a training list) whose images must not be
    this list's; every list's images are compared byte for byte when files are checked.
    """
    entries, base = read_any(path)
    root = Path(image_root).expanduser() if image_root else base
    labels = entries.labels
    if len(labels) and labels.min() < 0:
        bad = int(np.flatnonzero(labels < 0)[0])
        raise UsageError(f"{entries.source}:{entries.lines[bad]}: negative label {labels[bad]}")
    num_classes = len(entries.classes) if entries.classes else int(labels.max()) + 1
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    groups = shot_groups(present.tolist())
    report: dict = {
        "source": entries.source,
        "num_classes": int(len(present)),
        "num_images": len(entries),
        "label_range": [int(labels.min()), int(labels.max())],
        "labels_contiguous": bool(len(present) == num_classes),
        "absent_labels": np.flatnonzero(counts == 0).tolist(),
        "many": len(groups["many"]),
        "medium": len(groups["medium"]),
        "few": len(groups["few"]),
        "shot_rule": f"many > {MANY_ABOVE} > medium >= {FEW_BELOW} > few images per class",
        "max_per_class": int(present.max()),
        "min_per_class": int(present.min()),
        "imbalance_factor": float(present.max() / present.min()),
        "histogram": histogram(present),
        "classes": entries.classes,
        "counts": counts.tolist(),
        "image_root": str(root) if root else None,
        "files_checked": root is not None,
        "decoded": bool(decode and root is not None),
        "missing": 0,
        "corrupt": 0,
        "missing_files": [],
        "corrupt_files": [],
        "outside_root": 0,
        "outside_root_files": [],
        "duplicates": list(entries.meta.get("duplicates", [])),
        "empty_classes": list(entries.meta.get("empty_classes", [])),
    }
    others = {f"against {p}": read_any(p)[0] for p in against}
    if root is None:
        names = entries.classes or []
        report.update(check_splits({"list": entries, **others}, names).to_dict())
        return report
    mode = "exact" if base is not None and not image_root else path_map
    res = resolve_paths(entries.paths, root, mode, allow_outside_root)
    report["path_mapping"] = res.report(entries.source)
    report["outside_root"] = len(res.outside)
    report["outside_root_files"] = [
        f"{entries.source}:{entries.lines[i]}: {entries.paths[i]}" for i in res.outside
    ]
    report["missing"] = len(res.missing)
    report["missing_files"] = [
        f"{entries.source}:{entries.lines[i]}: {entries.paths[i]}" for i in res.missing
    ]
    found = [f for f in res.files if f is not None]
    corrupt = {f: "empty file (0 bytes)" for f in found if os.path.getsize(f) == 0}
    if decode:
        todo = [f for f in found if f not in corrupt]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                errors = list(pool.map(decode_error, todo, chunksize=64))
        else:
            errors = [decode_error(f) for f in todo]
        corrupt.update({f: e for f, e in zip(todo, errors, strict=True) if e})
    report["corrupt"] = len(corrupt)
    report["corrupt_files"] = [f"{f}: {why}" for f, why in sorted(corrupt.items())]
    resolved = {"list": entries.found(res.files)}
    for name, other in others.items():
        resolved[name] = other.found(
            resolve_paths(other.paths, root, mode, allow_outside_root).files
        )
    report.update(check_splits(resolved, entries.classes).to_dict())
    return report


def format_report(report: dict, per_class: bool = False, limit: int = 20) -> str:
    """The human-readable form of ``check``'s report."""
    lines = [
        f"{report['source']}: {report['num_images']} images in {report['num_classes']} classes "
        f"(labels {report['label_range'][0]}..{report['label_range'][1]}"
        f"{'' if report['labels_contiguous'] else ', NOT contiguous'})",
        f"per class: {report['max_per_class']} .. {report['min_per_class']} "
        f"(imbalance {report['imbalance_factor']:.1f}); shot groups: many {report['many']}, "
        f"medium {report['medium']}, few {report['few']} ({report['shot_rule']})",
    ]
    if report["absent_labels"]:
        lines.append(f"labels with no image: {report['absent_labels'][:limit]}")
    if report["duplicates"]:
        lines.append(f"reached twice through links, counted once: {len(report['duplicates'])}")
        lines += [f"  {name}" for name in report["duplicates"][:limit]]
    if report.get("empty_classes"):
        lines.append(
            "class folders without any image (training refuses them unless data.bad_images=skip): "
            + ", ".join(report["empty_classes"][:limit])
        )
    found = DataCheck(**{key: report[key] for key in CHECK_KEYS})
    lines += [f"NOT SAFE: {line}" for line in found.lines()]
    lines.append("images per class -> classes: " + ", ".join(
        f"{row['images']}: {row['classes']}" for row in report["histogram"] if row["classes"]
    ))  # fmt: skip
    if per_class:
        names = report["classes"] or [str(i) for i in range(len(report["counts"]))]
        lines += [f"  {name:<30} {n:>7}" for name, n in zip(names, report["counts"], strict=True)]
    if not report["files_checked"]:
        lines.append(
            "files not checked (pass --image-root DIR to look for missing files and for "
            "byte-identical copies)"
        )
        return _shown(lines)
    lines.append(report["path_mapping"])
    if report["outside_root"]:
        lines.append(f"outside the image root (refused unless allowed): {report['outside_root']}")
        lines += [f"  {name}" for name in report["outside_root_files"][:limit]]
    for key in ("missing", "corrupt"):
        names = report[f"{key}_files"]
        word = "undecodable" if key == "corrupt" else key
        lines.append(f"{word}: {report[key]}" + ("" if key == "missing" or report["decoded"]
                     else " (zero-byte files only; --decode opens every image)"))  # fmt: skip
        lines += [f"  {name}" for name in names[:limit]]
        if len(names) > limit:
            lines.append(f"  ... and {len(names) - limit} more (--json lists them all)")
    return _shown(lines)


def _shown(lines: list[str]) -> str:
    """The report's lines as printed: a file or class name never drives the terminal."""
    return "\n".join(printable(line) for line in lines)
