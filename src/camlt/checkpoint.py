"""Checkpoints and result files that a crash can never leave half-written.

Every write goes to a temporary file in the same directory, is flushed to disk, then renamed
over the target: a reader sees the old file or the new one, never a mix. Loading uses
``weights_only`` so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from camlt.config import ConfigError, load_yaml
from camlt.errors import UserError

FORMAT_VERSION = 1
_UMASK = os.umask(0o022)  # read the process umask (os.umask can only read it by setting it)
os.umask(_UMASK)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the run."""


TEMP_PREFIX = ".camlt-tmp-"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Serialise in memory first, so a failure mid-serialisation touches no file."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:  # disk full, quota, I/O error: the old file was never touched
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({err.strerror or err}); "
            "the previous checkpoint is unchanged and --resume continues from it"
        ) from err


# what atomic_write_bytes' mkstemp creates: a name only camlt makes, so a user's own file that
# happens to end in .tmp is never taken for one
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r".+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files a killed writer left behind; call only while holding RunLock."""
    stale = [t for t in Path(directory).glob(f"{TEMP_PREFIX}*.tmp") if _TEMP_NAME.fullmatch(t.name)]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state dict, refusing pickled code and foreign formats with a reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a loadable camlt checkpoint ({_why(err)})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a camlt checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']!r}, this camlt reads "
            f"{FORMAT_VERSION}"
        )
    problems = structure_problems(state)
    if problems:
        raise CheckpointError(f"{path}: a damaged camlt checkpoint: " + "; ".join(problems))
    return state


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _why(err: Exception) -> str:
    """torch.load's reason in our words: never its advice to load with weights_only=False (that
    would run whatever code the file carries), never its terminal colour codes."""
    text = _ANSI.sub("", str(err)).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        return (
            "it holds pickled Python objects beyond tensors and plain data, which camlt never "
            "loads: they could run code"
        )
    return text.splitlines()[0] if text else type(err).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What each entry of a checkpoint must be, when it is there (which entries a use needs, eval or
# resume, its caller says): checked once on load, so no KeyError or TypeError surfaces later.
_STRUCTURE: dict[str, tuple[str, Callable[[object], bool]]] = {
    "epoch": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "config": ("YAML text", lambda v: isinstance(v, str)),
    "classes": (
        "a list of class names",
        lambda v: isinstance(v, list | tuple) and all(isinstance(c, str) for c in v),
    ),  # fmt: skip
    "train_counts": (
        "a list of whole numbers >= 0",
        lambda v: isinstance(v, list | tuple) and all(_is_int(c) and c >= 0 for c in v),
    ),  # fmt: skip
    "model": (
        "a mapping of names to tensors",
        lambda v: (
            isinstance(v, dict)
            and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())
        ),
    ),  # fmt: skip
    "optimizer": ("an optimizer state (a mapping)", lambda v: isinstance(v, dict)),
    "scheduler": ("a scheduler state (a mapping)", lambda v: isinstance(v, dict)),
    "scaler": ("a grad-scaler state (a mapping)", lambda v: isinstance(v, dict)),
    "maxnorm": (
        "a mapping with a numeric threshold",
        lambda v: isinstance(v, dict) and isinstance(v.get("threshold"), int | float),
    ),  # fmt: skip
}


def _rng_ok(state: object) -> bool:
    """The engine's RNG state: torch's ByteTensor, numpy's 624 words + position, python's 625."""
    if not isinstance(state, dict):
        return False
    torch_state, np_state, py_state = state.get("torch"), state.get("numpy"), state.get("python")
    return (
        isinstance(torch_state, torch.Tensor)
        and torch_state.dtype == torch.uint8
        and isinstance(np_state, list)
        and len(np_state) == 625
        and all(_is_int(v) and 0 <= v < 2**32 for v in np_state)
        and isinstance(py_state, list)
        and len(py_state) == 625
        and all(_is_int(v) and 0 <= v < 2**32 for v in py_state[:-1])
        and isinstance(state.get("cuda", []), list)
    )


def _config_parses(text: str) -> bool:
    try:
        return isinstance(load_yaml(text), dict)
    except (ConfigError, ValueError, TypeError, RecursionError, yaml.YAMLError):
        return False


def structure_problems(state: dict) -> list[str]:
    """Every entry of a checkpoint whose type or shape is not what camlt writes."""
    problems = [
        f"'{key}' is not {what}"
        for key, (what, ok) in _STRUCTURE.items()
        if key in state and not ok(state[key])
    ]
    if "rng" in state and not _rng_ok(state["rng"]):
        problems.append("'rng' is not the random state camlt saves (torch, numpy, python)")
    if isinstance(state.get("config"), str) and not _config_parses(state["config"]):
        problems.append("'config' is not a YAML mapping of config sections")
    classes, counts = state.get("classes"), state.get("train_counts")
    if not problems and classes is not None and counts is not None and len(classes) != len(counts):
        problems.append(f"{len(classes)} classes but {len(counts)} training counts")
    return problems


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and flush it to disk; a failed append leaves the file as it was."""
    line = memoryview((json.dumps(record) + "\n").encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line) :]
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # drop the torn part, so no half line stays behind
            raise CheckpointError(
                f"{path}: could not append a record ({err.strerror or err}); the file is unchanged"
            ) from err
    finally:
        os.close(fd)


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("epoch",)) -> list[dict]:
    """The complete records of a JSONL file; a torn last line (killed mid-write) is dropped.

    Any other line that is not a JSON object holding the ``required`` keys is named with its line
    and what was expected: a damaged log stops the reader with a message, not a traceback.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise CheckpointError(
                f"{path}:{number}: not a JSON line (damaged in the middle of the file)"
            ) from None
        _check_record(record, required, f"{path}:{number}")
        records.append(record)
    return records


def _check_record(record: object, required: tuple[str, ...], where: str) -> None:
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{where}: expected a JSON object, found {type(record).__name__} {_clip(record)}"
        )
    missing = [key for key in required if key not in record]
    if missing:
        raise CheckpointError(f"{where}: the record lacks {', '.join(missing)}: {_clip(record)}")
    if "epoch" in required and not _is_int(record["epoch"]):
        raise CheckpointError(
            f"{where}: epoch must be a whole number, found {_clip(record['epoch'])}"
        )


def _clip(value: object, width: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_json(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """A JSON object file camlt wrote (final_metrics.json, ...), named with what is wrong when
    it is missing, torn or not the object expected."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON file ({err}); it is damaged") from None
    _check_record(record, required, str(path))
    return record


def truncate_jsonl(path: str | Path, keep: callable) -> None:
    """Atomically rewrite a JSONL file keeping the records ``keep`` accepts."""
    records = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


class RunLock:
    """An exclusive lock on a run directory, so two runs never write the same files.

    ``wait``: queue behind the holder instead of refusing (writers of a shared results folder,
    each holding it for one write)."""

    def __init__(self, run_dir: str | Path, wait: bool = False) -> None:
        self.path = Path(run_dir) / ".lock"
        self.wait = wait
        self._fh = None

    def __enter__(self) -> RunLock:
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "unknown"
            self._fh.close()
            raise CheckpointError(
                f"{self.path.parent}: another camlt run (pid {holder}) is using this run "
                "directory; wait for it to end or stop it, or pass another train.run_dir"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"{os.getpid()}\n")
        self._fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._fh:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
