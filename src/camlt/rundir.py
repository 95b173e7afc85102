"""The run directory: what a run leaves on disk, by name, and how to read its config back.

Training writes these files, evaluation, prediction, stage 2, the report and the benchmarks read
them; every one of them takes the names from here, so a file is renamed in one place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig

from camlt import __version__
from camlt.checkpoint import CheckpointError
from camlt.compat import RESUME_FREE_KEYS
from camlt.config import ConfigError, load_yaml, merge
from camlt.errors import UsageError

CHECKPOINT = "checkpoint.pt"  # the last finished epoch: weights, optimiser, RNG, config
CONFIG_FILE = "config.yaml"  # the resolved config, written before the first epoch
METRICS_FILE = "metrics.jsonl"  # one line per finished epoch
FINAL_FILE = "final_metrics.json"  # the final test metrics: the run has finished
BEST_CHECKPOINT = "best.pt"  # the epoch with the best val top-1 (data with a val split only)
LABEL_MAP_FILE = "label_map.json"  # class index -> original label (data.labels=remap)
EVAL_FILE = "eval.json"  # what ``camlt eval`` writes by default
LOCK_FILE = ".lock"  # camlt.checkpoint.RunLock's, the one file written before the checks
RUN_MARKER = ".camlt-run"  # written when camlt makes a directory its run: what it may write in
OUTPUT_MARKER = ".camlt-output"  # written into a folder report or cam made: theirs to write again
CALIBRATION_FILE = "calibration.json"  # what ``camlt calibrate`` fitted (camlt.calibration)
DATA_CHECK_FILE = "data_check.json"  # camlt.data.leaks' findings on the run's file data
EXPERT_WEIGHTS_FILE = "expert_weights.json"  # what ``camlt adapt`` learned (camlt.adapt)
# What training and calibration write: no --out of another command may write over them.
RUN_FILES = (
    CHECKPOINT, CONFIG_FILE, METRICS_FILE, FINAL_FILE, BEST_CHECKPOINT, LABEL_MAP_FILE,
    CALIBRATION_FILE, DATA_CHECK_FILE, EXPERT_WEIGHTS_FILE,
)  # fmt: skip

__all__ = [
    "BEST_CHECKPOINT",
    "CALIBRATION_FILE",
    "EXPERT_WEIGHTS_FILE",
    "RUN_FILES",
    "RUN_MARKER",
    "check_owned",
    "default_run_dir",
    "CHECKPOINT",
    "CONFIG_FILE",
    "DATA_CHECK_FILE",
    "EVAL_FILE",
    "FINAL_FILE",
    "LABEL_MAP_FILE",
    "OUTPUT_MARKER",
    "claim_out_dir",
    "METRICS_FILE",
    "resolve",
    "run_id",
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


def claim_out_dir(out: Path, overwrite: bool, default: bool = False) -> Path:
    """An output folder (``report``, ``cam --out``): new, empty, a command's own (its marker) or
    the command's default folder; one holding other files only with --overwrite; never a run
    directory, whose files it could replace."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if RUN_MARKER in names or (CONFIG_FILE in names and CHECKPOINT in names):
        raise UsageError(f"--out {out}: that is a run directory; choose another folder")
    foreign = [n for n in names if n != OUTPUT_MARKER]
    if foreign and OUTPUT_MARKER not in names and not default and not overwrite:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise UsageError(
            f"--out {out} holds files camlt did not write ({shown}), which it could replace; "
            "choose another folder or pass --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).touch()
    return out


def run_id(run_dir: Path) -> str | None:
    """The id the run directory's marker holds (None for a run from before ids, or none)."""
    try:
        marker = json.loads((run_dir / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = marker.get("run_id") if isinstance(marker, dict) else None
    return value if isinstance(value, str) else None


def default_run_dir(config_path: str | Path, overrides: list[str], out_dir: str) -> Path:
    """A run directory named by its recipe and the overrides that change its result, so the same
    command resumes it (``train.threads=2`` or ``train.compile=default`` name no new run)."""
    name = Path(config_path).stem
    relevant = [o for o in overrides if not o.split("=", 1)[0].startswith(RESUME_FREE_KEYS)]
    if relevant:
        slug = "-".join(o.replace("/", "_") for o in relevant)
        if len(slug) > 80:
            slug = hashlib.sha1(slug.encode()).hexdigest()[:12]
        name = f"{name}-{slug}"
    return Path(out_dir) / name


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
