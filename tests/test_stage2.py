"""Decoupled stage 2 (cRT, tau-norm, LWS, post-hoc) from a finished stage-1 run directory."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, tiny_config, tiny_overrides

from camlt import engine
from camlt.checkpoint import load_checkpoint
from camlt.config import ConfigError, load_config
from camlt.heads import NormalizedHead
from camlt.preflight import check_run
from camlt.stage2 import Stage2Error, TauNormHead, load_stage1
from camlt.trained import evaluate_run


@pytest.fixture(scope="module")
def stage1(fmnist_root, tmp_path_factory):
    """One finished stage-1 run (CE + linear head), shared by the tests of this module."""
    root, run_dir = fmnist_root, tmp_path_factory.mktemp("stage1") / "s1"
    cfg = tiny_config(root, run_dir, "model.head=linear")
    metrics = engine.train(cfg, run_dir)
    return root, run_dir, metrics


def stage2_cfg(stage1, tmp_path: Path, recipe: str, *extra: str, name: str = "s2"):
    root, run_dir, _ = stage1
    overrides = tiny_overrides(root, tmp_path / name) + [f"model.init_from={run_dir}", *extra]
    if recipe in ("taunorm", "posthoc"):
        overrides.append("train.epochs=0")
    return load_config(ROOT / "configs" / f"stage2_{recipe}.yaml", overrides)


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def part(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("method", ["crt", "lws"])
def test_stage2_training_leaves_the_backbone_bit_identical(stage1, tmp_path, method):
    cfg = stage2_cfg(stage1, tmp_path, method, "train.epochs=1")
    metrics = engine.train(cfg, tmp_path / "s2")
    s1, s2 = weights(stage1[1]), weights(tmp_path / "s2")
    # every backbone tensor, BatchNorm running statistics included (eval mode throughout)
    assert_same(part(s1, "backbone."), part(s2, "backbone.body."))
    if method == "lws":
        assert_same(part(s1, "head."), part(s2, "head.base."))
        assert not torch.equal(s2["head.scales"], torch.ones(10))  # the scales did learn
    else:
        assert not torch.equal(s1["head.classifier.weight"], s2["head.classifier.weight"])
    # the stage-2 checkpoint is self-contained: it evaluates with the stage-1 run gone
    moved = tmp_path / "stage1-moved"
    shutil.copytree(stage1[1], moved)
    shutil.rmtree(stage1[1])
    try:
        assert evaluate_run(tmp_path / "s2")[0] == metrics
    finally:
        shutil.copytree(moved, stage1[1])


def test_crt_uses_class_balanced_sampling_and_trains_only_the_head(stage1, tmp_path):
    run = engine.build_run(stage2_cfg(stage1, tmp_path, "crt"), tmp_path / "s2")
    assert run.train_loader.sampler is not None
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable == {"head.classifier.weight", "head.classifier.bias"}
    run.model.train()
    assert not any(m.training for m in run.model.backbone.modules() if m is not run.model.backbone)


def test_taunorm_with_tau_zero_is_the_original_classifier(stage1, tmp_path):
    _, s1_dir, s1_metrics = stage1
    metrics = engine.train(
        stage2_cfg(stage1, tmp_path, "taunorm", "stage2.taunorm.tau=0"), tmp_path / "s2"
    )
    assert metrics["per_class"] == s1_metrics["per_class"]
    assert metrics["ece"] == pytest.approx(s1_metrics["ece"], abs=1e-6)
    assert metrics["stage2"] == {
        "method": "taunorm",
        "tau": 0.0,
        "tau_chosen_on": "fixed (stage2.taunorm.tau)",
    }


def test_taunorm_divides_each_weight_row_by_its_norm_to_the_tau(stage1, tmp_path):
    cfg = stage2_cfg(stage1, tmp_path, "taunorm", "stage2.taunorm.tau=0.5")
    run = engine.build_run(cfg, tmp_path / "s2")
    load_stage1(run)
    w = weights(stage1[1])["head.classifier.weight"]
    b = weights(stage1[1])["head.classifier.bias"]
    f = torch.randn(4, w.shape[1])
    expected = f @ (w / w.norm(dim=1, keepdim=True).sqrt()).t() + b
    assert torch.allclose(run.model.head.logits_at(f, run.model.head.tau), expected, atol=1e-5)


def test_taunorm_sweep_is_reported_as_chosen_on_test(stage1, tmp_path):
    cfg = stage2_cfg(stage1, tmp_path, "taunorm", "stage2.taunorm.tau_sweep=[0,0.5,1]")
    metrics = engine.train(cfg, tmp_path / "s2")
    info = metrics["stage2"]
    assert info["tau_chosen_on"] == "test" and info["tau"] in (0.0, 0.5, 1.0)
    assert set(info["tau_sweep_test_overall"]) == {"0", "0.5", "1"}
    assert max(info["tau_sweep_test_overall"].values()) == pytest.approx(metrics["overall"])
    assert evaluate_run(tmp_path / "s2")[0] == metrics  # the choice is saved
    saved = json.loads((tmp_path / "s2" / "final_metrics.json").read_text())
    assert saved["metrics"]["stage2"]["tau_chosen_on"] == "test"


def test_posthoc_stage_reuses_the_stage1_model(stage1, tmp_path):
    _, _, s1_metrics = stage1
    same = engine.train(
        stage2_cfg(stage1, tmp_path, "posthoc", "loss.posthoc_tau=0", name="a"), tmp_path / "a"
    )
    assert same["per_class"] == s1_metrics["per_class"]
    adjusted = engine.train(
        stage2_cfg(stage1, tmp_path, "posthoc", "loss.posthoc_tau=4", name="b"), tmp_path / "b"
    )
    assert adjusted["per_class"] != s1_metrics["per_class"]


def test_taunorm_refuses_a_head_without_weight_norms():
    with pytest.raises(Stage2Error, match="taunorm needs model.head=linear"):
        TauNormHead(NormalizedHead(8, 3), tau=1.0)


def _copy(stage1, tmp_path: Path) -> Path:
    fake = tmp_path / "copy"
    shutil.copytree(stage1[1], fake)
    return fake


def test_bad_stage1_directories_are_refused_with_the_reason(stage1, tmp_path):
    def refused(init_from, match, *extra):
        cfg = stage2_cfg(stage1, tmp_path, "crt", f"model.init_from={init_from}", *extra)
        with pytest.raises(Stage2Error, match=match):
            engine.train(cfg, tmp_path / "s2")
        assert not (tmp_path / "s2" / "checkpoint.pt").exists()

    refused(tmp_path / "nowhere", "no such run directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a finished run directory")

    fake = _copy(stage1, tmp_path)
    (fake / "final_metrics.json").unlink()
    refused(fake, "stage 1 has not finished.*--resume")
    shutil.rmtree(fake)

    fake = _copy(stage1, tmp_path)
    config = yaml.safe_load((fake / "config.yaml").read_text())
    config["data"]["name"] = "cifar10_lt"
    (fake / "config.yaml").write_text(yaml.safe_dump(config))
    refused(fake, "data.name: stage 1 has 'cifar10_lt', this config 'fmnist_lt'")
    shutil.rmtree(fake)

    fake = _copy(stage1, tmp_path)
    final = json.loads((fake / "final_metrics.json").read_text())
    final["classes"] = final["classes"][:5]
    (fake / "final_metrics.json").write_text(json.dumps(final))
    refused(fake, "stage 1 has 5 classes, this config 10")
    shutil.rmtree(fake)

    refused(stage1[1], "different training split", "data.imbalance=5")
    refused(stage1[1], "model.backbone: stage 1 has 'resnet8'", "model.backbone=resnet20")


def test_lws_refuses_a_different_head(stage1, tmp_path):
    cfg = stage2_cfg(stage1, tmp_path, "lws", "model.head=normalized")
    with pytest.raises(Stage2Error, match="model.head: stage 1 has 'linear'.*keeps the stage-1"):
        engine.train(cfg, tmp_path / "s2")


def test_stage2_config_errors_name_the_valid_choices(stage1, tmp_path):
    with pytest.raises(ConfigError, match="stage2.method='swa'.*none, crt, taunorm, lws, posthoc"):
        check_run(stage2_cfg(stage1, tmp_path, "crt", "stage2.method=swa"))
    with pytest.raises(ConfigError, match="stage2.method=crt needs model.init_from"):
        load_config(ROOT / "configs" / "stage2_crt.yaml")
    with pytest.raises(ConfigError, match="model.init_from is set but stage2.method=none"):
        load_config(ROOT / "configs" / "fmnist_lt.yaml", ["model.init_from=x"])
    with pytest.raises(ConfigError, match="train.epochs=0: must be >= 1"):
        check_run(stage2_cfg(stage1, tmp_path, "crt", "train.epochs=0"))


def test_tau_norm_settings_sit_under_its_name_and_the_old_flat_ones_still_read():
    from camlt.config import merge
    from camlt.preflight import check_sections
    from camlt.stage2 import ADAPTERS

    old = merge({"stage2": {"method": "taunorm", "tau": 0.5, "tau_sweep": []}}, "old config")
    assert old.stage2.taunorm == {"tau": 0.5, "tau_sweep": []} and "tau" not in old.stage2
    crt = merge({"stage2": {"method": "crt", "tau": 1.0, "tau_sweep": []}}, "old config")
    assert "taunorm" not in crt.stage2  # a saved crt config held tau-norm's keys too
    new = merge({"stage2": {"method": "taunorm", "taunorm": {"tau": -1}}}, "recipe")
    with pytest.raises(ConfigError, match="stage2.taunorm: tau=-1: must be a number >= 0"):
        check_sections(new.stage2, "taunorm", ["method"], ADAPTERS)
