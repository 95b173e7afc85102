"""Fault injection: a failed checkpoint write, two runs in one directory, a diverging loss.

Each test breaks a run on purpose and then checks what a user is promised: the previous
checkpoint is intact, nothing half-written is left behind, and ``--resume`` finishes the run
bit for bit as if nothing had happened (compared with one uninterrupted reference run).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_overrides
from reliability_helpers import RECIPE, FailingOs, same_run, temp_files, tiny

from camlt import checkpoint, cli, engine
from camlt.checkpoint import CheckpointError, append_jsonl, load_checkpoint, read_jsonl


@pytest.fixture(scope="module")
def data_root(fmnist_root):
    return fmnist_root


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """One uninterrupted two-epoch run that every interrupted run must equal."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    engine.train(tiny(data_root, run_dir), run_dir)
    return run_dir


@pytest.mark.parametrize("mode", ["half", "fsync", "crash"])
def test_failed_checkpoint_write_keeps_the_previous_one_and_resumes(
    mode, data_root, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    failing = FailingOs("checkpoint.pt", mode, on_call=2)  # the end-of-epoch-2 checkpoint
    monkeypatch.setattr(checkpoint, "os", failing)
    expected = RuntimeError if mode == "crash" else CheckpointError
    with pytest.raises(expected) as err:
        engine.train(tiny(data_root, run_dir), run_dir)
    monkeypatch.undo()
    assert failing.fired == 1
    if mode != "crash":  # a full disk is explained, with what the user still has
        assert "No space left on device" in str(err.value)
        assert "previous checkpoint is unchanged" in str(err.value)
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert temp_files(run_dir) == []
    engine.train(tiny(data_root, run_dir), run_dir, resume=True)
    same_run(reference, run_dir)


def test_failed_metrics_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1, "loss": 0.5})
    before = path.read_bytes()

    def half_then_full(fd, data):
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Os:
        def __getattr__(self, name):
            return half_then_full if name == "write" else getattr(os, name)

    monkeypatch.setattr(checkpoint, "os", Os())
    with pytest.raises(CheckpointError, match="metrics.jsonl: could not append.*unchanged"):
        append_jsonl(path, {"epoch": 2, "loss": 0.25, "pad": "x" * 1000})
    monkeypatch.undo()
    assert path.read_bytes() == before
    append_jsonl(path, {"epoch": 2, "loss": 0.25})
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2]


