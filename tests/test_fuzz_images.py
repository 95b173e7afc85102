"""Property-based test of image decoding in user datasets: truncated, bit-flipped or forged
image files are either decoded or refused as DataError (skipped with data.bad_images=skip);
no other exception escapes from the dataset."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import torch
from fuzz_settings import examples
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from camlt.data.files import FileImageSet, imagenet_transform
from camlt.data.sources import DataError

FAST = examples(100)


def encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF")}


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge image (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@FAST
@given(
    fmt=st.sampled_from(sorted(VALID)),
    how=st.sampled_from(["truncate", "flip", "empty"]),
    data=st.data(),
)
@example(fmt="PNG", how="bomb", data=None)
@example(fmt="GIF", how="huge", data=None)  # found by hypothesis: DecompressionBombError escaped
@example(fmt="BMP", how="wide", data=None)  # found by hypothesis: over data.max_pixels, no hint
def test_damaged_images_are_decoded_or_refused(fmt, how, data, tmp_path):
    raw = VALID[fmt]
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        out = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 6))):
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
        raw = bytes(out)
    elif how == "empty":
        raw = b""
    elif how == "huge":  # a GIF whose screen size says 65535 x 65535
        raw = raw[:6] + b"\xff\xff\xff\xff" + raw[10:]
    elif how == "wide":  # a BMP whose header says 4,194,314 x 12: within PIL's limit, not ours
        raw = raw[:18] + struct.pack("<ii", 4_194_314, 12) + raw[26:]
    else:
        raw = png_header_claiming(100_000, 100_000)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(raw)
    for skip in (False, True):
        dataset = FileImageSet(
            [str(path)],
            torch.zeros(1, dtype=torch.int64),
            ["a"],
            imagenet_transform(False, 8, 8),
            skip_bad=skip,
        )
        try:
            item = dataset[0]
        except DataError as err:
            assert not skip and str(path) in str(err) and "bad_images=skip" in str(err)
            continue
        image = item[0]
        assert image is None and skip or (image.shape == (3, 8, 8) and image.dtype == torch.uint8)
