"""One entry point from a config to batches: in-memory benchmarks and image files alike.

``build_loaders`` is what the engine calls; ``build_sets`` is the part without loaders (what
``camlt data stats`` needs). A run sees the same interface either way: ``loader.set_epoch``,
``len(loader)``, a ``sampler`` attribute for class-aware sampling, and (images, labels) batches.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from camlt.data.augment import AugmentSettings, batch_policy
from camlt.data.benchmarks import build_benchmark_sets
from camlt.data.files import (
    FileImageSet,
    FileLoader,
    LoaderOptions,
    header_error,
    imagenet_transform,
)
from camlt.data.inputs import DATASETS
from camlt.data.leaks import check_splits
from camlt.data.owndata import (
    duplicate_report,
    longtail_subsample,
    read_csv_list,
    read_image_folder,
    stratified_split,
)
from camlt.data.paths import resolve_paths
from camlt.data.sources import DataError
from camlt.data.splitfile import SplitList, apply_label_map, check_labels, read_split_file
from camlt.data.tensors import BatchLoader, Sampler, TensorImageSet
from camlt.errors import UsageError, printable
from camlt.registry import Registry


@dataclass(frozen=True)
class FileBenchmark:
    """A split-file benchmark: its class count and the split files' usual names."""

    num_classes: int | None
    train: str | None
    val: str | None
    test: str | None


FILE_BENCHMARKS = {
    "imagenet_lt": FileBenchmark(
        1000, "ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"
    ),
    "places_lt": FileBenchmark(
        365, "Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"
    ),
    # iNaturalist 2018 has no test split: its official val split is the test split, as the field reports it.
    "inat2018": FileBenchmark(8142, "iNaturalist18_train.txt", None, "iNaturalist18_val.txt"),
    "split_files": FileBenchmark(None, None, None, None),
}
OWN_DATA = ("image_folder", "csv")
FILE_DATASETS = (*FILE_BENCHMARKS, *OWN_DATA)

ImageSet = TensorImageSet | FileImageSet
Loader = BatchLoader | FileLoader


@dataclass
class DataSets:
    """The splits of one config, before batching."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    in_channels: int
    label_map: dict[int, int] | None = None  # class index -> original label (data.labels=remap)
    reports: list[str] = field(default_factory=list)
    check: dict | None = None  # camlt.data.leaks' findings (file data; None: not checked)


@dataclass
class Loaders:
    """What a run trains and evaluates on."""

    train: Loader
    val: Loader | None
    test: Loader
    train_set: ImageSet
    val_set: ImageSet | None
    test_set: ImageSet
    in_channels: int
    label_map: dict[int, int] | None = None
    check: dict | None = None  # camlt.data.leaks' findings, saved in the run (data_check.json)

    @property
    def classes(self) -> list[str]:
        return self.train_set.classes

    @property
    def train_counts(self) -> list[int]:
        return self.train_set.class_counts()


def unaugmented_train_loader(cfg: DictConfig, data: Loaders, device) -> Loader:
    """The training images once each, in order, as evaluation sees them (no augmentation): what
    a linear probe's cached features are computed from (camlt.probe)."""
    batch = max(256, cfg.train.batch_size)
    cl = cfg.train.channels_last
    if isinstance(data.train_set, TensorImageSet):
        return BatchLoader(data.train_set, batch, False, channels_last=cl)
    plain = imagenet_transform(AugmentSettings(()), cfg.data.image_size, cfg.data.resize_size)
    options = LoaderOptions(
        cfg.train.workers, False, cfg.train.pin_memory, cfg.train.prefetch_factor
    )
    return FileLoader(
        dataclasses.replace(data.train_set, transform=plain), batch, False,
        channels_last=cl, options=options, device=device,
    )  # fmt: skip


def is_file_dataset(cfg: DictConfig) -> bool:
    return cfg.data.name in FILE_DATASETS


def build_sets(cfg: DictConfig, verbose: bool = True) -> DataSets:
    """The train / val / test sets of a config (val only where the data has one)."""
    return DATA_SETS.factory(cfg.data.name)(cfg, verbose)


def _memory_sets(cfg: DictConfig, verbose: bool) -> DataSets:
    """An in-memory benchmark (``camlt.data.benchmarks``): a val split with data.val_per_class."""
    train, val, test = build_benchmark_sets(cfg)
    return DataSets(train, val, test, int(train.images.shape[1]))


