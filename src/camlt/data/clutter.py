"""Cluttered Fashion-MNIST (docs/clutter.md): the garment shrunk to a random place on a larger black
canvas among fragments of other garments, so that pooling over every location no longer pools
over the object alone, and its box kept for measuring where a map looks.

Every draw of image ``i`` of a split is a hash (SplitMix64's finaliser) of (split seed, split, i,
draw number) in unsigned 64-bit integer arithmetic, and the resizing is Pillow's fixed-point
resampling: the same bytes on every machine and every numpy, and the picture of an image does not
depend on which other images a run keeps. The draws and the pastes run over the whole split at
once; only the resizing goes image by image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

CANVAS = 32  # the side of every cluttered image: what the CIFAR ResNets take, as Fashion-MNIST-LT
SOURCE = 28  # Fashion-MNIST's side
SPLIT_CODES = {"train": 0, "test": 1}
_TAG = 0x636C7574  # "clut": keeps these draws apart from any other use of the same seeds


@dataclass(frozen=True)
class ClutterSpec:
    """The construction's sizes (``data.clutter.*``); the defaults are the benchmark's (docs/clutter.md)."""

    fragments: int = 4  # clutter pieces per image
    fragment_size: int = 8  # side of each piece, cropped from another image of the split
    min_size: int = 16  # the object's side S is drawn uniformly from min_size..max_size
    max_size: int = 24


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 whose every output bit depends on every input
    bit (numpy's uint64 arithmetic wraps modulo 2**64, as the hash wants)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draws(split_seed: int, split: str, indices: np.ndarray, n_words: int) -> np.ndarray:
    """(n, n_words) uint64 random words, each a function of (split seed, split, index, word)."""
    key = _mix(np.array([(_TAG << 32) ^ split_seed], dtype=np.uint64))
    key = _mix(key + np.uint64(SPLIT_CODES[split]))
    index = np.asarray(indices, dtype=np.uint64)[:, None]
    word = np.arange(n_words, dtype=np.uint64)[None, :]
    return _mix(_mix(key ^ index) + word * np.uint64(0x9E3779B97F4A7C15))


def _pick(words: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """Draws in 0..n-1 from 64-bit words (bias below n / 2**64), as int64."""
    return (words % np.asarray(n, dtype=np.uint64)).astype(np.int64)


def _paste_max(canvas: np.ndarray, pieces: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
    """canvas[i, y:y+f, x:x+f] = max(canvas there, pieces[i]) for every image i at once."""
    n, f = pieces.shape[0], pieces.shape[1]
    offset = np.arange(f)
    rows = (ys[:, None] + offset)[:, :, None]
    cols = (xs[:, None] + offset)[:, None, :]
    image = np.arange(n)[:, None, None]
    canvas[image, rows, cols] = np.maximum(canvas[image, rows, cols], pieces)


def render_split(
    sources: np.ndarray, indices: np.ndarray, split_seed: int, split: str, spec: ClutterSpec
) -> tuple[np.ndarray, np.ndarray]:
    """The cluttered images (n, 1, CANVAS, CANVAS) uint8 of ``indices`` and their objects' boxes
    (n, 4) int64 as (x0, y0, x1, y1), ends exclusive.

    ``sources`` is the whole split, (N, 28, 28) uint8: fragments come from any other image of it,
    so image i is the same picture whichever subset a run keeps.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n, f = len(indices), spec.fragment_size
    words = draws(split_seed, split, indices, 5 * spec.fragments + 3)
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    for k in range(spec.fragments):  # clutter first: 5 draws per fragment
        w = words[:, 5 * k : 5 * k + 5]
        other = _pick(w[:, 0], max(len(sources) - 1, 1))
        other += (other >= indices) & (len(sources) > 1)  # any image of the split but this one
        cy, cx = _pick(w[:, 1], SOURCE - f + 1), _pick(w[:, 2], SOURCE - f + 1)
        offset = np.arange(f)
        pieces = sources[
            other[:, None, None],
            (cy[:, None] + offset)[:, :, None],
            (cx[:, None] + offset)[:, None, :],
        ]
        _paste_max(canvas, pieces, _pick(w[:, 3], CANVAS - f + 1), _pick(w[:, 4], CANVAS - f + 1))
    w = words[:, 5 * spec.fragments :]  # then the object: side S, then its place
    sides = spec.min_size + _pick(w[:, 0], spec.max_size - spec.min_size + 1)
    y0, x0 = _pick(w[:, 1], CANVAS + 1 - sides), _pick(w[:, 2], CANVAS + 1 - sides)
    for side in np.unique(sides):
        members = np.flatnonzero(sides == side)
        garments = np.stack([_resized(sources[indices[i]], int(side)) for i in members])
        group = canvas[members]  # a copy: pasted into, then written back
        _paste_max(group, garments, y0[members], x0[members])
        canvas[members] = group
    boxes = np.stack([x0, y0, x0 + sides, y0 + sides], axis=1)
    return canvas[:, None], boxes


def _resized(image: np.ndarray, side: int) -> np.ndarray:
    """Pillow's bilinear resampling, which widens its filter when shrinking (antialiased)."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
