"""Each loss against values computed by hand (scalar math, no torch loss code) on one small batch."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from camlt.config import ConfigError, from_yaml_file, schema
from camlt.heads import HeadOutput
from camlt.losses import (
    EXPERT_LOSSES,
    LOSSES,
    build_loss,
    effective_number_weights,
    log_prior,
    posthoc_adjust,
)
from camlt.preflight import check_run
from camlt.trained import evaluate_run

Z = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
Y = [0, 2]
COUNTS = [100, 10, 1]


COMMON = {"drw_epoch", "drw_beta", "posthoc_tau"}  # what applies to any loss


def loss_cfg(name: str, **values):
    """A loss section as the config holds it: the common keys, and the rest under the loss's
    own name (``loss.focal.gamma``)."""
    section = {"name": name, **{k: v for k, v in values.items() if k in COMMON}}
    own = {k: v for k, v in values.items() if k not in COMMON}
    if own:
        section[name] = own
    return OmegaConf.merge(schema().loss, section)


def compute(name: str, counts=COUNTS, epoch: int | None = None, **values) -> float:
    loss = build_loss(loss_cfg(name, **values), counts)
    if epoch is not None:
        loss.set_epoch(epoch)
    return loss(torch.tensor(Z), torch.tensor(Y)).item()


def ce_by_hand(row, target, shift=(0.0, 0.0, 0.0)) -> float:
    z = [v + s for v, s in zip(row, shift, strict=True)]
    return math.log(sum(math.exp(v) for v in z)) - z[target]


def test_cross_entropy_matches_a_literal_value():
    # log(e^2 + 1 + e^-1) - 2 = 0.169846 and log(e^.5 + e^1.5 + 1) = 1.964369
    assert compute("ce") == pytest.approx((0.169846 + 1.964369) / 2, abs=1e-5)


def test_focal_loss_by_hand():
    expected = []
    for row, t in zip(Z, Y, strict=True):
        ce = ce_by_hand(row, t)
        expected.append((1 - math.exp(-ce)) ** 2 * ce)
    assert compute("focal", gamma=2.0) == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert compute("focal", gamma=0.0) == pytest.approx(compute("ce"), rel=1e-6)


def test_class_balanced_focal_by_hand():
    beta, gamma = 0.9, 1.0
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    w = [r * 3 / sum(raw) for r in raw]
    terms = []
    for row, t in zip(Z, Y, strict=True):
        ce = ce_by_hand(row, t)
        terms.append(w[t] * (1 - math.exp(-ce)) ** gamma * ce)
    got = compute("cb", beta=beta, gamma=gamma, base="focal")
    assert got == pytest.approx(sum(terms) / 2, rel=1e-5)  # mean(w_y * l), Cui et al.
    ce_terms = [w[t] * ce_by_hand(row, t) for row, t in zip(Z, Y, strict=True)]
    assert compute("cb", beta=beta, base="ce") == pytest.approx(sum(ce_terms) / 2, rel=1e-5)


def test_effective_number_weights_limits():
    assert torch.allclose(effective_number_weights(COUNTS, 0.0), torch.ones(3))
    inverse = torch.tensor([1 / 100, 1 / 10, 1.0])
    expected = inverse * 3 / inverse.sum()
    assert torch.allclose(effective_number_weights(COUNTS, 1 - 1e-9), expected, rtol=1e-3)


def test_ldam_by_hand():
    scale, max_margin = 2.0, 0.5
    margins = [n**-0.25 for n in COUNTS]
    margins = [m * max_margin / max(margins) for m in margins]  # [0.158, 0.281, 0.5]
    expected = []
    for row, t in zip(Z, Y, strict=True):
        shift = [-scale * margins[t] if c == t else 0.0 for c in range(3)]
        expected.append(ce_by_hand(row, t, shift))
    got = compute("ldam", scale=scale, max_margin=max_margin)
    assert got == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert compute("ldam", max_margin=0.0) == pytest.approx(compute("ce"), rel=1e-6)


def checked(cfg):
    check_run(cfg)  # what training does first: the loss's settings checked and completed
    return cfg


def test_ldam_scale_is_the_heads_own_by_default(tiny_cfg):
    ldam = ("model.scale=30", "loss.name=ldam")
    assert checked(tiny_cfg(*ldam)).loss.ldam == {"max_margin": 0.5, "scale": 30.0}
    assert checked(tiny_cfg(*ldam, "model.head=linear")).loss.ldam.scale == 1.0  # not s
    assert checked(tiny_cfg(*ldam, "loss.ldam.scale=1")).loss.ldam.scale == 1.0


def test_deferred_reweighting_switches_on_at_its_epoch():
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    w = [r * 3 / sum(raw) for r in raw]
    ce = [ce_by_hand(row, t) for row, t in zip(Z, Y, strict=True)]
    weighted = (w[0] * ce[0] + w[2] * ce[1]) / (w[0] + w[2])  # sum w l / sum w, Cao et al.
    for name, extra in (("ce", {}), ("ldam", {"max_margin": 0.0})):
        before = compute(name, epoch=1, drw_epoch=2, drw_beta=beta, **extra)
        after = compute(name, epoch=2, drw_epoch=2, drw_beta=beta, **extra)
        assert before == pytest.approx(sum(ce) / 2, rel=1e-5)
        assert after == pytest.approx(weighted, rel=1e-5)


def test_balanced_softmax_and_logit_adjustment_by_hand():
    prior = [n / sum(COUNTS) for n in COUNTS]
    for name, tau in (("balanced_softmax", 1.0), ("logit_adjust", 1.0), ("logit_adjust", 0.5)):
        shift = [tau * math.log(p) for p in prior]
        expected = sum(ce_by_hand(row, t, shift) for row, t in zip(Z, Y, strict=True)) / 2
        assert compute(name, **({"tau": tau} if name == "logit_adjust" else {})) == pytest.approx(
            expected, rel=1e-5
        )


def test_balanced_softmax_is_the_logit_adjusted_loss_at_tau_one():
    """Why the baselines table has one row for both: the same loss, so the same training."""
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(16) % 5
    balanced = build_loss(loss_cfg("balanced_softmax"), COUNTS + [5, 5])
    adjusted = build_loss(loss_cfg("logit_adjust", tau=1.0), COUNTS + [5, 5])
    assert torch.equal(balanced(logits, targets), adjusted(logits, targets))


@pytest.mark.parametrize("name", ["balanced_softmax", "logit_adjust"])
def test_prior_losses_equal_cross_entropy_for_a_uniform_prior(name):
    logits, targets = (
        torch.randn(32, 5, generator=torch.Generator().manual_seed(0)),
        torch.arange(32) % 5,
    )
    loss = build_loss(loss_cfg(name, **({"tau": 2.0} if name == "logit_adjust" else {})), [7] * 5)
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(loss(logits, targets), expected, atol=1e-6)
    assert not torch.allclose(
        build_loss(loss_cfg(name), COUNTS + [5, 5])(logits, targets), expected
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_computes_in_float32(name):
    z = torch.tensor(Z, dtype=torch.bfloat16)
    if name in EXPERT_LOSSES:  # a loss of three experts' outputs
        loss = build_loss(loss_cfg(name=name), COUNTS, experts=3)
        value = loss.experts_loss([HeadOutput(z)] * 3, torch.tensor(Y))
    else:
        value = build_loss(loss_cfg(name=name), COUNTS)(z, torch.tensor(Y))
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_posthoc_adjustment_subtracts_tau_log_prior():
    logits = torch.tensor(Z)
    assert posthoc_adjust(logits, COUNTS, 0.0) is logits
    prior = torch.tensor([n / 111 for n in COUNTS]).log()
    assert torch.allclose(posthoc_adjust(logits, COUNTS, 0.5), logits - 0.5 * prior)
    assert torch.allclose(log_prior([2, 2]), torch.tensor([math.log(0.5)] * 2))


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(
        ValueError, match="loss.name='hinge'.*ce, focal, cb, ldam, balanced_softmax"
    ):
        build_loss(loss_cfg("hinge"), COUNTS)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.name=cb", "loss.cb.base=l2"], "loss.cb.base='l2': expected one of ce, focal"),
        (["loss.name=cb", "loss.cb.beta=1.0"], r"loss.cb.beta=1.0: must be a number in \[0, 1\)"),
        (["loss.name=cb", "loss.cb_beta=1.0"], r"loss.cb.beta=1.0"),  # the old flat key, mapped
        (
            ["loss.name=focal", "loss.focal.gama=2"],
            "loss.focal.gama: not a setting of focal; expected gamma",
        ),
        (["loss.focal.gamma=-1"], "loss.focal.gamma=-1: must be a number >= 0"),  # any section
        (["loss.hinge.margin=1"], "loss.hinge: not a setting"),
        (["loss.focal=2"], "loss.focal=2: a section of settings"),
        (["loss.name=ce", "loss.ce.x=1"], "loss.ce: not a setting"),
    ],
)
def test_bad_loss_settings_are_refused_by_key(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_run(tiny_cfg(*overrides))


def test_drw_epoch_is_checked_with_the_config(tiny_cfg):
    with pytest.raises(ConfigError, match="drw_epoch"):
        tiny_cfg("loss.drw_epoch=-1")


def test_posthoc_tau_changes_evaluation_only(tiny_cfg, tmp_path):
    from camlt import engine

    plain = engine.train(
        tiny_cfg("train.epochs=1", f"train.run_dir={tmp_path / 'a'}"), tmp_path / "a"
    )
    cfg = tiny_cfg("train.epochs=1", "loss.posthoc_tau=3", f"train.run_dir={tmp_path / 'b'}")
    adjusted = engine.train(cfg, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same training
    assert adjusted["per_class"] != plain["per_class"]  # different test-time predictions
    assert evaluate_run(tmp_path / "b")[0] == adjusted


def test_load_config_accepts_every_loss(tiny_cfg):
    for name in LOSSES:
        assert tiny_cfg(f"loss.name={name}").loss.name == name


# The loss section as camlt wrote it before each loss held its settings under its name.
FLAT = {
    "focal_gamma": 2.0,
    "cb_beta": 0.9999,
    "cb_base": "focal",
    "ldam_max_margin": 0.5,
    "ldam_scale": 16.0,
    "la_tau": 1.0,
}


def test_a_run_written_with_the_flat_loss_keys_still_opens_and_resumes(tiny_cfg, tmp_path):
    """Its config.yaml and the config inside its checkpoint rewritten in the old form: eval
    opens it, and train resumes it, reading its focal_gamma as loss.focal.gamma."""
    import yaml

    from camlt import engine
    from camlt.checkpoint import load_checkpoint, save_checkpoint

    cfg = tiny_cfg("loss.name=focal", "loss.focal.gamma=2", "train.epochs=1")
    engine.train(cfg, tmp_path / "run")
    run = tmp_path / "run"

    def old_form(text: str) -> str:
        tree = yaml.safe_load(text)
        tree["loss"] = {k: v for k, v in tree["loss"].items() if k != "focal"} | FLAT
        return yaml.safe_dump(tree)

    (run / "config.yaml").write_text(old_form((run / "config.yaml").read_text()))
    state = load_checkpoint(run / "checkpoint.pt")
    state["config"] = old_form(state["config"])
    save_checkpoint(run / "checkpoint.pt", state)
    before = evaluate_run(run, device="cpu")[0]["overall"]
    assert engine.train(from_yaml_file(run / "config.yaml"), run, resume=True)["overall"] == before
    assert from_yaml_file(run / "config.yaml").loss.focal == {"gamma": 2.0}


def test_a_new_loss_is_a_class_an_entry_and_its_settings(tiny_cfg, monkeypatch):
    """The recipe of docs/baselines.md, "Adding a loss": nothing outside losses.py changes."""
    from dataclasses import dataclass

    from camlt.losses import CrossEntropy

    @dataclass
    class MySettings:
        t: float = 1.0

    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))
    monkeypatch.setattr(LOSSES, "_settings", dict(LOSSES._settings))
    LOSSES.add("mine", lambda st, cfg, counts: CrossEntropy(), MySettings)
    cfg = checked(tiny_cfg("loss.name=mine", "loss.mine.t=2"))
    assert cfg.loss.mine == {"t": 2.0}
    assert isinstance(build_loss(cfg.loss, COUNTS), CrossEntropy)
    with pytest.raises(ConfigError, match="loss.mine.u: not a setting of mine; expected t"):
        checked(tiny_cfg("loss.name=mine", "loss.mine.u=2"))