def _file_sets(cfg: DictConfig, verbose: bool) -> DataSets:
    """Image files: a split-file benchmark or the user's own folder or CSV."""
    splits, classes, label_map, reports = _file_splits(cfg)
    check = _check_leaks(cfg, splits, classes, reports)
    if verbose:
        for line in reports:
            print(printable(line), file=sys.stderr, flush=True)
    sets = {
        name: _file_set(cfg, split, classes, train=name == "train")
        for name, split in splits.items()
        if split is not None
    }
    return DataSets(sets["train"], sets.get("val"), sets["test"], 3, label_map, reports, check)


def _check_leaks(
    cfg: DictConfig, splits: dict[str, SplitList | None], classes: list[str], reports: list[str]
) -> dict | None:
    """Leaks, label conflicts and look-alike classes (camlt.data.leaks): refused under
    data.leaks=error, noted under warn, not looked for under off."""
    if cfg.data.leaks == "off":
        return None
    found = check_splits(splits, classes)
    if found.refused and cfg.data.leaks == "error":
        raise DataError(
            "; ".join(found.lines())
            + ". Results on this data would be wrong without a word: fix the data, or set "
            "data.leaks=warn to train anyway (the findings are saved in the run)"
        )
    reports += [f"data check: {line}" for line in found.lines()]
    return found.to_dict()


# Every data.name, in-memory and image files alike: a new data set is one entry.
DATA_SETS: Registry[Callable[[DictConfig, bool], DataSets]] = Registry(
    "data.name",
    {
        **dict.fromkeys(DATASETS, _memory_sets),
        **dict.fromkeys(FILE_DATASETS, _file_sets),
    },
)


