"""Find the images a split file names, whatever copy of the split file the user has.

The circulating copies of the ImageNet-LT / Places-LT split files disagree on path prefixes
(``val/X.JPEG`` against ``val/<wnid>/X.JPEG``; ``val/airfield/X.jpg`` against ``val_256/X.jpg``;
``data_256/a/airfield/X.jpg``), and users then hit FileNotFoundError. Rather than
a table of known layouts, ``auto`` first tries the paths as written; when some are not there it
indexes the image root once and matches each entry by the longest unique tail of its path
(``airfield/00000029.jpg``, then ``X.JPEG``), which covers every layout above and refuses to
guess between two files with the same tail. An explicit ``OLD->NEW`` prefix rewrite is the
option for layouts that tail matching cannot decide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from camlt.data.sources import DataError

MAX_TAIL = 3  # path components compared from the end
_AMBIGUOUS = ""


@dataclass
class Resolution:
    """Where each entry's image lies (``None`` when missing) and how it was found."""

    files: list[str | None]
    mapping: str  # exact | suffix | rewrite OLD->NEW
    root: str
    example: tuple[str, str] | None = None  # one (split-file path, path on disk) pair that differ
    ambiguous: int = 0  # entries whose tail matched several files
    missing: list[int] = field(default_factory=list)  # positions of entries not found
    outside: list[int] = field(default_factory=list)  # positions of entries leaving the root
    allowed_outside: bool = False  # whether those were resolved (data.allow_outside_root)

    @property
    def resolved(self) -> int:
        return len(self.files) - len(self.missing)

    def report(self, source: str) -> str:
        """One line for the user: the mapping used and how many entries it resolved."""
        text = (
            f"{source}: {self.resolved}/{len(self.files)} images found under {self.root} "
            f"(path mapping: {self.mapping}"
        )
        if self.example:
            text += f", e.g. '{self.example[0]}' -> '{self.example[1]}'"
        text += ")"
        if self.ambiguous:
            text += f"; {self.ambiguous} paths matched several files and were not guessed"
        if self.outside:
            verdict = (
                "read there (data.allow_outside_root=true)" if self.allowed_outside else "refused"
            )
            text += (
                f"; {len(self.outside)} paths climb out of {self.root} with '..' and were {verdict}"
            )
        return text


def leaves_root(path: str) -> bool:
    """Whether a split-file path, joined to the image root, names a place outside it: ``..``
    that climbs above the root. Decided on the text, so a link inside the root stays allowed."""
    normal = os.path.normpath(path.replace("\\", "/").lstrip("/"))
    return normal == ".." or normal.startswith("../")


def resolve_paths(
    paths: list[str], root: str | Path, mode: str = "auto", allow_outside: bool = False
) -> Resolution:
    """Resolve split-file paths against ``root`` by ``mode``: auto | exact | suffix | OLD->NEW.

    A path that climbs out of the root (``../x.jpg``) is refused (left unresolved and listed in
    ``outside``) unless ``allow_outside``: a split file must not read images from elsewhere
    while its report says they were found under the root.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image root {root} is not a directory (data.image_root)")
    outside = [i for i, p in enumerate(paths) if leaves_root(p)]
    if outside and not allow_outside:
        blocked = set(outside)
        inside = [p for i, p in enumerate(paths) if i not in blocked]
        res = resolve_paths(inside, root, mode)
        files = iter(res.files)
        res.files = [None if i in blocked else next(files) for i in range(len(paths))]
        keep = [i for i in range(len(paths)) if i not in blocked]
        res.missing = [keep[j] for j in res.missing]
        res.outside = outside
        return res
    res = _resolve_inside(paths, root, mode)
    res.outside, res.allowed_outside = outside, bool(outside)
    return res


def _resolve_inside(paths: list[str], root: Path, mode: str) -> Resolution:
    if "->" in mode:
        old, new = mode.split("->", 1)
        rewritten = [new + p[len(old) :] if p.startswith(old) else p for p in paths]
        res = _exact(rewritten, root, f"rewrite {old}->{new}")
        res.example = next(((a, b) for a, b in zip(paths, rewritten, strict=True) if a != b), None)
        return res
    if mode == "exact":
        return _exact(paths, root, "exact")
    if mode == "suffix":
        return _by_suffix(paths, root)
    if mode != "auto":
        raise DataError(f"data.path_map={mode!r}: expected auto, exact, suffix or OLD->NEW")
    step = max(1, len(paths) // 100)
    sample = paths[::step]
    if all((root / p.lstrip("/")).is_file() for p in sample):
        res = _exact(paths, root, "exact")
        if not res.missing:
            return res
    return _by_suffix(paths, root)


def _exact(paths: list[str], root: Path, mapping: str) -> Resolution:
    files: list[str | None] = []
    missing = []
    for i, p in enumerate(paths):
        full = os.path.join(root, p.lstrip("/"))
        if os.path.isfile(full):
            files.append(full)
        else:
            files.append(None)
            missing.append(i)
    return Resolution(files, mapping, str(root), missing=missing)


def _tail(parts: list[str], k: int) -> str:
    return "/".join(parts[-k:])


def _by_suffix(paths: list[str], root: Path) -> Resolution:
    """Match each path by the longest tail (up to MAX_TAIL components) unique under ``root``."""
    wanted = {p.rsplit("/", 1)[-1] for p in paths}
    tails: list[dict[str, str]] = [{} for _ in range(MAX_TAIL + 1)]
    for dirpath, _dirs, names in os.walk(root, followlinks=True):
        rel_dir = os.path.relpath(dirpath, root)
        dir_parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        for name in names:
            if name not in wanted:
                continue
            parts = [*dir_parts, name]
            rel = "/".join(parts)
            for k in range(1, min(MAX_TAIL, len(parts)) + 1):
                key = _tail(parts, k)
                tails[k][key] = _AMBIGUOUS if key in tails[k] else rel
            tails[0][rel] = rel  # the exact relative path
    files: list[str | None] = []
    missing, ambiguous, example = [], 0, None
    for i, p in enumerate(paths):
        parts = p.strip("/").split("/")
        found = tails[0].get("/".join(parts))
        saw_ambiguous = False
        for k in range(min(MAX_TAIL, len(parts)), 0, -1):
            if found:
                break
            hit = tails[k].get(_tail(parts, k))
            if hit == _AMBIGUOUS:
                saw_ambiguous = True
            elif hit is not None:
                found = hit
        if found is None:
            files.append(None)
            missing.append(i)
            ambiguous += saw_ambiguous
            continue
        if example is None and found != p:
            example = (p, found)
        files.append(os.path.join(root, found))
    mapping = "suffix (paths matched by their last components)" if example else "exact"
    return Resolution(files, mapping, str(root), example, ambiguous, missing)
