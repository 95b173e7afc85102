"""Images in two places at once, and class names that print alike.

A test image whose bytes are also a training image (a leak) scores what the model memorised; a
file under two labels teaches both; a folder ``dress `` beside ``dress`` splits one class in two.
None of these raise anywhere else, so they are looked for here, on file data, before training.

Cheap first: one ``stat`` per file gives its size, and only files whose size another file shares
are read; of those, a sample (the first and last ``SAMPLE_BYTES``: a JPEG's header can be the
same for every photo of one camera, its compressed data cannot) is hashed, and only files whose
samples agree are hashed whole. Size alone sets most files apart.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from camlt.data.splitfile import SplitList
from camlt.errors import printable

SAMPLE_BYTES = 4096
SHOWN = 5  # examples named in a message; the JSON lists every one


@dataclass
class DataCheck:
    """What the check found; every entry names ``source:line path`` so a user can find it."""

    leaks: list[str] = field(default_factory=list)  # an image of a later split also in an earlier
    conflicts: list[str] = field(default_factory=list)  # one image under two labels
    repeats: list[str] = field(default_factory=list)  # one image twice in a class of a split
    lookalike_classes: list[list[str]] = field(default_factory=list)
    files_hashed: int = 0

    def to_dict(self) -> dict:
        return {
            "leaks": self.leaks,
            "conflicts": self.conflicts,
            "repeats": self.repeats,
            "lookalike_classes": self.lookalike_classes,
            "files_hashed": self.files_hashed,
        }

    @property
    def refused(self) -> bool:
        """What data.leaks=error refuses: results that would be wrong without a word."""
        return bool(self.leaks or self.conflicts or self.lookalike_classes)

    def lines(self) -> list[str]:
        """One line per kind found, with the first examples."""
        found = []
        kinds = (
            (self.leaks, "images of one split are byte-identical to images of another"),
            (self.conflicts, "images appear under two labels"),
            (self.repeats, "images appear twice in one class of a split"),
        )
        for items, what in kinds:
            if items:
                found.append(f"{len(items)} {what}: {_shown(items)}")
        if self.lookalike_classes:
            groups = ["/".join(repr(name) for name in group) for group in self.lookalike_classes]
            found.append(
                "class names that differ only by case, whitespace or Unicode form: "
                + _shown(groups)
            )
        return [printable(line) for line in found]


def _shown(items: list[str]) -> str:
    more = f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more


def label_key(name: str) -> str:
    """What a reader sees of a class name: Unicode form, case and spacing folded."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def lookalike_classes(classes: Iterable[str]) -> list[list[str]]:
    """Groups of distinct class names that a reader cannot tell apart."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in classes:
        groups[label_key(name)].append(name)
    return [names for names in groups.values() if len(names) > 1]


def _digest(path: str, whole: bool) -> str | None:
    """A hash of the file's sample (or of all of it); None when unreadable (missing and
    undecodable files are the loaders' to report)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            if not whole:
                digest.update(fh.read(SAMPLE_BYTES))
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - SAMPLE_BYTES))
                digest.update(fh.read(SAMPLE_BYTES))
            else:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def identical_groups(paths: list[str]) -> tuple[list[list[int]], int]:
    """Positions of ``paths`` whose files hold the same bytes (groups of two or more), and how
    many files were read. One file listed twice is one group without being read."""
    by_real: dict[str, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        by_real[os.path.realpath(path)].append(i)
    by_size: dict[int, list[str]] = defaultdict(list)
    for real in by_real:
        try:
            size = os.stat(real).st_size
        except OSError:
            continue
        if size:  # an empty file is no image: the loaders name it
            by_size[size].append(real)
    candidates = [group for group in by_size.values() if len(group) > 1]
    read = 0
    same: list[list[str]] = []
    for group in candidates:
        read += len(group)
        for sampled in _group_by(group, lambda p: _digest(p, whole=False)):
            if os.stat(sampled[0]).st_size > 2 * SAMPLE_BYTES:
                same += _group_by(sampled, lambda p: _digest(p, whole=True))
            else:
                same.append(sampled)
    merged = {real: [real] for real in by_real}
    for group in same:
        for real in group:
            merged[real] = group
    groups, done = [], set()
    for real, members in merged.items():
        if real in done:
            continue
        done.update(members)
        positions = sorted(i for member in members for i in by_real[member])
        if len(positions) > 1:
            groups.append(positions)
    return groups, read


def _group_by(paths: list[str], key) -> list[list[str]]:
    """The groups of two or more paths with the same (readable) key."""
    groups: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        value = key(path)
        if value is not None:
            groups[value].append(path)
    return [group for group in groups.values() if len(group) > 1]


def check_splits(splits: Mapping[str, SplitList | None], classes: list[str] | None) -> DataCheck:
    """Leaks, label conflicts and repeats among the splits' files (their resolved paths; in the
    splits' order, training first), and look-alike class names."""
    entries = [(name, i) for name, split in splits.items() if split for i in range(len(split))]
    paths = [splits[name].paths[i] for name, i in entries]  # type: ignore[union-attr]
    groups, read = identical_groups(paths)
    found = DataCheck(lookalike_classes=lookalike_classes(classes or []), files_hashed=read)
    for group in groups:
        members = [entries[k] for k in group]
        _classify(members, splits, found)
    return found


def _where(splits: Mapping[str, SplitList | None], name: str, i: int) -> str:
    split = splits[name]
    assert split is not None
    return f"{name} {os.path.basename(split.source)}:{split.lines[i]} {split.paths[i]}"


def _classify(
    members: list[tuple[str, int]], splits: Mapping[str, SplitList | None], found: DataCheck
) -> None:
    """Sort one group of identical files into leaks (in two splits: each copy outside the first
    split it is in, named with that first copy), conflicts (two labels) and repeats."""
    first: dict[str, tuple[str, int]] = {}
    for name, i in members:
        first.setdefault(name, (name, i))
    order = list(first)  # the splits' own order: train, val, test
    for name in order[1:]:
        for member in [m for m in members if m[0] == name]:
            found.leaks.append(f"{_where(splits, *member)} = {_where(splits, *first[order[0]])}")
    labels = {int(splits[n].labels[i]) for n, i in members}  # type: ignore[union-attr]
    if len(labels) > 1:
        names = ", ".join(_where(splits, n, i) for n, i in members[:4])
        found.conflicts.append(f"{names} (labels {sorted(labels)})")
        return
    for name in order:
        same = [m for m in members if m[0] == name]
        if len(same) > 1:
            found.repeats.append(", ".join(_where(splits, n, i) for n, i in same[:4]))
