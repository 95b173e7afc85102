"""Fine-tuning strategies (model.finetune, train.backbone_lr): after a real training epoch,
exactly the weights a strategy names have moved, and frozen parts keep their statistics."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from camlt import engine
from camlt.checkpoint import load_checkpoint
from camlt.config import ConfigError
from camlt.errors import UsageError
from camlt.preflight import check_run


def moved_after(cfg, tmp_path, epochs: int = 1) -> dict[str, bool]:
    """Which backbone entries (weights and BN statistics) changed over ``epochs`` epochs."""
    run = engine.build_run(cfg, tmp_path)
    before = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
    for epoch in range(epochs):
        engine.train_one_epoch(run, epoch)
    after = run.model.backbone.state_dict()
    return {
        k: not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()
    }


def test_probe_moves_no_backbone_weight_nor_statistic(fmnist_root, tmp_path):
    moved = moved_after(tiny_config(fmnist_root, tmp_path, "model.finetune=probe"), tmp_path)
    assert not any(moved.values())


def test_bn_head_moves_the_batch_norms_alone(fmnist_root, tmp_path):
    moved = moved_after(tiny_config(fmnist_root, tmp_path, "model.finetune=bn_head"), tmp_path)
    assert moved["bn1.weight"] and moved["bn1.running_mean"]
    assert not any(v for k, v in moved.items() if "conv" in k)


def test_last_stage_moves_its_blocks_and_nothing_before(fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, tmp_path, "model.finetune=last:1")  # resnet8: 1 block a stage
    moved = moved_after(cfg, tmp_path)
    assert moved["layers.2.conv1.weight"] and moved["layers.2.bn1.running_mean"]
    assert not moved["conv1.weight"] and not moved["layers.0.conv1.weight"]
    assert not moved["layers.1.bn1.running_mean"]  # a frozen stage keeps its statistics


def test_lp_ft_probes_first_then_moves_everything(fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, tmp_path, "model.finetune=lp_ft:1")
    assert not any(moved_after(cfg, tmp_path / "a", epochs=1).values())
    assert moved_after(cfg, tmp_path / "b", epochs=2)["conv1.weight"]


def test_the_backbone_learns_at_its_own_rate(fmnist_root, tmp_path):
    run = engine.build_run(tiny_config(fmnist_root, tmp_path, "train.backbone_lr=0.1"), tmp_path)
    lrs = [group["initial_lr"] for group in run.optimizer.param_groups]
    assert lrs[0] == pytest.approx(0.1 * run.cfg.train.lr) and lrs[-1] == run.cfg.train.lr
    backbone = {id(p) for p in run.model.backbone.parameters()}
    assert all(id(p) in backbone for p in run.optimizer.param_groups[0]["params"])
    plain = engine.build_run(tiny_config(fmnist_root, tmp_path / "p"), tmp_path / "p")
    assert len(plain.optimizer.param_groups) == 1  # one group as before: old checkpoints resume


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.finetune=last:0"], "model.finetune='last:0'"),
        (["model.finetune=some"], "expected full, bn_head, probe, last:N or lp_ft:K"),
        (["train.backbone_lr=0"], "train.backbone_lr=0.0: must be positive"),
    ],
)
def test_bad_settings_are_refused_by_key(fmnist_root, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_run(tiny_config(fmnist_root, tmp_path, *overrides))


def test_more_stages_than_the_backbone_has_are_refused(fmnist_root, tmp_path):
    with pytest.raises(UsageError, match="last:4: the backbone has 3 stages"):
        engine.build_run(tiny_config(fmnist_root, tmp_path, "model.finetune=last:4"), tmp_path)


def test_a_cached_probe_trains_the_head_alone_and_eval_repeats_its_numbers(
    fmnist_root, tmp_path, capsys
):
    """model.finetune=probe computes the features once; the run's test numbers are camlt eval's,
    which runs the whole model on the images."""
    from camlt.trained import evaluate_run

    extra = ("model.finetune=probe", "model.head=linear", "data.val_per_class=5", "data.n_max=20")
    cached = engine.train(tiny_config(fmnist_root, tmp_path / "c", *extra), tmp_path / "c")
    assert "features of 78 training images" in capsys.readouterr().out  # n_max 20, IF 10
    evaluated, _ = evaluate_run(tmp_path / "c")
    assert evaluated["per_class"] == cached["per_class"]
    assert evaluated["overall"] == pytest.approx(cached["overall"])
    plain = tiny_config(fmnist_root, tmp_path / "p", *extra, "train.probe_cache=false")
    engine.train(plain, tmp_path / "p")
    a = load_checkpoint(tmp_path / "c" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "p" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone."))  # frozen alike
    assert not torch.equal(a["head.classifier.weight"], b["head.classifier.weight"])  # no augment
