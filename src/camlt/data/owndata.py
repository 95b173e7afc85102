"""Users' own data: an image-folder tree (one folder per class) or a CSV of ``path,label``.

Both become SplitLists with class names, are split into train/val/test by a seeded
per-class (stratified) shuffle, and the training part can be cut to a long-tailed profile with
the same functions as the CIFAR/Fashion-MNIST benchmarks.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from camlt.data.inputs import IMAGE_SUFFIXES
from camlt.data.longtail import profile_counts, select_indices
from camlt.data.sources import DataError
from camlt.data.splitfile import SplitList


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def read_image_folder(root: str | Path, skip_empty: bool = False) -> SplitList:
    """Every image under ``root/<class>/...``; classes are the sorted folder names.

    A class folder without an image is refused, or with ``skip_empty`` left out (named in
    ``meta["empty_classes"]``, which training reports).

    Links are followed, but each real file counts once and each real folder is entered once: a
    link back up the tree cannot loop, and a link into another class's folder cannot put one
    image under two labels (or, after the split, into train and test at once). A file that lies
    in a class folder itself keeps that class; a file reached only through links goes to the
    first class (sorted) that links to it. Every later sighting is listed in
    ``meta["duplicates"]``, which training and ``camlt data check`` report.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class name>/<image>)")
    kept: dict[str, tuple[str, int]] = {}  # real path -> (relative path, label)
    duplicates: list[str] = []
    for links in (False, True):  # the files that lie in each folder first, then linked ones
        seen_dirs: set[str] = set()
        for label, name in enumerate(classes):
            for rel, real in _image_files(root, name, links, seen_dirs):
                if real not in kept:
                    kept[real] = (rel, label)
                elif links and kept[real][0] != rel:
                    duplicates.append(f"{rel} (the same file as {kept[real][0]})")
    entries = sorted(kept.values(), key=lambda e: (e[1], e[0]))
    paths = [rel for rel, _ in entries]
    labels = [label for _, label in entries]
    empty = sorted(set(classes) - {classes[i] for i in set(labels)})
    if empty and not skip_empty:
        raise DataError(
            f"{root}: class folders without any image: {', '.join(empty[:10])}; remove them, or "
            "set data.bad_images=skip to train without them"
        )
    kept = [name for name in classes if name not in empty]
    renumber = {classes.index(name): i for i, name in enumerate(kept)}
    lines = np.arange(1, len(paths) + 1)
    labels_kept = np.asarray([renumber[label] for label in labels], dtype=np.int64)
    found = SplitList(str(root), paths, labels_kept, lines, kept)
    found.meta["duplicates"] = duplicates
    found.meta["empty_classes"] = empty
    return found


def _image_files(root: Path, name: str, links: bool, seen_dirs: set[str]):
    """(relative path, real path) of the images under ``root/name``: without links, the plain
    files alone; with links, every file, entering each real folder once."""
    for dirpath, dirs, files in os.walk(root / name, followlinks=links):
        dirs.sort()
        if links:
            real_dir = os.path.realpath(dirpath)
            if real_dir in seen_dirs:
                dirs[:] = []  # a cycle, or a folder two links lead to
                continue
            seen_dirs.add(real_dir)
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for file in sorted(files):
            full = os.path.join(dirpath, file)
            if is_image_name(file) and (links or not os.path.islink(full)):
                yield f"{rel}/{file}", os.path.realpath(full)


def duplicate_report(found: SplitList) -> str | None:
    """One line naming the files reached twice (through links) and counted once, if any."""
    duplicates = found.meta.get("duplicates", [])
    if not duplicates:
        return None
    shown = "; ".join(duplicates[:5]) + (
        f"; and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
    )
    return (
        f"{found.source}: {len(duplicates)} image(s) reached a second time through links were "
        f"counted once, where first found: {shown}"
    )


def read_csv_list(path: str | Path) -> SplitList:
    """Rows ``path,label`` (a header row is recognised); labels are integers or class names.

    Spaces around a field are the CSV's layout, not the name (``cat `` is ``cat``); an empty
    field is refused with its line, never made a class named ``""``."""
    path = Path(path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DataError(f"CSV file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read CSV ({err})") from None
    paths, raw, numbers = [], [], []
    for number, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].startswith("#"):
            continue
        if len(row) != 2:
            raise DataError(f"{path}:{number}: expected 'path,label', found {len(row)} fields")
        if number == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
            continue  # header
        for value, what in ((row[0], "path"), (row[1], "label")):
            if not value.strip():
                raise DataError(f"{path}:{number}: empty {what} (expected 'path,label')")
        paths.append(row[0].strip())
        raw.append(row[1].strip())
        numbers.append(number)
    if not paths:
        raise DataError(f"{path}: no 'path,label' row")
    if all(_is_int(v) for v in raw):
        huge = [i for i, v in enumerate(raw) if abs(int(v)) >= 2**31]  # would overflow int64
        if huge:
            raise DataError(f"{path}:{numbers[huge[0]]}: label {raw[huge[0]]} is out of range")
        labels = np.asarray([int(v) for v in raw], dtype=np.int64)
        classes = None
    else:
        classes = sorted(set(raw))
        index = {name: i for i, name in enumerate(classes)}
        labels = np.asarray([index[v] for v in raw], dtype=np.int64)
    return SplitList(str(path), paths, labels, np.asarray(numbers), classes)


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) positions: per class, a seeded shuffle cut by the val/test fractions.

    Each class keeps at least one training image; a class with enough images gets at least one
    val and one test image when the fraction is positive.
    """
    val_frac, test_frac = fractions
    if val_frac < 0 or test_frac < 0 or val_frac + test_frac >= 1:
        raise DataError(
            f"data.val_fraction={val_frac}, data.test_fraction={test_frac}: each must be >= 0 "
            "and their sum below 1"
        )
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for cls in range(int(labels.max()) + 1):
        pool = rng.permutation(np.flatnonzero(labels == cls))
        n = len(pool)
        n_test = max(1, round(test_frac * n)) if test_frac > 0 and n >= 3 else 0
        n_val = max(1, round(val_frac * n)) if val_frac > 0 and n - n_test >= 2 else 0
        parts[2].append(pool[:n_test])
        parts[1].append(pool[n_test : n_test + n_val])
        parts[0].append(pool[n_test + n_val :])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def longtail_subsample(
    labels: np.ndarray,
    num_classes: int,
    n_max: int | None,
    imbalance: float,
    profile: str,
    seed: int,
) -> tuple[np.ndarray, list[int]]:
    """Positions to keep so class counts follow the profile; ranks go to the largest classes first."""
    available = np.bincount(labels, minlength=num_classes)
    order = sorted(range(num_classes), key=lambda c: (-available[c], c))
    by_rank = profile_counts(num_classes, n_max or int(available.max()), imbalance, profile)
    counts = [0] * num_classes
    for rank, cls in enumerate(order):
        counts[cls] = by_rank[rank]
        if counts[cls] > available[cls]:
            raise DataError(
                f"data.subsample: class {cls} has {available[cls]} training images but the "
                f"{profile} profile (n_max={n_max}, imbalance={imbalance}) asks for {counts[cls]}"
            )
    try:
        keep = select_indices(labels, counts, seed)
    except ValueError as err:
        raise DataError(f"data.subsample: {err}") from None
    return keep, counts
