"""Inference with a trained run: rebuild its model from the checkpoint, classify image files.

The model is rebuilt from the config embedded in the checkpoint (the one its weights were
trained under) and loaded with ``weights_only``, so a file from elsewhere cannot run code.
Images are decoded with PIL and brought to the training input: same channels, size, padding
and normalisation as the training tensors of ``camlt.data``.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from camlt import __version__
from camlt.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from camlt.compat import EVAL_FREE_KEYS, weight_differences
from camlt.config import ConfigError, diff, from_yaml_file, load_yaml, merge
from camlt.data import DATASETS, DataError
from camlt.data.files import MAX_PIXELS, check_pixels
from camlt.losses import posthoc_adjust
from camlt.models import LongTailClassifier, build_model
from camlt.stage2 import adapt_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# ImageNet statistics, for datasets that do not declare their own (file-based benchmarks).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_RGB_DATASETS = ("cifar10_lt", "cifar100_lt")  # 32x32 RGB, fed as they are


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


def input_spec(cfg: DictConfig) -> InputSpec:
    """The input of a config's dataset, matching what ``camlt.data`` feeds the model in training."""
    name = cfg.data.name
    spec = DATASETS.get(name)
    limit = OmegaConf.select(cfg, "data.max_pixels", default=MAX_PIXELS)
    if name == "fmnist_lt":
        return InputSpec(1, 28, pad=2, mean=spec.mean, std=spec.std, max_pixels=limit)
    if name in SMALL_RGB_DATASETS:
        return InputSpec(3, 32, mean=spec.mean, std=spec.std, max_pixels=limit)
    # Image files (camlt.data.files): RGB, short side to data.resize_size, center crop.
    size = OmegaConf.select(cfg, "data.image_size", default=224)
    resize = OmegaConf.select(cfg, "data.resize_size", default=round(size * 256 / 224))
    return InputSpec(
        3, size, resize_short=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixels=limit
    )


# ----------------------------------------------------------------------------- the model
@dataclass
class LoadedModel:
    """A trained model ready for inference, with what is needed to read its outputs."""

    model: LongTailClassifier
    cfg: DictConfig
    classes: list[str]
    train_counts: list[int]
    spec: InputSpec
    device: torch.device
    checkpoint: Path
    epoch: int
    warnings: list[str]

    def class_index(self, name_or_index: str) -> int:
        """A class given by name or by index, with the valid names in the error."""
        if name_or_index in self.classes:
            return self.classes.index(name_or_index)
        if name_or_index.lstrip("-").isdigit() and 0 <= int(name_or_index) < len(self.classes):
            return int(name_or_index)
        raise ValueError(
            f"unknown class '{name_or_index}'; expected a name or an index 0..{len(self.classes) - 1}"
            f": {', '.join(self.classes)}"
        )

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """The test-time correction evaluation applies (``loss.posthoc_tau``), so answers agree."""
        tau = OmegaConf.select(self.cfg, "loss.posthoc_tau", default=0.0) or 0.0
        return posthoc_adjust(logits.float(), self.train_counts, tau)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Adjusted logits (N, K) on the CPU of a uint8 image batch, computed in batches."""
        self.model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            batch = normalise(images[start : start + batch_size], self.spec).to(self.device)
            out.append(self.adjust(self.model(batch).logits).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) from either one."""
    path = Path(path)
    if path.is_dir():
        return path, path / CHECKPOINT
    return path.parent, path


def _saved_config(state: dict, ckpt: Path) -> DictConfig:
    """The checkpoint's embedded config, naming the camlt versions when it no longer fits."""
    if "config" not in state:
        raise CheckpointError(f"{ckpt}: checkpoint holds no config; cannot rebuild its model")
    written_by = state.get("camlt_version", "unknown")
    try:
        return merge(load_yaml(state["config"]), f"{ckpt} (embedded config)")
    except ConfigError as err:
        raise CheckpointError(
            f"{err} (the checkpoint was written by camlt {written_by}; this is camlt {__version__})"
        ) from None


