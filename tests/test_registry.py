"""Every registered part builds and trains one step; the registry refuses what it does not know."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT

from camlt.config import load_config
from camlt.data import DATASETS, build_sets
from camlt.data.loaders import DATA_SETS, FILE_DATASETS
from camlt.heads import HEADS
from camlt.models import build_model
from camlt.models.registry import BACKBONES
from camlt.registry import Registry
from camlt.stage2 import METHODS, adapt_model

RECIPE = ROOT / "configs" / "fmnist_lt.yaml"
HEAVY = ("resnet101", "resnet152", "resnext101_32x8d", "wide_resnet50_2")  # built, not stepped


def one_step(model: torch.nn.Module, channels: int, side: int) -> None:
    """A forward and backward pass on a tiny batch; some parameter gets a finite gradient."""
    model.train()
    out = model(torch.randn(2, channels, side, side), torch.tensor([0, 1]))
    out.logits.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


SMALL = ("resnet8", "resnet20", "resnet32")  # every head on these; every backbone with linear
PAIRS = [(b, "linear") for b in BACKBONES] + [(b, h) for b in SMALL for h in HEADS if h != "linear"]


@pytest.mark.parametrize(("backbone", "head"), PAIRS)
def test_every_backbone_and_head_builds_and_steps(backbone, head):
    cfg = load_config(RECIPE, [f"model.backbone={backbone}", f"model.head={head}"])
    model = build_model(cfg.model, 4, 3, [8, 4, 2, 1])
    assert model.backbone.out_channels > 0
    if backbone not in HEAVY:
        one_step(model, 3, 32)


@pytest.mark.parametrize("method", METHODS)
def test_every_stage2_method_builds_and_steps(method):
    recipe = ROOT / "configs" / f"stage2_{method}.yaml"
    extra = ["model.init_from=runs/stage1", "model.backbone=resnet8"]
    if method in ("taunorm", "posthoc"):
        extra.append("train.epochs=0")
    cfg = load_config(recipe, extra)
    model = adapt_model(build_model(cfg.model, 4, 1, [8, 4, 2, 1]), cfg, 4)
    if method in ("taunorm", "posthoc"):  # nothing trains: the forward alone
        assert not any(p.requires_grad for p in model.parameters())
        assert model(torch.randn(2, 1, 32, 32)).logits.shape == (2, 4)
        return
    one_step(model, 1, 32)
    assert all(p.grad is None for p in model.backbone.parameters())  # the backbone is frozen


def test_a_registry_lists_its_names_and_refuses_twice():
    reg = Registry("model.head", {"a": int})
    reg.add("b", float)
    with pytest.raises(ValueError, match="model.head='c': unknown; expected one of a, b"):
        reg.factory("c")
    with pytest.raises(ValueError, match="'a' registered twice"):
        reg.add("a", str)
    assert reg.factory("b") is float and list(reg) == ["a", "b"] and len(reg) == 2


def test_every_data_set_is_one_registry_entry_and_an_unknown_one_lists_them_all():
    assert list(DATA_SETS) == [*DATASETS, *FILE_DATASETS]
    cfg = load_config(RECIPE, [])
    cfg.data.name = "imagenet"  # what a user may type for imagenet_lt
    with pytest.raises(ValueError, match="data.name='imagenet': unknown; expected one of") as err:
        build_sets(cfg)
    assert all(name in str(err.value) for name in ("fmnist_lt_clutter", "imagenet_lt", "csv"))
