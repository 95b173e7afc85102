import json
import shutil

import pytest
import torch
from reliability_helpers import kill_after_first_checkpoint

from camlt import engine
from camlt.checkpoint import CheckpointError, load_checkpoint, read_jsonl
from camlt.config import ConfigError
from camlt.heads import NormalizedClassifier
from camlt.trained import evaluate_run


def test_normalized_logits_stay_within_scale():
    clf = NormalizedClassifier(16, 7, scale=8.0)
    with torch.no_grad():
        clf.weight.mul_(torch.logspace(-3, 3, 7)[:, None])  # wildly different norms
    z = clf(torch.randn(64, 16) * 100)
    assert z.abs().max() <= 8.0 + 1e-4


def test_train_eval_and_resume_equal_an_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch):
    full = engine.train(tiny_cfg(f"train.run_dir={tmp_path / 'full'}"), tmp_path / "full")
    records = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and "test" in records[-1]
    assert set(full) >= {
        "overall",
        "many",
        "medium",
        "few",
        "head",
        "middle",
        "tail",
        "ece",
        "per_class",
    }

    cfg = tiny_cfg(f"train.run_dir={tmp_path / 'killed'}")
    kill_after_first_checkpoint(cfg, tmp_path / "killed", monkeypatch)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 1
    resumed = engine.train(cfg, tmp_path / "killed", resume=True)

    assert resumed == full
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == [1, 2]

    evaluated, loaded = evaluate_run(tmp_path / "full")
    assert evaluated == full and len(loaded.classes) == 10 and loaded.train_counts[1] == 30
    saved = json.loads((tmp_path / "full" / "final_metrics.json").read_text())
    assert saved["metrics"]["overall"] == full["overall"]
    assert saved["precision"] == "fp32"  # what tiny_cfg's train.amp=off trains in


def test_bf16_autocast_trains_and_the_run_says_so(tiny_cfg, tmp_path):
    """The precision train.amp=auto picks on a CPU with native bf16, forced here on any CPU."""
    metrics = engine.train(tiny_cfg("train.amp=bf16", "train.epochs=1"), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert saved["precision"] == "bf16" and 0.0 <= metrics["overall"] <= 1.0
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["loss"] < 10  # finite, not diverged


def test_existing_run_is_not_overwritten_and_resume_checks_the_config(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.epochs=1")
    engine.train(cfg, tmp_path / "run")
    with pytest.raises(CheckpointError, match="--resume"):
        engine.train(cfg, tmp_path / "run")
    with pytest.raises(CheckpointError, match="train.lr"):
        engine.train(tiny_cfg("train.epochs=1", "train.lr=0.5"), tmp_path / "run", resume=True)


def test_nan_loss_stops_with_epoch_and_step(tiny_cfg, tmp_path):
    with pytest.raises(
        engine.TrainingDiverged, match=r"epoch 1, step \d+: loss is (nan|inf); no checkpoint"
    ):
        engine.train(tiny_cfg("train.lr=1e30"), tmp_path / "run")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan"])
def test_non_finite_numbers_are_refused_before_training(tiny_cfg, value):
    with pytest.raises(ConfigError, match=r"train.lr=(nan|inf|-inf): must be a finite number"):
        tiny_cfg(f"train.lr={value}")


def test_lr_schedule_warmup_then_steps(tiny_cfg):
    cfg = tiny_cfg("train.warmup_epochs=2", "train.milestones=[3,4]", "train.epochs=5").train
    factors = [engine.lr_factor(step, 10, cfg) for step in range(0, 50, 5)]
    assert factors[:4] == [0.05, 0.3, 0.55, 0.8]
    assert factors[4:] == [
        1.0,
        1.0,
        pytest.approx(0.1),
        pytest.approx(0.1),
        pytest.approx(0.01),
        pytest.approx(0.01),
    ]


@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("variant", ["section2", "class"])
def test_compiled_training_matches_eager_and_keeps_checkpoints(tiny_cfg, tmp_path, variant):
    """train.compile changes speed, not the model: same loss, same checkpoint keys, P updated.

    P changes in place after each forward; a compiled graph must not keep it for backward.
    """
    camc = ("model.head=camc", f"model.camc.variant={variant}", "train.epochs=1")
    eager = tiny_cfg(*camc, f"train.run_dir={tmp_path / 'eager'}")
    engine.train(eager, tmp_path / "eager")
    compiled = tiny_cfg(*camc, "train.compile=default", f"train.run_dir={tmp_path / 'compiled'}")
    engine.train(compiled, tmp_path / "compiled")

    def loss(name):
        return read_jsonl(tmp_path / name / "metrics.jsonl")[0]["loss"]

    assert loss("compiled") == pytest.approx(loss("eager"), rel=1e-3)
    a = load_checkpoint(tmp_path / "eager" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoint.pt")["model"]
    assert list(a) == list(b)  # no "_orig_mod." prefix: the eager model is what is saved
    assert torch.allclose(a["head.P"], b["head.P"], atol=1e-3) and b["head.P"].abs().sum() > 0
    # a compiled run reopens without compiling (train.compile is free on --resume)
    off = tiny_cfg(*camc, f"train.run_dir={tmp_path / 'compiled'}")
    engine.train(off, tmp_path / "compiled", resume=True)


def test_declared_parameters_take_no_weight_decay(tiny_cfg):
    from camlt.models import build_model

    cfg = tiny_cfg("model.learn_scale=true")
    model = build_model(cfg.model, 10, 1, [5] * 10)
    assert engine.no_decay_names(model) == {"head.classifier.log_scale"}
    groups = engine.build_optimizer(model, cfg.train).param_groups
    free = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(free) == 1 and free[0]["params"] == [model.head.classifier.log_scale]
    assert groups[0]["weight_decay"] == cfg.train.weight_decay
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    fixed = build_model(tiny_cfg().model, 10, 1, [5] * 10)  # a fixed scale is a buffer
    assert engine.no_decay_names(fixed) == set()
