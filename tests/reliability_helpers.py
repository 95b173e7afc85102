"""Shared pieces of the fault-injection tests: one reference run, and a way to fail a file write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch
from conftest import ROOT, tiny_config

from camlt import rundir
from camlt.checkpoint import TEMP_PREFIX, load_checkpoint, read_jsonl

RECIPE = ROOT / "configs" / "fmnist_lt.yaml"


tiny = tiny_config  # the tiny two-epoch config of conftest


def same_run(run_a: Path, run_b: Path) -> None:
    """Assert two finished runs agree bit for bit: final metrics, weights and per-epoch losses."""
    a, b = load_checkpoint(run_a / "checkpoint.pt"), load_checkpoint(run_b / "checkpoint.pt")
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    fa = (run_a / rundir.FINAL_FILE).read_text()
    fb = (run_b / rundir.FINAL_FILE).read_text()
    # the saved config names its own run directory; everything else must match exactly
    assert fa.replace(str(run_a), "RUN") == fb.replace(str(run_b), "RUN")
    keep = ("epoch", "loss", "lr", "test")
    ra = [{k: r.get(k) for k in keep} for r in read_jsonl(run_a / rundir.METRICS_FILE)]
    rb = [{k: r.get(k) for k in keep} for r in read_jsonl(run_b / rundir.METRICS_FILE)]
    assert ra == rb


def kill_after_first_checkpoint(cfg, run_dir: Path, monkeypatch) -> None:
    """Train ``cfg`` in ``run_dir`` and stop it as a kill would, right after the first epoch's
    checkpoint is written; the run is then ready to be resumed."""
    import pytest

    from camlt import engine

    real_save = engine.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, run_dir)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(f"{TEMP_PREFIX}*.tmp"))


class FailingOs:
    """Stands in for the ``os`` module of camlt.checkpoint and fails one write of one file.

    ``mode`` says how: ``half`` writes half the bytes then raises ENOSPC (a disk that fills
    mid-write), ``fsync`` raises ENOSPC from fsync, ``crash`` writes half then raises a
    RuntimeError (any bug in the middle of a write).
    """

    def __init__(self, target: str, mode: str, on_call: int = 1) -> None:
        self.target, self.mode, self.on_call, self.calls, self.fired = target, mode, on_call, 0, 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def _hit(self, fd: int) -> bool:
        """Whether this is the write to fail: the on_call-th one to a temp file of target."""
        if (
            not os.readlink(f"/proc/self/fd/{fd}")
            .rsplit("/", 1)[-1]
            .startswith(f"{TEMP_PREFIX}{self.target}.")
        ):
            return False
        self.calls += 1
        return self.calls == self.on_call

    def fdopen(self, fd: int, mode: str = "r", *args, **kwargs):
        fh = os.fdopen(fd, mode, *args, **kwargs)
        if self.mode in ("half", "crash") and self._hit(fd):
            self.fired += 1
            return _HalfWriter(fh, self.mode)
        return fh

    def fsync(self, fd: int) -> None:
        if self.mode == "fsync" and self._hit(fd):
            self.fired += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)


class _HalfWriter:
    """A file whose ``write`` puts half the data on disk, then fails."""

    def __init__(self, fh, mode: str) -> None:
        self._fh, self._mode = fh, mode

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def write(self, data: bytes) -> int:
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        if self._mode == "crash":
            raise RuntimeError("injected crash in the middle of a write")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
