"""The run directory: what a run leaves on disk, by name, and how to read its config back.

Training writes these files, evaluation, prediction, stage 2, the report and the benchmarks read
them; every one of them takes the names from here, so a file is renamed in one place.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from camlt import __version__
from camlt.checkpoint import CheckpointError
from camlt.config import ConfigError, load_yaml, merge

CHECKPOINT = "checkpoint.pt"  # the last finished epoch: weights, optimiser, RNG, config
CONFIG_FILE = "config.yaml"  # the resolved config, written before the first epoch
METRICS_FILE = "metrics.jsonl"  # one line per finished epoch
FINAL_FILE = "final_metrics.json"  # the final test metrics: the run has finished
BEST_CHECKPOINT = "best.pt"  # the epoch with the best val top-1 (data with a val split only)
LABEL_MAP_FILE = "label_map.json"  # class index -> original label (data.labels=remap)
EVAL_FILE = "eval.json"  # what ``camlt eval`` writes by default
LOCK_FILE = ".lock"  # camlt.checkpoint.RunLock's, the one file written before the checks
RUN_MARKER = ".camlt-run"  # written when camlt makes a directory its run: what it may write in
CALIBRATION_FILE = "calibration.json"  # what ``camlt calibrate`` fitted (camlt.calibration)
# What training and calibration write: no --out of another command may write over them.
RUN_FILES = (
    CHECKPOINT, CONFIG_FILE, METRICS_FILE, FINAL_FILE, BEST_CHECKPOINT, LABEL_MAP_FILE,
    CALIBRATION_FILE,
)  # fmt: skip

__all__ = [
    "BEST_CHECKPOINT",
    "CALIBRATION_FILE",
    "RUN_FILES",
    "RUN_MARKER",
    "check_owned",
    "CHECKPOINT",
    "CONFIG_FILE",
    "EVAL_FILE",
    "FINAL_FILE",
    "LABEL_MAP_FILE",
    "METRICS_FILE",
    "resolve",
    "saved_config",
]


def check_owned(run_dir: Path) -> None:
    """Refuse, before a byte is written, a directory that is neither empty nor a camlt run.

    A run is a directory holding the marker camlt writes when it starts one, or (runs written
    before the marker) a config.yaml beside a checkpoint or a metrics log.
    """
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise CheckpointError(f"train.run_dir={run_dir} is a file, not a directory")
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if not names or RUN_MARKER in names:
        return
    if CONFIG_FILE in names and (CHECKPOINT in names or METRICS_FILE in names):
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise CheckpointError(
        f"{run_dir} holds files camlt did not write ({shown}); camlt writes only into an empty "
        "directory or a run of its own: choose another train.run_dir"
    )


def resolve(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) from either one."""
    path = Path(path)
    if path.is_dir():
        return path, path / CHECKPOINT
    return path.parent, path


def saved_config(state: dict, ckpt: Path) -> DictConfig:
    """The config embedded in a checkpoint (one copied without its run directory still
    rebuilds), naming both camlt versions when it no longer fits this one."""
    if "config" not in state:
        raise CheckpointError(f"{ckpt}: checkpoint holds no config; cannot rebuild its model")
    written_by = state.get("camlt_version", "unknown")
    try:
        return merge(load_yaml(state["config"]), f"{ckpt} (embedded config)")
    except ConfigError as err:
        raise CheckpointError(
            f"{err} (the checkpoint was written by camlt {written_by}; this is camlt {__version__})"
        ) from None
