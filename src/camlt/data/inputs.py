"""The one input path: how an image becomes a model input.

The normalisation constants and the shape of each in-memory benchmark's input (Fashion-MNIST's
28 x 28 padded to 32, CIFAR's 32 x 32 RGB) are declared once, in ``DATASETS``; image-file
datasets take theirs from the config (``data.image_size``, ``data.resize_size``) and ImageNet's
statistics. The in-memory loader, the file loader, ``camlt predict``, ``camlt cam``, TensorBoard
and the report all read them here, so a model sees at prediction exactly what it trained on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from camlt.data.sources import DataError
from camlt.errors import UsageError, printable
from camlt.registry import Registry

# Every suffix read as an image: by image folders, by `camlt predict` on a folder, by data check.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# ImageNet statistics, for datasets that do not declare their own (file-based benchmarks).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# The most pixels an image may claim before it is decoded (data.max_pixels): 50 million is a
# 48-megapixel photo with room to spare, and a hundredth of what a decompression bomb asks for.
MAX_PIXELS = 50_000_000


def check_pixels(image: Image.Image, path: str | Path, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse, before decoding, an image larger than the toolkit's inputs could ever need."""
    w, h = image.size
    if w * h > max_pixels:
        raise DataError(
            f"{path}: {w} x {h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
            "(data.max_pixels; camlt predict --max-pixels); shrink the image or raise the limit"
        )


# Fashion-MNIST-LT's hard order: rank r of the long-tailed profile holds original class
# FMNIST_HARD_ORDER[r] (shirt, the class most confused with others, the rarest).
FMNIST_HARD_ORDER = (1, 5, 7, 8, 9, 3, 0, 2, 4, 6)


@dataclass(frozen=True)
class DatasetSpec:
    """What an in-memory benchmark needs beyond its files: sizes, input shape, normalisation."""

    num_classes: int
    n_max: int  # the per-class maximum of the long-tailed profile
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    side: int = 32  # the stored images' side, before ``pad``
    pad: int = 0  # zero border added to every image (Fashion-MNIST 28 -> 32, as the ResNets expect)
    files: str = "cifar"  # whose files it reads: fmnist | cifar
    hard_order: tuple[int, ...] | None = None  # the classes of data.order=hard, by rank
    cluttered: bool = False  # drawn on a canvas among clutter, with boxes (camlt.data.clutter)
    # which images the long-tailed subset keeps (camlt.data.longtail.SUBSET_RULES): "shared" is
    # the CIFAR-LT rule of the published numbers; "camlt" this project's own generator
    subset_rule: str = "camlt"


FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
# The cluttered training split's own statistics (all 60,000 images, split seed 0): the canvas
# is mostly black, so Fashion-MNIST's would shift every input.
CLUTTER_MEAN, CLUTTER_STD = (0.1861,), (0.3124,)
_FMNIST = {"channels": 1, "files": "fmnist", "hard_order": FMNIST_HARD_ORDER}
DATASETS: Registry[DatasetSpec] = Registry(
    "data.name",
    {
        "fmnist_lt": DatasetSpec(10, 5000, FMNIST_MEAN, FMNIST_STD, side=28, pad=2, **_FMNIST),
        "fmnist_lt_clutter": DatasetSpec(
            10, 5000, CLUTTER_MEAN, CLUTTER_STD, side=32, cluttered=True, **_FMNIST
        ),
        "cifar10_lt": DatasetSpec(
            10, 5000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), subset_rule="shared"
        ),
        "cifar100_lt": DatasetSpec(
            100, 500, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), subset_rule="shared"
        ),
    },
)


@dataclass(frozen=True)
class InputSpec:
    """How a decoded image becomes a training-sized uint8 tensor."""

    channels: int  # 1 (grey) or 3 (RGB)
    size: int  # side after resizing (and cropping), before padding
    pad: int = 0  # zero border added after resizing (Fashion-MNIST 28 -> 32)
    resize_short: int | None = None  # resize the short side to this, then center-crop `size`
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_pixels: int = MAX_PIXELS  # larger images are refused before decoding (data.max_pixels)

    @property
    def shape(self) -> tuple[int, int, int]:
        side = self.size + 2 * self.pad
        return (self.channels, side, side)


