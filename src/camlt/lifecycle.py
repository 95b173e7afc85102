"""A run's life on disk: the directory it owns, the checkpoint each epoch leaves, and the way a
killed run resumes where it stopped (weights, optimiser, schedule, random generators).

The training loop (``camlt.engine``) calls these at its start and after each epoch; nothing here
trains. A refused start takes back the files it wrote, so a failed command leaves no folder.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from omegaconf import DictConfig

from camlt import __version__
from camlt.checkpoint import (
    CheckpointError,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    read_jsonl,
    remove_stale_temp_files,
    truncate_jsonl,
)
from camlt.compat import RESUME_FREE_KEYS, check_fits
from camlt.config import diff, from_yaml_file, to_yaml
from camlt.rundir import (
    CHECKPOINT,
    CONFIG_FILE,
    DATA_CHECK_FILE,
    FINAL_FILE,
    LABEL_MAP_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RUN_MARKER,
    check_owned,
    run_id,
)
from camlt.stage2 import check_stage1, load_stage1


class RunState(Protocol):
    """What of a training run (``camlt.engine.Run``) its checkpoint holds and restores."""

    cfg: DictConfig
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_set: object
    start_epoch: int
    maxnorm: object | None
    run_id: str | None
    label_map: dict | None
    data_check: dict | None

    @property
    def train_counts(self) -> list[int]: ...


def rng_state() -> dict:
    """Every generator a run draws from, as plain lists (a checkpoint holds no pickled object)."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": [int(v) for v in np.random.get_state()[1]] + [int(np.random.get_state()[2])],
        "python": list(random.getstate()[1]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Put every generator back where ``rng_state`` found it."""
    torch.set_rng_state(state["torch"])
    keys, pos = state["numpy"][:-1], state["numpy"][-1]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(run: RunState, epoch: int) -> dict:
    """Everything a resume needs to go on as if never stopped, and what readers check a
    checkpoint against (its config, classes, counts, camlt version, run id)."""
    return {
        "epoch": epoch,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
        "config": to_yaml(run.cfg),
        "classes": list(run.train_set.classes),
        "train_counts": run.train_counts,
        "camlt_version": __version__,
        **({"run_id": run.run_id} if run.run_id else {}),
        **({"maxnorm": run.maxnorm.state_dict()} if run.maxnorm is not None else {}),
    }


def load_fitting_checkpoint(run: RunState, path: Path) -> dict:
    """A checkpoint to resume from, refused with every difference named if it is another run's."""
    state = load_checkpoint(path)
    check_fits(
        state,
        path,
        run.cfg,
        run.train_set.classes,
        run.train_counts,
        run.model,
        relevant=lambda key: not key.startswith(RESUME_FREE_KEYS),
        required=("epoch", "model", "optimizer", "scheduler", "scaler", "rng"),
    )
    return state


def restore(run: RunState, state: dict) -> None:
    """Put a run back where a checkpoint left it."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if run.maxnorm is not None and "maxnorm" in state:
        run.maxnorm.load_state_dict(state["maxnorm"])
    run.start_epoch = state["epoch"]


def prepare_run_dir(cfg: DictConfig, run_dir: Path, resume: bool) -> None:
    """Create or re-open a run directory; refuse to silently overwrite or mix runs.

    ``resume`` on a directory that holds no run yet starts one, so one command both starts
    and continues a run (what ``make demo`` and the benchmark scripts rely on).
    """
    config_path = run_dir / CONFIG_FILE
    if resume and config_path.is_file():
        refuse_lost_checkpoint(run_dir)
        saved = from_yaml_file(config_path)
        changed = [d for d in diff(saved, cfg) if not d.startswith(RESUME_FREE_KEYS)]
        if changed:
            raise CheckpointError(
                f"--resume: the config differs from the one saved in {config_path}: "
                + "; ".join(changed)
            )
        return
    held = [n for n in (CHECKPOINT, METRICS_FILE, FINAL_FILE) if (run_dir / n).exists()]
    if held:
        raise CheckpointError(
            f"{run_dir} already holds a run ({', '.join(held)}); pass --resume to continue it, "
            "or choose another directory with train.run_dir=DIR"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / RUN_MARKER).exists():
        marker = {"camlt_version": __version__, "run_id": uuid.uuid4().hex}
        atomic_write_json(run_dir / RUN_MARKER, marker)


def refuse_lost_checkpoint(run_dir: Path) -> None:
    """A run whose results are on disk but whose checkpoint is gone cannot be resumed: starting
    again from epoch 1 would overwrite its metrics and final results without a word.

    One logged epoch and no checkpoint is a run killed between the first epoch's two writes
    (the metrics line goes first, so a resume can always cut the log back to its checkpoint):
    that run starts again and writes the same line anew, so nothing is lost.
    """
    if (run_dir / CHECKPOINT).exists():
        return
    epochs = len(read_jsonl(run_dir / METRICS_FILE)) if (run_dir / METRICS_FILE).is_file() else 0
    finished = (run_dir / FINAL_FILE).is_file()
    if finished or epochs > 1:
        kept = [n for n, there in ((METRICS_FILE, epochs), (FINAL_FILE, finished)) if there]
        raise CheckpointError(
            f"{run_dir} holds {', '.join(kept)} ({epochs} epochs logged) but no {CHECKPOINT}: it "
            "cannot be resumed, and starting again would overwrite them. Restore the checkpoint, "
            "or move those files away (or choose another train.run_dir) to train anew"
        )


# ----------------------------------------------------------------------------- a run's start
def claim_run_dir(cfg: DictConfig, run_dir: Path, main: bool) -> bool:
    """Refuse a directory camlt may not write (or a bad stage-1 run) before a byte is written;
    make it. Returns whether it is fresh: made now, or empty, so a refused start may remove it."""
    if main:
        check_owned(run_dir)
    if run_dir.is_symlink() and main:
        print(f"run directory {run_dir} is a link: training in {run_dir.resolve()}", flush=True)
    if cfg.model.init_from and not (run_dir / CHECKPOINT).exists():
        check_stage1(cfg)
    fresh = not run_dir.exists() or not any(run_dir.iterdir())
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return fresh


def write_start_files(cfg: DictConfig, run_dir: Path, resume: bool) -> None:
    """Clear a killed writer's temp files; a new run saves its config before the first epoch."""
    remove_stale_temp_files(run_dir)
    if not resume:
        atomic_write_text(run_dir / CONFIG_FILE, to_yaml(cfg))


def write_run_notes(run: RunState) -> None:
    """What the data told the run: its label table and the data check's findings."""
    if run.label_map:
        atomic_write_json(run.run_dir / LABEL_MAP_FILE, run.label_map)
    if run.data_check is not None:
        atomic_write_json(run.run_dir / DATA_CHECK_FILE, run.data_check)


def resume_or_start(run: RunState, resume: bool, main: bool) -> None:
    """Continue from the checkpoint, or start from stage 1's weights (or from scratch); the log
    is cut back to the checkpoint (a line written after it belongs to no checkpoint)."""
    run.run_id = run_id(run.run_dir)
    if resume and (run.run_dir / CHECKPOINT).exists():
        restore(run, load_fitting_checkpoint(run, run.run_dir / CHECKPOINT))
    elif run.cfg.model.init_from:
        load_stage1(run)
    if main:
        truncate_jsonl(run.run_dir / METRICS_FILE, lambda r: r["epoch"] <= run.start_epoch)


# What a start writes before its first epoch: all of it camlt's own, taken back on a refusal.
START_FILES = (CONFIG_FILE, RUN_MARKER, LABEL_MAP_FILE, DATA_CHECK_FILE, LOCK_FILE)


def abandon_fresh_dir(run_dir: Path) -> None:
    """A start that failed before its first epoch was logged: remove what it wrote, and the
    directory if nothing else is in it."""
    if (run_dir / METRICS_FILE).exists() or (run_dir / CHECKPOINT).exists():
        return  # an epoch finished: the run is resumable, keep it
    for name in START_FILES:
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only when empty