def load_trained(path: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """Rebuild and load the model of a run directory or checkpoint file for inference."""
    from camlt.engine import CONFIG_FILE, resolve_device

    run_dir, ckpt = resolve_checkpoint(path)
    state = load_checkpoint(ckpt)
    cfg = _saved_config(state, ckpt)
    warnings = []
    beside = run_dir / CONFIG_FILE
    if beside.is_file():
        with contextlib.suppress(ConfigError):
            changed = [
                d for d in diff(from_yaml_file(beside), cfg) if not d.startswith(EVAL_FREE_KEYS)
            ]
            if changed:
                warnings.append(
                    f"{beside} differs from the config saved in {ckpt} (using the checkpoint's): "
                    + "; ".join(changed)
                )
    classes = list(state.get("classes") or [])
    counts = list(state.get("train_counts") or [])
    if not classes or len(classes) != len(counts):
        raise CheckpointError(f"{ckpt}: checkpoint lacks its class names or training counts")
    spec = input_spec(cfg)
    model = build_model(cfg.model, len(classes), spec.channels, counts)
    model = adapt_model(model, cfg, len(classes))  # stage-2 runs wrap the backbone and head
    problems = weight_differences(state.get("model"), model)
    if problems:
        written_by = state.get("camlt_version", "unknown")
        raise CheckpointError(
            f"{ckpt}: the weights do not fit the model of its config (model.backbone="
            f"{cfg.model.backbone}, model.head={cfg.model.head}; written by camlt {written_by}, "
            f"this is camlt {__version__}): " + "; ".join(problems)
        )
    model.load_state_dict(state["model"])
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model.to(dev).eval()
    return LoadedModel(
        model, cfg, classes, counts, spec, dev, ckpt, int(state.get("epoch", 0)), warnings
    )


# ----------------------------------------------------------------------------- images
def collect_images(items: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (searched recursively for image suffixes) and globs, in a stable order.

    Returns the image paths and (item, reason) for arguments that matched nothing.
    """
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found += files
            if not files:
                missing.append((item, "folder holds no image file"))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            found += matches
            if not matches:
                missing.append((item, "pattern matches no file"))
        else:
            missing.append((item, "no such file or folder"))
    unique = list(dict.fromkeys(found))
    return unique, missing


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


def decode(path: Path, spec: InputSpec) -> torch.Tensor:
    """Decode one image file; raises ValueError naming the file when it is not an image."""
    try:
        with Image.open(path) as image:
            check_pixels(image, path, spec.max_pixels)
            image.load()
            return to_input(image, spec)
    except DataError as err:
        raise ValueError(str(err)) from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: cannot decode image ({reason})") from None


def normalise(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (B, C, H, W) -> the normalised float batch, as ``BatchLoader.normalise`` does."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(spec.std).view(1, -1, 1, 1) * 255
    return (images.float() - mean) / std


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
    kept, tensors = [], []
    for path in paths:
        try:
            tensors.append(decode(path, spec))
            kept.append(path)
        except ValueError as err:
            warn(str(err))
    return kept, (torch.stack(tensors) if tensors else None)


# ----------------------------------------------------------------------------- prediction
@dataclass
class Prediction:
    """Top-k classes of one image, most probable first."""

    path: str
    classes: list[int]
    names: list[str]
    probs: list[float]


def probabilities(loaded: LoadedModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities (N, K) of a uint8 image batch."""
    return loaded.logits(images, batch_size).softmax(dim=1)


def predict_files(
    loaded: LoadedModel, paths: Sequence[Path], topk: int = 5, batch_size: int = 256, warn=None
) -> list[Prediction]:
    """Top-k predictions of image files; undecodable files are reported and skipped."""
    if topk < 1:
        raise ValueError(f"--topk {topk}: must be at least 1")
    k = min(topk, len(loaded.classes))
    results = []
    for start in range(0, len(paths), batch_size):  # decode lazily, one batch in memory
        kept, images = load_images(paths[start : start + batch_size], loaded.spec, warn)
        if images is None:
            continue
        probs = probabilities(loaded, images, batch_size)
        top_p, top_i = probs.topk(k, dim=1)
        for path, p, i in zip(kept, top_p.tolist(), top_i.tolist(), strict=True):
            results.append(Prediction(str(path), i, [loaded.classes[c] for c in i], p))
    return results


def format_predictions(results: Sequence[Prediction], fmt: str) -> str:
    """Predictions as an aligned table, CSV (one row per image and rank) or JSON."""
    if fmt == "json":
        return json.dumps(
            [
                {
                    "path": r.path,
                    "top": [
                        {"rank": n + 1, "class": c, "name": name, "prob": p}
                        for n, (c, name, p) in enumerate(
                            zip(r.classes, r.names, r.probs, strict=True)
                        )
                    ],
                }
                for r in results
            ],
            indent=2,
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "name", "prob"])
        for r in results:
            for n, (c, name, p) in enumerate(zip(r.classes, r.names, r.probs, strict=True)):
                writer.writerow([r.path, n + 1, c, name, f"{p:.6f}"])
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"--format {fmt}: expected table, csv or json")
    width = max([len("image")] + [len(r.path) for r in results])
    lines = [f"{'image':<{width}}  top predictions"]
    for r in results:
        top = "  ".join(f"{name} {100 * p:5.1f}%" for name, p in zip(r.names, r.probs, strict=True))
        lines.append(f"{r.path:<{width}}  {top}")
    return "\n".join(lines)
