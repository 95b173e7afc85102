"""Does a checkpoint fit the run that is about to load it?

A checkpoint copied from another run, another dataset or another model would otherwise fail
deep inside ``load_state_dict`` (or, worse, load and answer for the wrong classes). Here every
difference is named: config keys, classes, class counts, missing or reshaped weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig

from camlt.checkpoint import CheckpointError
from camlt.config import ConfigError, diff, load_yaml, merge

# Keys that cannot change what a trained model computes on the test set: evaluation ignores them
# (a run moved to another machine points data.root elsewhere; train.* only shaped the training).
# Where the files now live and which held-out images a val split takes are eval-free as well.
EVAL_FREE_KEYS = (
    "data.root",
    "data.image_root",
    "data.path_map",
    "data.download",
    "data.val_per_class",
    "data.leaks",
    "model.pretrained",
    "train.",
)
# Keys that may differ on --resume without changing the result (nor a run's name).
RESUME_FREE_KEYS = (
    "train.progress",
    "train.threads",
    "train.run_dir",
    "train.out_dir",
    "train.device",
    "train.workers",
    "train.persistent_workers",
    "train.pin_memory",
    "train.prefetch_factor",
    "train.tensorboard",
    "train.compile",
    "data.leaks",
)
SHOWN = 4  # differences listed per kind before "and N more"


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def config_differences(state: dict, cfg: DictConfig, relevant: Callable[[str], bool]) -> list[str]:
    """The relevant config keys whose value in the checkpoint differs from ``cfg``."""
    text = state.get("config")
    if not isinstance(text, str):
        return ["the checkpoint carries no config"]
    try:
        saved = merge(load_yaml(text) or {}, "checkpoint config")
    except (ConfigError, yaml.YAMLError) as err:
        return [f"the checkpoint's config does not fit this camlt ({err})"]
    changed = [d for d in diff(saved, cfg) if relevant(d.split(":", 1)[0])]
    return [f"config {_listed(changed)} (checkpoint != this run)"] if changed else []


def weight_differences(saved: dict, model: torch.nn.Module) -> list[str]:
    """Missing, unexpected and reshaped tensors between a saved state dict and ``model``."""
    if not isinstance(saved, dict):
        return ["the checkpoint holds no model weights"]
    own = model.state_dict()
    out = []
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    reshaped = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved
        and isinstance(saved[k], torch.Tensor)
        and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if missing:
        out.append(f"weights missing from the checkpoint: {_listed(missing)}")
    if extra:
        out.append(f"weights this model does not have: {_listed(extra)}")
    if reshaped:
        out.append(f"weights of another shape (checkpoint vs model): {_listed(reshaped)}")
    return out


def checkpoint_mismatches(
    state: dict,
    cfg: DictConfig,
    classes: list[str],
    train_counts: list[int],
    model: torch.nn.Module,
    relevant: Callable[[str], bool],
    required: Iterable[str] = ("model",),
) -> list[str]:
    """Every way the checkpoint ``state`` differs from the run built from ``cfg``."""
    out = [f"no '{key}' entry" for key in required if key not in state]
    out += config_differences(state, cfg, relevant)
    saved_classes = state.get("classes")
    if saved_classes is not None and list(saved_classes) != list(classes):
        out.append(
            f"classes: checkpoint has {len(saved_classes)} ({_listed(list(map(str, saved_classes)))}),"
            f" this run {len(classes)} ({_listed(list(classes))})"
        )
    saved_counts = state.get("train_counts")
    if saved_counts is not None and list(saved_counts) != list(train_counts):
        out.append(f"training counts per class: checkpoint {saved_counts}, this run {train_counts}")
    out += weight_differences(state.get("model"), model)
    return out


def check_fits(
    state: dict,
    path: Path,
    cfg: DictConfig,
    classes: list[str],
    train_counts: list[int],
    model: torch.nn.Module,
    relevant: Callable[[str], bool],
    required: Iterable[str] = ("model",),
) -> None:
    """Raise a CheckpointError naming every difference, if there is any."""
    problems = checkpoint_mismatches(state, cfg, classes, train_counts, model, relevant, required)
    if problems:
        raise CheckpointError(
            f"{path} does not fit this run (backbone {cfg.model.backbone}, head "
            f"{cfg.model.head}, {len(classes)} classes): " + "; ".join(problems)
        )