def test_a_full_disk_on_the_cli_is_a_message_not_a_traceback(
    data_root, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "os", FailingOs("config.yaml", "half"))
    code = cli.main(["train", str(RECIPE), *tiny_overrides(data_root, run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "camlt: error:" in err and "No space left on device" in err
    assert "Traceback" not in err and temp_files(run_dir) == []
    assert not (run_dir / "config.yaml").exists()


HOLD_LOCK = """
import sys, time
from camlt.checkpoint import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_run_in_the_same_directory_is_refused(data_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for resume in (False, True):
            with pytest.raises(CheckpointError) as err:
                engine.train(tiny(data_root, run_dir), run_dir, resume=resume)
            assert f"another camlt run (pid {holder.pid}) is using this run directory" in str(
                err.value
            )
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing was written
    finally:
        holder.kill()  # kill -9: the kernel releases the lock with the process
        holder.wait()
    with checkpoint.RunLock(run_dir):  # free again once the holder is gone
        pass


def nan_at(epoch: int, step: int, value: float, monkeypatch) -> None:
    """Make the loss of one (epoch, step), both 1-based, equal ``value``."""
    real = engine.compute_loss
    state = {"epoch": -1, "step": 0}
    real_hooks = engine.call_epoch_hooks

    def hooks(e, *objects):
        state["epoch"], state["step"] = e + 1, 0
        real_hooks(e, *objects)

    def loss(run, images, labels):
        state["step"] += 1
        out = real(run, images, labels)
        if (state["epoch"], state["step"]) == (epoch, step):
            return out * torch.tensor(value)
        return out

    monkeypatch.setattr(engine, "call_epoch_hooks", hooks)
    monkeypatch.setattr(engine, "compute_loss", loss)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_names_epoch_and_step_and_keeps_the_last_good_checkpoint(
    value, data_root, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    nan_at(2, 3, value, monkeypatch)
    with pytest.raises(engine.TrainingDiverged) as err:
        engine.train(tiny(data_root, run_dir), run_dir)
    monkeypatch.undo()
    assert str(err.value).startswith(f"epoch 2, step 3: loss is {value}; the last good checkpoint")
    assert "(end of epoch 1) is kept" in str(err.value)
    kept = load_checkpoint(run_dir / "checkpoint.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]
    engine.train(tiny(data_root, run_dir), run_dir, resume=True)  # the kept one is good
    same_run(reference, run_dir)


def test_weights_that_blow_up_on_an_epochs_last_step_are_never_checkpointed(
    data_root, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    real = engine.train_one_epoch

    def poisoned(run, epoch):
        out = real(run, epoch)
        if epoch == 1:  # the loss of every step was finite, but the last update was not
            with torch.no_grad():
                next(run.model.parameters()).view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(engine, "train_one_epoch", poisoned)
    with pytest.raises(engine.TrainingDiverged, match=r"epoch 2, after step \d+: non-finite"):
        engine.train(tiny(data_root, run_dir), run_dir)
    kept = load_checkpoint(run_dir / "checkpoint.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]


def test_temp_files_of_a_killed_writer_are_removed_on_resume(data_root, tmp_path):
    run_dir = tmp_path / "run"
    engine.train(tiny(data_root, run_dir, "train.epochs=1"), run_dir)
    stale = run_dir / ".camlt-tmp-checkpoint.pt.k9x_2abc.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = [run_dir / "notes.tmp", run_dir / ".backup.abcdefgh.tmp"]  # a user's, not camlt's
    for path in mine:
        path.write_text("a user's file")
    engine.train(tiny(data_root, run_dir, "train.epochs=1"), run_dir, resume=True)
    assert not stale.exists() and all(path.exists() for path in mine)


def test_a_run_writes_only_into_a_directory_it_owns(data_root, tmp_path):
    # a folder that is no run: the user's own config.yaml, results and a file named like a temp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    files = {"config.yaml": "mine: 1\n", "final_metrics.json": "{}", ".backup.abcdefgh.tmp": "x"}
    for name, text in files.items():
        (foreign / name).write_text(text)
    for resume in (False, True):
        with pytest.raises(CheckpointError, match="holds files camlt did not write"):
            engine.train(tiny(data_root, foreign), foreign, resume=resume)
    assert {p.name: p.read_text() for p in foreign.iterdir()} == files  # not a byte written
    # a finished run of camlt's whose checkpoint is gone: a fresh train refuses, naming it
    run_dir = tmp_path / "run"
    engine.train(tiny(data_root, run_dir, "train.epochs=1"), run_dir)
    (run_dir / "checkpoint.pt").unlink()
    before = (run_dir / "final_metrics.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds a run \(metrics.jsonl, final_"):
        engine.train(tiny(data_root, run_dir, "train.epochs=1"), run_dir)
    assert (run_dir / "final_metrics.json").read_bytes() == before


def test_a_linked_run_directory_is_resolved_and_stated(data_root, tmp_path, capsys):
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    real.mkdir()
    engine.train(tiny(data_root, link, "train.epochs=1"), link)
    assert f"is a link: training in {real.resolve()}" in capsys.readouterr().out
    assert (real / "checkpoint.pt").is_file() and (real / ".camlt-run").is_file()


NOWHERE = "data.root=/no/such/folder"  # were data read first, its error would come first


@pytest.mark.parametrize(
    "overrides, message, before",
    [
        (["loss.name=hinge", NOWHERE], "loss.name='hinge': unknown", True),
        (["model.head=cosine", NOWHERE], "model.head='cosine': unknown", True),
        (["model.backbone=resnet7", NOWHERE], "model.backbone='resnet7': unknown", True),
        (["data.name=imagenet"], "data.name='imagenet': unknown", True),
        (["data.sampler=oversample", NOWHERE], "data.sampler='oversample': unknown", True),
        (["data.name=image_folder", "data.root=null"], "needs data.root", True),
        (["data.name=image_folder", NOWHERE], "image folder /no/such/folder is not", True),
        (["data.name=csv"], "needs data.csv_file", True),
        (["data.name=imagenet_lt"], "split file not found", True),
        # refused once the start has begun, by the data's own files: taken back
        (["data.name=image_folder"], "no class folders", False),
        ([NOWHERE], "/no/such/folder", False),
    ],
)
def test_a_refused_train_leaves_nothing_on_disk(
    data_root, tmp_path, capsys, monkeypatch, overrides, message, before
):
    """Names and data keys are checked before the run directory is made or a data file read; a
    start refused later (by the data's own files) takes back what it wrote."""
    if before:
        monkeypatch.setattr(engine, "claim_run_dir", lambda *a: pytest.fail("directory made"))
    args = ["train", str(RECIPE), *tiny_overrides(data_root, tmp_path / "run"), *overrides]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
