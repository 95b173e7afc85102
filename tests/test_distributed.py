"""Multi-process training: torchrun with 2 CPU processes (gloo) against one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dist_train  # noqa: F401  (registers the BN-free backbone in this process too)
import pytest
import torch
from conftest import ROOT, tiny_overrides

from camlt import distributed, engine
from camlt.checkpoint import load_checkpoint, read_jsonl
from camlt.config import load_config

HERE = Path(__file__).parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
    "torchrun"
)


def run_training(run_dir: Path, fmnist_root: Path, processes: int, *extra: str) -> dict:
    overrides = tiny_overrides(fmnist_root, run_dir) + [
        "model.backbone=plainconv",
        "data.augment=false",
        "train.epochs=1",
        "train.warmup_epochs=0",
        "train.batch_size=16",  # the global batch: 8 per process under torchrun
        *extra,
    ]
    recipe = ROOT / "configs" / "fmnist_lt.yaml"
    if processes == 1:  # in this process: one interpreter start less
        engine.train(load_config(recipe, overrides), run_dir)
        return json.loads((run_dir / "final_metrics.json").read_text())
    script = [str(HERE / "dist_train.py"), str(recipe), str(run_dir)]
    command = [TORCHRUN, "--standalone", f"--nproc_per_node={processes}", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(command + overrides, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((run_dir / "final_metrics.json").read_text())


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_processes_give_the_metrics_of_one(tmp_path, fmnist_root):
    """Same data, same global batch: metrics equal and weights within 1e-5 (float sum order)."""
    one = run_training(tmp_path / "one", fmnist_root, 1)
    two = run_training(tmp_path / "two", fmnist_root, 2)
    a, b = one["metrics"], two["metrics"]
    assert a["num_samples"] == b["num_samples"] == 80  # gathered: every test image once
    assert a["per_class"] == b["per_class"] and a["overall"] == b["overall"]
    assert abs(a["ece"] - b["ece"]) < 1e-4
    loss_one = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    loss_two = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(loss_two) == 1  # rank 0 alone writes the run directory
    assert loss_two[0]["loss"] == pytest.approx(loss_one[0]["loss"], rel=1e-5)
    w1 = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]
    w2 = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["model"]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    assert not any(k.startswith("module.") for k in w2)  # saved unwrapped, loadable anywhere


def test_lr_scaling_rule_and_global_batch(tiny_cfg):
    cfg = tiny_cfg("train.lr=0.1", "train.batch_size=512", "train.lr_scaling=linear")
    assert distributed.effective_lr(cfg.train) == pytest.approx(0.2)  # 0.1 per 256 images
    assert distributed.effective_lr(tiny_cfg("train.lr=0.1").train) == 0.1
    from camlt.data import build_loaders

    with pytest.raises(ValueError, match="global batch and must divide evenly over 3"):
        build_loaders(tiny_cfg("train.batch_size=16"), rank=0, world=3)
    halves = [build_loaders(tiny_cfg("train.batch_size=16"), rank=r, world=2) for r in (0, 1)]
    whole = build_loaders(tiny_cfg("train.batch_size=16"))
    assert halves[0].train.batch_size == 8 and len(halves[0].train) == len(whole.train)
    tests = [torch.cat([y for _, y in h.test]) for h in halves]
    assert len(tests[0]) + len(tests[1]) == len(whole.test_set)


def test_gather_is_identity_on_one_process():
    t = torch.arange(6).view(3, 2)
    assert distributed.gather_cat(t, distributed.DistInfo()) is t
    assert distributed.sum_across([1.0, 2.0], distributed.DistInfo()) == [1.0, 2.0]


def test_sync_bn_converts_under_torchrun_on_gpus_and_refuses_cpu():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    two = distributed.DistInfo(rank=0, world=2)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert distributed.sync_batchnorm(model, distributed.DistInfo(), True, cpu) is model
    assert distributed.sync_batchnorm(model, two, False, cpu) is model
    synced = distributed.sync_batchnorm(model, two, True, cuda)  # converts; runs nothing
    assert isinstance(synced[1], torch.nn.SyncBatchNorm) and synced[1].weight is model[1].weight
    with pytest.raises(ValueError, match="train.sync_bn=true needs CUDA"):
        distributed.sync_batchnorm(model, two, True, cpu)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_camc_prototypes_learn_from_the_global_batch(tmp_path, fmnist_root):
    """Every rank updates P from the whole global batch, as one process does."""
    camc = ("model.head=camc", "model.camc.mu=0.5")  # a fast-moving P shows any difference
    one = run_training(tmp_path / "one", fmnist_root, 1, *camc)
    two = run_training(tmp_path / "two", fmnist_root, 2, *camc)
    p_one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]["head.P"]
    p_two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["model"]["head.P"]
    assert torch.allclose(p_one, p_two, atol=1e-5)
    assert one["metrics"]["per_class"] == two["metrics"]["per_class"]
