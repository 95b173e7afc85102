"""Hostile and foreign checkpoints: a pickled payload never runs, and a checkpoint of another
model, dataset or format version is refused with a message that says what differs."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
from conftest import write_cifar
from reliability_helpers import RECIPE, tiny

from camlt import engine
from camlt.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint
from camlt.config import from_yaml_file, load_config, to_yaml
from camlt.trained import evaluate_run


@pytest.fixture(scope="module")
def data_root(fmnist_root):
    return fmnist_root


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A finished one-epoch run (resnet8, normalized head s=16, 10 Fashion-MNIST classes)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    engine.train(tiny(data_root, run_dir, "train.epochs=1"), run_dir)
    return run_dir


class Payload:
    """Unpickling this object would run a shell command that creates ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_files(tmp_path) -> dict[str, object]:
    marker = tmp_path / "payload_ran"
    zipped, raw = tmp_path / "zipped.pt", tmp_path / "raw.pt"
    torch.save({"format_version": FORMAT_VERSION, "model": Payload(marker)}, zipped)
    with open(raw, "wb") as fh:  # a legacy (non-zip) pickle
        pickle.dump({"format_version": FORMAT_VERSION, "epoch": Payload(marker)}, fh)
    return {"marker": marker, "files": [zipped, raw]}


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    hostile = hostile_files(tmp_path)
    for path in hostile["files"]:
        with pytest.raises(CheckpointError, match="not a loadable camlt checkpoint"):
            load_checkpoint(path)
    assert not hostile["marker"].exists()


def test_a_payload_in_a_run_directory_is_refused_by_resume_and_eval(trained, tmp_path):
    hostile = hostile_files(tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    shutil.copy(hostile["files"][0], run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a loadable"):
        evaluate_run(run_dir)
    saved = from_yaml_file(run_dir / "config.yaml")
    saved.train.run_dir = str(run_dir)
    with pytest.raises(CheckpointError, match="not a loadable"):
        engine.train(saved, run_dir, resume=True)
    assert not hostile["marker"].exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a loadable camlt checkpoint"),
        (b"PK\x03\x04 truncated zip", "not a loadable camlt checkpoint"),
        ("half", "not a loadable camlt checkpoint"),
        ({"model": {}}, "no format_version"),
        ({"format_version": FORMAT_VERSION + 1}, f"format {FORMAT_VERSION + 1}, this camlt reads"),
        ([1, 2, 3], "no format_version"),
    ],
)
def test_broken_or_foreign_files_name_the_problem(trained, tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    if content == "half":
        data = (trained / "checkpoint.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def moved_checkpoint(trained, tmp_path, cfg) -> object:
    """A run directory whose config.yaml is ``cfg`` but whose checkpoint came from ``trained``."""
    run_dir = tmp_path / "other"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    shutil.copy(trained / "checkpoint.pt", run_dir / "checkpoint.pt")
    return run_dir


def test_eval_names_another_architecture(data_root, trained, tmp_path):
    cfg = tiny(data_root, tmp_path / "other", "train.epochs=1", "model.backbone=resnet20")
    with pytest.raises(CheckpointError) as err:
        evaluate_run(moved_checkpoint(trained, tmp_path, cfg))
    text = str(err.value)
    assert "model.backbone: 'resnet8' != 'resnet20' (checkpoint != config.yaml)" in text
    assert "state_dict" not in text  # not torch's raw error


def test_eval_names_another_dataset_and_class_count(data_root, trained, tmp_path):
    write_cifar(tmp_path / "cifar", 100)
    cfg = load_config(
        RECIPE.parent / "cifar100_lt.yaml",
        [
            f"data.root={tmp_path / 'cifar'}",
            "data.n_max=12",
            "data.imbalance=10",
            "model.backbone=resnet8",
            "train.threads=1",
        ],
    )
    with pytest.raises(CheckpointError) as err:
        evaluate_run(moved_checkpoint(trained, tmp_path, cfg))
    text = str(err.value)
    assert "data.name: 'fmnist_lt' != 'cifar100_lt'" in text


def test_resume_refuses_a_checkpoint_that_loads_but_is_another_runs(data_root, trained, tmp_path):
    # model.scale changes no tensor shape: load_state_dict would accept it without a word
    cfg = tiny(data_root, tmp_path / "other", "train.epochs=2", "model.scale=8")
    run_dir = moved_checkpoint(trained, tmp_path, cfg)
    with pytest.raises(CheckpointError) as err:
        engine.train(cfg, run_dir, resume=True)
    text = str(err.value)
    assert "does not fit this run" in text and "model.scale: 16.0 != 8.0" in text
    assert "train.epochs: 1 != 2" in text


def test_resume_names_missing_entries(data_root, trained, tmp_path):
    cfg = tiny(data_root, tmp_path / "other", "train.epochs=1")
    run_dir = moved_checkpoint(trained, tmp_path, cfg)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    del state["optimizer"], state["rng"]
    torch.save(state, run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no 'optimizer' entry; no 'rng' entry"):
        engine.train(cfg, run_dir, resume=True)
