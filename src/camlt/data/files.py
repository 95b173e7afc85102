"""Image files on disk served by a torch DataLoader: decode with PIL, ImageNet-style transforms.

Each draw of an image carries its own seed (from the run seed, the epoch and its position in
the epoch), so the crop an image gets does not depend on the number of workers, on persistent
workers or on a resume. Workers hand back uint8 tensors (4x less inter-process traffic than
float); the loader normalises a whole batch on the training device.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from camlt.data.augment import AugmentSettings, policy_transforms
from camlt.data.inputs import IMAGENET_MEAN, IMAGENET_STD, MAX_PIXELS, Normaliser, check_pixels
from camlt.data.sources import DataError
from camlt.data.tensors import Sampler

if TYPE_CHECKING:
    from torchvision.transforms import v2


def imagenet_transform(
    augment: AugmentSettings | bool, size: int = 224, resize: int = 256
) -> v2.Compose:
    """Training: random-resized crop + flip (``crop_flip``), then the strong policies named;
    with no augmentation (and for evaluation) resize + centre crop. uint8 tensors out."""
    from torchvision.transforms import v2  # imported here: torchvision takes seconds to import

    if isinstance(augment, bool):
        augment = AugmentSettings(("crop_flip",) if augment else ())
    if augment.crop_flip:
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*steps, v2.PILToTensor(), *policy_transforms(augment, size)])


def header_error(path: str, max_pixels: int = MAX_PIXELS, decode: bool = False) -> str | None:
    """Why an image does not open (None when it does): empty, not an image, too large. Reads
    the header alone, a fraction of a decode; with ``decode`` also the compressed data, at a
    reduced size (a JPEG at 1/8 scale), which finds a file cut short."""
    try:
        with Image.open(path) as img:
            check_pixels(img, path, max_pixels)
            if decode:
                img.draft("RGB", (64, 64))
                img.load()
    except DataError as err:
        return str(err)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def decode(path: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image; raises UnidentifiedImageError / OSError for a file that is not one, and
    DataError for one above ``max_pixels`` (checked from the header, before decoding)."""
    with open(path, "rb") as fh:
        img = Image.open(fh)
        check_pixels(img, path, max_pixels)
        img.load()
    return img if img.mode == "RGB" else img.convert("RGB")  # no copy for RGB JPEGs


@dataclass
class FileImageSet(Dataset):
    """Image files with labels; indexed by (position, seed) pairs from ``DrawSampler``."""

    files: list[str]
    labels: torch.Tensor
    classes: list[str]
    transform: v2.Compose
    skip_bad: bool = False  # undecodable files: dropped from the batch (True) or fatal
    max_pixels: int = MAX_PIXELS  # data.max_pixels: larger images are refused by name
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __getitem__(self, key: tuple[int, int] | int):
        index, seed = key if isinstance(key, tuple) else (key, index_seed(0, 0, key))
        path = self.files[index]
        try:
            image = decode(path, self.max_pixels)
        # a damaged header can claim billions of pixels: PIL refuses it with a non-OSError, and
        # one within PIL's limit but above data.max_pixels is our DataError: both are bad images
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            return self._bad(path, f"{path}: cannot decode image ({err})")
        except DataError as err:
            return self._bad(path, str(err))
        # v2 transforms draw from the default CPU generator; seeding only it (not every device,
        # as torch.manual_seed does) costs microseconds instead of a millisecond per image
        cpu = torch.default_generator
        in_main = torch.utils.data.get_worker_info() is None
        state = cpu.get_state() if in_main else None  # workers=0: leave the caller's RNG as it was
        cpu.manual_seed(seed)
        try:
            tensor = self.transform(image)
        finally:
            if state is not None:
                cpu.set_state(state)
        return tensor, int(self.labels[index])

    def _bad(self, path: str, reason: str) -> tuple[None, str]:
        """A bad image is dropped (data.bad_images=skip) or refused with the way round it."""
        if not self.skip_bad:
            raise DataError(f"{reason}; set data.bad_images=skip to drop bad images") from None
        return None, path


def index_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the image drawn at ``position`` of ``epoch``."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + position) % 2**63  # any seed fits


class DrawSampler(torch.utils.data.Sampler):
    """The indices of an epoch (a plain shuffle or a class-aware ``sampler``), one shard of them.

    ``shard=(rank, world)`` gives process ``rank`` every world-th index; training pads the epoch
    to a multiple of ``world`` (as DistributedSampler does) so every process takes the same
    number of steps, evaluation does not, so no image is counted twice.
    """

    def __init__(
        self,
        size: int,
        train: bool,
        seed: int = 0,
        sampler: Sampler | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.size, self.train, self.seed = size, train, seed
        self.sampler, self.shard = sampler, shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This process's indices of the current epoch."""
        if not self.train:
            idx = torch.arange(self.size)
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = self.sampler(self.epoch, generator) if self.sampler else None
            idx = torch.randperm(self.size, generator=generator) if idx is None else idx
        rank, world = self.shard
        if world > 1:
            if self.train:
                per = -(-len(idx) // world)
                idx = torch.cat([idx, idx[: per * world - len(idx)]])
            idx = idx[rank::world]
        return idx

    def __len__(self) -> int:
        return len(self.indices())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self.shard
        for i, index in enumerate(self.indices().tolist()):
            yield index, index_seed(self.seed, self.epoch, i * world + rank)


def collate_drop_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the decoded images; report the paths of those that could not be decoded."""
    good = [item for item in batch if item[0] is not None]
    bad = [item[1] for item in batch if item[0] is None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return images, labels, bad


@dataclass
class LoaderOptions:
    """DataLoader throughput settings (train.workers etc.)."""

    workers: int = 4
    persistent_workers: bool = True
    pin_memory: bool = True
    prefetch_factor: int = 2


class FileLoader:
    """(images, labels) batches of a FileImageSet, normalised on ``device``.

    The same interface as BatchLoader: ``set_epoch``, ``len``, ``data``; undecodable images
    skipped by option are named once each and counted in ``bad_files``.
    """

    def __init__(
        self,
        data: FileImageSet,
        batch_size: int,
        train: bool,
        seed: int = 0,
        sampler: Sampler | None = None,
        shard: tuple[int, int] = (0, 1),
        channels_last: bool = False,
        options: LoaderOptions | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        options = options or LoaderOptions()
        self.data, self.batch_size, self.train = data, batch_size, train
        self.channels_last = channels_last
        self.device = torch.device(device)
        self.draws = DrawSampler(len(data), train, seed, sampler, shard)
        workers = options.workers
        self.loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=self.draws,
            num_workers=workers,
            collate_fn=collate_drop_bad,
            pin_memory=options.pin_memory and self.device.type == "cuda",
            drop_last=train,
            persistent_workers=options.persistent_workers and workers > 0,
            prefetch_factor=options.prefetch_factor if workers > 0 else None,
        )
        self.bad_files: set[str] = set()
        self.normalise = Normaliser(data.mean, data.std, self.device, channels_last)

    @property
    def sampler(self) -> Sampler | None:
        return self.draws.sampler

    def set_epoch(self, epoch: int) -> None:
        self.draws.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, bad in self.loader:
            for path in bad:
                if path not in self.bad_files:
                    self.bad_files.add(path)
                    print(f"camlt: skipped undecodable image {path}", file=sys.stderr)
            if len(labels) == 0:
                continue
            yield self.normalise(images), labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop persistent workers now rather than at interpreter exit."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.loader = DataLoader([])