def normalisation(
    cfg: DictConfig, spec: DatasetSpec
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's mean and std, or ``data.mean`` / ``data.std`` where a recipe sets them."""
    out = []
    for key, default in (("mean", spec.mean), ("std", spec.std)):
        given = OmegaConf.select(cfg, f"data.{key}", default=None)
        if given is not None and len(given) != spec.channels:
            raise DataError(
                f"data.{key}={list(given)}: {cfg.data.name} has {spec.channels} channel(s), one "
                "number each"
            )
        out.append(tuple(float(v) for v in given) if given is not None else default)
    return out[0], out[1]


def input_spec(cfg: DictConfig) -> InputSpec:
    """The input of a config's dataset, matching what ``camlt.data`` feeds the model in training."""
    spec = DATASETS.get(cfg.data.name)
    limit = OmegaConf.select(cfg, "data.max_pixels", default=MAX_PIXELS)
    if spec is not None:  # an in-memory benchmark: its declared shape and statistics
        mean, std = normalisation(cfg, spec)
        return InputSpec(spec.channels, spec.side, spec.pad, mean=mean, std=std, max_pixels=limit)
    # Image files (camlt.data.files): RGB, short side to data.resize_size, center crop.
    size = OmegaConf.select(cfg, "data.image_size", default=224)
    resize = OmegaConf.select(cfg, "data.resize_size", default=round(size * 256 / 224))
    return InputSpec(
        3, size, resize_short=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixels=limit
    )


def to_input(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A decoded image as the uint8 (C, H, W) tensor the model was trained on."""
    image = image.convert("L" if spec.channels == 1 else "RGB")
    if spec.resize_short:
        w, h = image.size
        ratio = spec.resize_short / min(w, h)
        image = image.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - spec.size) // 2, (h - spec.size) // 2
        image = image.crop((left, top, left + spec.size, top + spec.size))
    elif image.size != (spec.size, spec.size):
        image = image.resize((spec.size, spec.size), Image.BILINEAR)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    tensor = data.view(spec.size, spec.size, spec.channels).permute(2, 0, 1)
    if spec.pad:
        tensor = torch.nn.functional.pad(tensor, (spec.pad,) * 4)
    return tensor.contiguous()


def has_colour(image: Image.Image) -> bool:
    """Whether an image holds colour that a greyscale model would lose (not grey stored as RGB)."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    red, green, blue = image.convert("RGB").split()
    return red.tobytes() != green.tobytes() or green.tobytes() != blue.tobytes()


def decode(path: Path, spec: InputSpec, squashed: list[Path] | None = None) -> torch.Tensor:
    """Decode one image file; raises ValueError naming the file when it is not an image. A
    colour image given to a greyscale model is appended to ``squashed``."""
    try:
        with Image.open(path) as image:
            check_pixels(image, path, spec.max_pixels)
            image.load()
            if squashed is not None and spec.channels == 1 and has_colour(image):
                squashed.append(path)
            return to_input(image, spec)
    except DataError as err:
        raise UsageError(str(err)) from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path}: cannot decode image ({reason})") from None


class Normaliser:
    """uint8 (B, C, H, W) batches to the float input the model trains on: ``(x - 255 mean) /
    (255 std)`` per channel. The loaders keep one on their device, so a batch is normalised
    where it trains; ``camlt predict`` and the maps use the same one on the CPU."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> None:
        self.mean = torch.tensor(tuple(mean), device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(tuple(std), device=device).view(1, -1, 1, 1) * 255
        self.channels_last = channels_last

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = (batch.to(self.mean.device, non_blocking=True).float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def normalise(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (B, C, H, W) -> the normalised float batch of ``spec``'s dataset, on the CPU."""
    return Normaliser(spec.mean, spec.std)(images)


def set_images(data, indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """uint8 (N, C, H, W) evaluation inputs of a dataset's images (tensors or decoded files),
    and the indices kept (an undecodable file of a ``data.bad_images=skip`` set is left out)."""
    indices = [int(i) for i in indices]
    if hasattr(data, "images"):  # TensorImageSet
        return data.images[indices], indices
    items = [(i, data[i][0]) for i in indices]  # FileImageSet: its own evaluation transform
    kept = [(i, t) for i, t in items if t is not None]
    if not kept:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), []
    return torch.stack([t for _, t in kept]), [i for i, _ in kept]


def load_images(
    paths: Sequence[Path], spec: InputSpec, warn=None
) -> tuple[list[Path], torch.Tensor | None]:
    """Decode every path; an undecodable one is named through ``warn`` and left out."""
    warn = warn or (lambda msg: print(f"camlt: skipped {msg}", file=sys.stderr))
    kept, tensors, squashed = [], [], []
    for path in paths:
        try:
            tensors.append(decode(path, spec, squashed))
            kept.append(path)
        except ValueError as err:
            warn(str(err))
    if squashed:
        shown = ", ".join(printable(str(p)) for p in squashed[:3]) + (" ..." * (len(squashed) > 3))
        print(
            f"camlt: warning: {len(squashed)} colour image(s) made grey for a model trained on "
            f"greyscale images; its answers on them may be poor: {shown}",
            file=sys.stderr,
        )
    return kept, (torch.stack(tensors) if tensors else None)
