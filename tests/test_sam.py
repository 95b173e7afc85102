"""Sharpness-aware minimisation: the gradient taken at the perturbed weights, the weights and
buffers left as one plain step leaves them, ImbSAM's split by class, and the settings refused."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ROOT, tiny_config

from camlt import engine
from camlt.config import ConfigError, load_config
from camlt.errors import UsageError
from camlt.sam import SharpnessAware, tail_classes

RECIPE = ROOT / "configs" / "fmnist_lt.yaml"


def test_the_ascent_moves_the_weights_by_rho_along_the_gradient_and_back_exactly():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    v = torch.nn.Parameter(torch.tensor([[0.5]]))
    (w.pow(2).sum() + 3 * v.sum()).backward()
    grad = torch.cat([w.grad, v.grad.flatten()])
    before = [w.detach().clone(), v.detach().clone()]
    sam = SharpnessAware([w, v], rho=0.5)
    sam.ascend()
    moved = torch.cat([w.detach() - before[0], (v.detach() - before[1]).flatten()])
    assert torch.allclose(moved, 0.5 * grad / grad.norm())
    sam.restore()
    assert torch.equal(w.detach(), before[0]) and torch.equal(v.detach(), before[1])


def test_imbsam_tail_is_the_classes_at_or_below_the_limit():
    assert tail_classes([500, 100, 101, 3], 100).tolist() == [False, True, False, True]


@pytest.fixture(scope="module")
def fmnist(fmnist_root):
    return fmnist_root


def tiny_run(fmnist, tmp_path, *extra: str) -> engine.Run:
    return engine.build_run(tiny_config(fmnist, tmp_path, "model.head=camc", *extra), tmp_path)


def one_batch(run: engine.Run):
    images, labels = next(iter(run.train_loader))
    return images, labels


def grads(run: engine.Run) -> list[torch.Tensor]:
    return [p.grad.clone() for p in run.sam.params]


def test_sam_takes_the_gradient_at_the_perturbed_weights_and_keeps_w_and_the_buffers(
    fmnist, tmp_path
):
    run = tiny_run(fmnist, tmp_path / "a", "train.sam=sam", "train.sam_rho=0.3")
    images, labels = one_batch(run)
    probe = copy.deepcopy(run)  # the same weights and buffers, stepped by hand
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    loss = engine.sam_step(run, images, labels, lambda loss: None)
    got = grads(run)
    # by hand: the gradient at w, the step to w + e, the gradient there
    probe.optimizer.zero_grad()
    first = engine.compute_loss(probe, images, labels)
    first.backward()
    after_first = {k: v.clone() for k, v in probe.model.state_dict().items()}
    g = [p.grad for p in probe.sam.params]
    norm = torch.linalg.vector_norm(torch.stack([x.norm() for x in g]))
    with torch.no_grad():
        for p, x in zip(probe.sam.params, g, strict=True):
            p.add_(0.3 * x / norm)
    probe.optimizer.zero_grad()
    engine.compute_loss(probe, images, labels).backward()
    expected = [p.grad for p in probe.sam.params]
    assert torch.equal(loss, first)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected, strict=True))
    params = {name for name, _ in run.model.named_parameters()}
    for key, value in run.model.state_dict().items():  # w back; buffers as one plain pass left them
        assert torch.equal(value, weights[key] if key in params else after_first[key]), key
    assert any(not torch.equal(weights[k], after_first[k]) for k in after_first if k not in params)


def test_imbsam_with_every_class_in_the_tail_is_sam_and_with_none_the_plain_gradient(
    fmnist, tmp_path
):
    sam = tiny_run(fmnist, tmp_path / "s", "train.sam=sam")
    imb = tiny_run(fmnist, tmp_path / "i", "train.sam=imbsam", "train.sam_tail_max=1000")
    images, labels = one_batch(sam)
    engine.sam_step(sam, images, labels, lambda loss: None)
    engine.sam_step(imb, images, labels, lambda loss: None)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads(sam), grads(imb), strict=True))

    head_only = tiny_run(fmnist, tmp_path / "h", "train.sam=imbsam", "train.sam_tail_max=3")
    plain = copy.deepcopy(head_only)
    keep = ~head_only.sam_tail[labels]  # a batch without tail images: nothing gets SAM
    images, labels = images[keep], labels[keep]
    engine.sam_step(head_only, images, labels, lambda loss: None)
    plain.optimizer.zero_grad()
    engine.compute_loss(plain, images, labels).backward()
    expected = [p.grad for p in plain.sam.params]
    assert all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(head_only), expected, strict=True)
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.sam=asam", "train.sam='asam': expected one of off, sam, imbsam"),
        ("train.sam_rho=0", "train.sam_rho=0.0: must be > 0"),
        ("train.sam_tail_max=-1", "train.sam_tail_max=-1: must be >= 0"),
    ],
)
def test_bad_sam_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, ["train.sam=sam", override])


def test_sam_is_refused_with_fp16_and_imbsam_without_a_tail_class(fmnist, tmp_path):
    with pytest.raises(ConfigError, match="train.sam=sam with train.amp=fp16"):
        load_config(RECIPE, ["train.sam=sam", "train.amp=fp16"])
    with pytest.raises(UsageError, match="no class has at most train.sam_tail_max=0"):
        tiny_run(fmnist, tmp_path, "train.sam=imbsam", "train.sam_tail_max=0")