def build_loaders(
    cfg: DictConfig,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    sampler: Callable[[ImageSet], Sampler | None] | None = None,
) -> Loaders:
    """Loaders of this process's shard; ``train.batch_size`` is the global batch over ``world``.

    ``sampler`` builds the training sampler from the training set (class-aware sampling); it can
    also be set later as ``loaders.train.sampler``. Evaluation loaders are sharded without
    padding, so gathering every process's predictions counts each image once.
    """
    if cfg.train.batch_size % world:
        raise UsageError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must divide "
            f"evenly over {world} processes"
        )
    batch = cfg.train.batch_size // world
    eval_batch = max(256 // world, batch)
    sets = build_sets(cfg, verbose=rank == 0)
    shard = (rank, world)
    cl = cfg.train.channels_last
    train_sampler = sampler(sets.train) if sampler else None
    if isinstance(sets.train, TensorImageSet):
        if torch.device(device).type == "cuda":  # small sets live on the GPU: no per-batch copy
            for data in (sets.train, sets.val, sets.test):
                if data is not None:
                    data.to(device)
        augment = AugmentSettings.from_config(cfg.data)
        pad = 4 if augment.crop_flip else 0
        policy = batch_policy(augment, int(sets.train.images.shape[-1]))
        train = BatchLoader(
            sets.train, batch, True, cfg.train.seed, pad, train_sampler, shard, cl, policy
        )

        def make_eval(data: TensorImageSet) -> BatchLoader:
            return BatchLoader(data, eval_batch, False, shard=shard, channels_last=cl)
    else:
        options = LoaderOptions(
            cfg.train.workers,
            cfg.train.persistent_workers,
            cfg.train.pin_memory,
            cfg.train.prefetch_factor,
        )
        train = FileLoader(
            sets.train, batch, True, cfg.train.seed, train_sampler, shard, cl, options, device
        )

        def make_eval(data: FileImageSet) -> FileLoader:
            return FileLoader(
                data, eval_batch, False, shard=shard, channels_last=cl, options=options,
                device=device,
            )  # fmt: skip

    if len(train) == 0:
        raise UsageError(
            f"train.batch_size={cfg.train.batch_size} exceeds the {len(sets.train)} training images"
        )
    return Loaders(
        train,
        make_eval(sets.val) if sets.val is not None else None,
        make_eval(sets.test),
        sets.train,
        sets.val,
        sets.test,
        sets.in_channels,
        sets.label_map,
        sets.check,
    )


# ----------------------------------------------------------------------------- file datasets
def _data_path(cfg: DictConfig, name: str | None) -> Path | None:
    """A split file named in the config, relative to data.root unless absolute."""
    if name is None:
        return None
    path = Path(name).expanduser()
    if not path.is_absolute() and cfg.data.root:
        path = Path(cfg.data.root).expanduser() / path
    return path


def check_data_config(cfg: DictConfig) -> None:
    """What a file data set's config must name, and that it is there: checked before a run
    directory exists and before any list is read (a stat per named file)."""
    data = cfg.data
    if data.name == "image_folder":
        if not data.root:
            raise DataError("data.name=image_folder needs data.root=<folder of class folders>")
        if not Path(data.root).expanduser().is_dir():
            raise DataError(f"image folder {data.root} is not a directory (data.root)")
    elif data.name == "csv":
        if not data.csv_file:
            raise DataError("data.name=csv needs data.csv_file=<file of path,label rows>")
        if not _data_path(cfg, data.csv_file).is_file():
            raise DataError(f"CSV file not found: {_data_path(cfg, data.csv_file)} (data.csv_file)")
    elif data.name in FILE_BENCHMARKS:
        names = _split_names(cfg)
        for split in ("train", "test"):
            if names[split] is None:
                raise DataError(f"data.name={data.name} needs data.{split}_file=<split file>")
            if not _data_path(cfg, names[split]).is_file():
                raise DataError(f"split file not found: {_data_path(cfg, names[split])}")
        val_path = _data_path(cfg, names["val"])
        if val_path is not None and not val_path.is_file():
            raise DataError(
                f"val split file not found: {val_path} (it selects the model: best.pt); pass "
                "data.val_file=PATH, or data.val_file=none to train without model selection"
            )
        if not (data.image_root or data.root):
            raise DataError(f"data.name={data.name} needs data.image_root (or data.root)")


def _split_names(cfg: DictConfig) -> dict[str, str | None]:
    """The split files of a split-file benchmark: the config's, else the benchmark's own."""
    data, bench = cfg.data, FILE_BENCHMARKS[cfg.data.name]
    names = {
        "train": data.train_file or bench.train,
        "val": data.val_file or bench.val,
        "test": data.test_file or bench.test,
    }
    if names["val"] is not None and names["val"].lower() == "none":
        names["val"] = None  # no model selection (the final epoch's model is reported)
    return names


def _read_lists(cfg: DictConfig) -> tuple[dict[str, SplitList | None], Path, list[str]]:
    """The raw splits of a file dataset, the directory its paths are relative to, and notes."""
    check_data_config(cfg)
    data = cfg.data
    if data.name in OWN_DATA:
        notes: list[str] = []
        if data.name == "image_folder":
            whole = read_image_folder(data.root, skip_empty=data.bad_images == "skip")
            base = Path(data.root)
            notes = [n for n in [duplicate_report(whole)] if n]
            if whole.meta["empty_classes"]:
                notes.append(
                    f"{data.root}: left out {len(whole.meta['empty_classes'])} class folders "
                    f"without any image (data.bad_images=skip): "
                    + ", ".join(whole.meta["empty_classes"][:10])
                )
        else:
            csv_path = _data_path(cfg, data.csv_file)
            whole = read_csv_list(csv_path)
            base = Path(data.image_root or csv_path.parent)
        train, val, test = stratified_split(
            whole.labels, (data.val_fraction, data.test_fraction), data.split_seed
        )
        if len(test) == 0:
            raise DataError(
                f"{whole.source}: no test images: data.test_fraction={data.test_fraction}"
                + (
                    " is 0"
                    if data.test_fraction == 0
                    else ", but no class has the 3 images "
                    "a class needs to give one to the test split"
                )
                + f" (largest class: {int(np.bincount(whole.labels).max())} images)"
            )
        lists = {
            "train": whole.subset(train),
            "val": whole.subset(val) if len(val) else None,
            "test": whole.subset(test),
        }
        return lists, base, notes
    names = _split_names(cfg)
    lists = {k: read_split_file(_data_path(cfg, v)) if v else None for k, v in names.items()}
    return lists, Path(data.image_root or data.root), []


def _file_splits(
    cfg: DictConfig,
) -> tuple[dict[str, SplitList | None], list[str], dict[int, int] | None, list[str]]:
    """Resolved, label-checked splits, the class names, the label table and the reports."""
    data = cfg.data
    lists, base, reports = _read_lists(cfg)
    mode = "exact" if data.name in OWN_DATA and not data.image_root else data.path_map
    for name, split in lists.items():
        if split is None:
            continue
        res = resolve_paths(split.paths, base, mode, data.allow_outside_root)
        reports.append(res.report(f"{name} split ({split.source})"))
        if res.outside and not data.allow_outside_root:
            shown = ", ".join(
                f"{split.source}:{split.lines[i]} {split.paths[i]}" for i in res.outside[:5]
            )
            raise DataError(
                f"{len(res.outside)} paths of the {name} split climb out of the image root "
                f"{base} with '..': {shown}; set data.allow_outside_root=true if they are meant"
            )
        if res.missing:
            shown = ", ".join(
                f"{split.source}:{split.lines[i]} {split.paths[i]}" for i in res.missing[:10]
            )
            if data.bad_images == "error":
                raise DataError(
                    f"{len(res.missing)} of {len(split)} images of the {name} split are missing "
                    f"under {base}: {shown}; set data.bad_images=skip to train without them, "
                    "or data.path_map to map the split file's paths"
                )
            reports.append(f"{name} split: skipped {len(res.missing)} missing images: {shown}")
        lists[name] = split.found(res.files)
    own = data.name in OWN_DATA  # a user's own files: every one decoded now, not mid-epoch
    for name in ("train", "val", "test") if own else ("train",) * (data.bad_images == "skip"):
        if lists.get(name) is not None:  # before the counts are taken: they shape the priors
            lists[name], note = _drop_unreadable(lists[name], name, data, decode=own)
            reports += [note] if note else []
    train = lists["train"]
    bench = FILE_BENCHMARKS.get(data.name)
    fixed = bench.num_classes if bench else None
    if train.classes is not None:
        label_map, originals = None, None
        num_classes = len(train.classes)
    else:
        mapping, originals = check_labels(train, fixed, data.labels)
        label_map = mapping
        num_classes = len(originals)
    for split in lists.values():
        if split is not None and split is not train:
            apply_label_map(split, label_map, num_classes)
    if label_map is not None:
        apply_label_map(train, label_map, num_classes)
    if data.subsample:
        keep, counts = longtail_subsample(
            train.labels, num_classes, data.n_max, data.imbalance, data.profile, data.split_seed
        )
        lists["train"] = train = train.subset(keep)
        reports.append(
            f"train split cut to the {data.profile} profile (imbalance {data.imbalance}): "
            f"{len(train)} images, {max(counts)} .. {min(counts)} per class"
        )
    classes = train.classes or _class_names(train, originals)
    table = dict(enumerate(originals)) if label_map is not None else None
    return lists, classes, table, reports


def _drop_unreadable(
    split: SplitList, name: str, data: DictConfig, decode: bool
) -> tuple[SplitList, str | None]:
    """The entries whose image opens: a file that is empty, not an image or too large (and, with
    ``decode``, one cut short) is refused, or left out under data.bad_images=skip, before the
    class counts are taken, so shot groups and the prior of balanced softmax count only images
    that train. Damage found only by a full decode is still caught, and dropped from its batch."""
    errors = [header_error(path, data.max_pixels, decode) for path in split.paths]
    bad = [i for i, error in enumerate(errors) if error]
    if not bad:
        return split, None
    shown = ", ".join(
        f"{split.source}:{split.lines[i]} {split.paths[i]} ({errors[i]})" for i in bad[:5]
    )
    if data.bad_images == "error":
        raise DataError(
            f"{len(bad)} of {len(split)} images of the {name} split do not open: {shown}; set "
            "data.bad_images=skip to train without them"
        )
    keep = np.asarray(sorted(set(range(len(split))) - set(bad)), dtype=np.int64)
    note = (
        f"{name} split: left out {len(bad)} unreadable images before counting classes "
        f"(data.bad_images=skip): {shown}"
    )
    return split.subset(keep), note


def _class_names(train: SplitList, originals: list[int] | None) -> list[str]:
    """A class's folder name when all its training images share one (ImageNet wnids, Places)."""
    num_classes = int(train.labels.max()) + 1
    folders: list[set[str]] = [set() for _ in range(num_classes)]
    for path, label in zip(train.paths, train.labels.tolist(), strict=True):
        if len(folders[label]) < 2:
            folders[label].add(Path(path).parent.name)
    names = []
    for cls, found in enumerate(folders):
        label = originals[cls] if originals else cls
        names.append(next(iter(found)) if len(found) == 1 else f"class {label}")
    if len(set(names)) != len(names):  # folder names do not identify classes
        names = [f"class {originals[c] if originals else c}" for c in range(num_classes)]
    return names


def _file_set(cfg: DictConfig, split: SplitList, classes: list[str], train: bool) -> FileImageSet:
    augment = AugmentSettings.from_config(cfg.data) if train else AugmentSettings(())
    return FileImageSet(
        split.paths,
        torch.from_numpy(split.labels.astype(np.int64)),
        classes,
        imagenet_transform(augment, cfg.data.image_size, cfg.data.resize_size),
        skip_bad=cfg.data.bad_images == "skip",
        max_pixels=cfg.data.max_pixels,
    )
