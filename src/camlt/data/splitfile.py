"""Split files (``relative/path label`` per line) and the checks their labels need.

Parsing is one pass of plain string splits, so iNaturalist 2018's 437,513 lines take well under a
second; every malformed line is reported with the file name and its line number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camlt.data.sources import DataError


@dataclass
class SplitList:
    """The entries of one split file: relative paths, integer labels and their line numbers."""

    source: str
    paths: list[str]
    labels: np.ndarray  # int64
    lines: np.ndarray  # 1-based line number of each entry, for error messages
    classes: list[str] | None = None  # class names, where the source has them
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray) -> SplitList:
        """The entries at the positions ``keep`` (same source, classes and meta)."""
        return SplitList(
            self.source,
            [self.paths[i] for i in keep],
            self.labels[keep],
            self.lines[keep],
            self.classes,
            dict(self.meta),
        )

    def found(self, files: list[str | None]) -> SplitList:
        """The entries whose file was found (``files[i]`` None: missing), paths as found."""
        keep = np.asarray([i for i, f in enumerate(files) if f is not None], dtype=np.int64)
        kept = self.subset(keep)
        kept.paths = [files[i] for i in keep]  # type: ignore[misc]
        return kept


def read_split_file(path: str | Path) -> SplitList:
    """Parse ``path label`` lines; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read split file ({err})") from None
    paths: list[str] = []
    labels: list[int] = []
    numbers: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)  # a path may hold spaces; the label is the last field
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'relative/path label', found {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(
                f"{path}:{number}: label {parts[1]!r} is not an integer (line {line!r})"
            ) from None
        if abs(label) >= 2**31:  # would overflow the int64 label array (or be a typo)
            raise DataError(f"{path}:{number}: label {label} is out of range (line {line!r})")
        paths.append(parts[0])
        labels.append(label)
        numbers.append(number)
    if not paths:
        raise DataError(f"{path}: the split file holds no 'path label' line")
    return SplitList(
        str(path), paths, np.asarray(labels, dtype=np.int64), np.asarray(numbers, dtype=np.int64)
    )


def check_labels(
    train: SplitList, num_classes: int | None, mode: str
) -> tuple[np.ndarray | None, list[int]]:
    """Validate the training labels; return (label map or None, original label per class).

    ``strict`` wants labels 0..K-1 with every class present (K = ``num_classes`` when the
    benchmark fixes it); ``remap`` sends the sorted distinct labels to 0..K-1 instead.
    """
    labels = train.labels
    present = np.unique(labels)
    if mode == "remap":
        return present, present.tolist()
    low, high = int(labels.min()), int(labels.max())
    expected = num_classes if num_classes is not None else high + 1
    if low < 0 or high >= expected:
        bad = int(np.flatnonzero((labels < 0) | (labels >= expected))[0])
        raise DataError(
            f"{train.source}:{train.lines[bad]}: label {labels[bad]} is out of range "
            f"0..{expected - 1}; set data.labels=remap to renumber the labels found"
        )
    if len(present) != expected:
        absent = sorted(set(range(expected)) - set(present.tolist()))
        raise DataError(
            f"{train.source}: labels are not contiguous: {len(absent)} of 0..{expected - 1} have "
            f"no training image (first: {absent[:10]}); set data.labels=remap to renumber them"
        )
    return None, list(range(expected))


def apply_label_map(split: SplitList, label_map: np.ndarray | None, num_classes: int) -> None:
    """Renumber ``split`` in place by ``label_map`` (sorted original labels) and range-check it."""
    labels = split.labels
    if label_map is not None:
        pos = np.searchsorted(label_map, labels)
        pos = np.clip(pos, 0, len(label_map) - 1)
        unknown = np.flatnonzero(label_map[pos] != labels)
        if len(unknown):
            i = int(unknown[0])
            raise DataError(
                f"{split.source}:{split.lines[i]}: label {labels[i]} has no training image, so "
                f"the remapping has no class for it ({len(unknown)} such lines)"
            )
        split.labels = pos.astype(np.int64)
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{split.source}:{split.lines[i]}: label {labels[i]} is out of range "
            f"0..{num_classes - 1} ({len(bad)} such lines)"
        )
