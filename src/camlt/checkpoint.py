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
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.pt"
_UMASK = os.umask(0o022)  # read the process umask (os.umask can only read it by setting it)
os.umask(_UMASK)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the run."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what atomic_write_bytes' mkstemp creates


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files a killed writer left behind; call only while holding RunLock."""
    stale = [t for t in Path(directory).glob(".*.tmp") if _TEMP_NAME.fullmatch(t.name)]
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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a loadable camlt checkpoint ({first})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a camlt checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']}, this camlt reads {FORMAT_VERSION}"
        )
    return state


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


def read_jsonl(path: str | Path) -> list[dict]:
    """The complete records of a JSONL file; a torn last line (killed mid-write) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise ValueError(
                    f"{path}:{number}: corrupt JSON line in the middle of the file"
                ) from None
    return records


def truncate_jsonl(path: str | Path, keep: callable) -> None:
    """Atomically rewrite a JSONL file keeping the records ``keep`` accepts."""
    records = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


class RunLock:
    """An exclusive lock on a run directory, so two runs never write the same files."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> RunLock:
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
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
