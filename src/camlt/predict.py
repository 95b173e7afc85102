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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from camlt import __version__
from camlt.checkpoint import CheckpointError, load_checkpoint
from camlt.compat import EVAL_FREE_KEYS, weight_differences
from camlt.config import ConfigError, diff, from_yaml_file
from camlt.data.inputs import (
    IMAGE_SUFFIXES,
    InputSpec,
    input_spec,
    load_images,
    normalise,
)
from camlt.distributed import resolve_device
from camlt.errors import UsageError
from camlt.losses import posthoc_adjust
from camlt.models import LongTailClassifier, build_model
from camlt.rundir import CONFIG_FILE, resolve, saved_config
from camlt.stage2 import adapt_model


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
        raise UsageError(
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


def load_trained(path: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """Rebuild and load the model of a run directory or checkpoint file for inference."""
    run_dir, ckpt = resolve(path)
    state = load_checkpoint(ckpt)
    cfg = saved_config(state, ckpt)
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
        raise UsageError(f"--topk {topk}: must be at least 1")
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
        raise UsageError(f"--format {fmt}: expected table, csv or json")
    width = max([len("image")] + [len(r.path) for r in results])
    lines = [f"{'image':<{width}}  top predictions"]
    for r in results:
        top = "  ".join(f"{name} {100 * p:5.1f}%" for name, p in zip(r.names, r.probs, strict=True))
        lines.append(f"{r.path:<{width}}  {top}")
    return "\n".join(lines)
