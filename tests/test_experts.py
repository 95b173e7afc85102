"""Multi-expert models (model.experts): the shared trunk, the experts' losses by hand, training
and resuming, test-time aggregation (camlt adapt) reaching eval, predict, cam and export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from reliability_helpers import kill_after_first_checkpoint
from viz_helpers import train_tiny, write_test_pngs

from camlt import adapt, cli, engine
from camlt.checkpoint import CheckpointError, load_checkpoint
from camlt.config import ConfigError
from camlt.heads import HeadOutput
from camlt.losses import ExpertLosses, PriorShiftedCE, build_loss, log_prior
from camlt.models import build_model, create_backbone
from camlt.models.experts import aggregate, split_backbone
from camlt.preflight import check_run
from camlt.trained import evaluate_run, open_run

COUNTS = [40, 20, 8, 4]
EXPERTS = ("model.experts=3", "loss.name=sade")


def model_cfg(**kw):
    base = {"backbone": "resnet8", "head": "linear", "scale": 16.0, "learn_scale": False}
    base.update({"pretrained": None, "finetune": "full", "init": "camlt", "experts": 3, **kw})
    return OmegaConf.create(base)


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("name", ["resnet8", "resnet18", "timm/resnet10t"])
def test_trunk_then_last_stage_is_the_backbone(name):
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    backbone = create_backbone(name, in_channels=3).eval()
    trunk, last = split_backbone(backbone)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(last(trunk(x)), backbone(x), atol=1e-5)
    assert len(trunk.stages()) == len(backbone.stages()) - 1


def test_efficientnet_splits_before_its_last_block_group():
    pytest.importorskip("timm")
    backbone = create_backbone("timm/efficientnet_lite0", in_channels=3).eval()
    trunk, last = split_backbone(backbone)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(last(trunk(x)), backbone(x), atol=1e-5)


@pytest.mark.parametrize("head", ["linear", "normalized", "camc"])
def test_experts_share_the_trunk_and_own_their_last_stage_and_head(head):
    torch.manual_seed(0)
    model = build_model(model_cfg(head=head), 4, 1, COUNTS)
    one = build_model(model_cfg(head=head, experts=1), 4, 1, COUNTS)
    stage = sum(p.numel() for p in model.head.stages[0].parameters())
    heads = sum(p.numel() for p in model.head.heads[0].parameters())
    single = sum(p.numel() for p in one.parameters())
    assert sum(p.numel() for p in model.parameters()) == single + 2 * (stage + heads)
    # experts start apart: each last stage from a backbone of its own random start
    a, b = model.head.stages[0], model.head.stages[1]
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    out = model(torch.randn(5, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0]))
    assert len(out.experts) == 3 and out.logits.shape == (5, 4)


def test_the_joint_prediction_is_the_weighted_mean_of_log_probabilities():
    torch.manual_seed(1)
    logits = [torch.randn(6, 5) for _ in range(3)]
    w = torch.tensor([0.5, 0.3, 0.2])
    by_hand = sum(wi * z.log_softmax(1) for wi, z in zip(w, logits, strict=True))
    assert torch.allclose(aggregate(logits, w), by_hand)
    # the same ranking as the weighted sum of logits (RIDE's, SADE's rule)
    summed = sum(wi * z for wi, z in zip(w, logits, strict=True))
    assert torch.equal(aggregate(logits, w).argmax(1), summed.argmax(1))
    assert torch.allclose(aggregate(logits, w).softmax(1), summed.softmax(1), atol=1e-6)


# ----------------------------------------------------------------------------- the losses
def loss_cfg(name: str, **kw):
    base = {"name": name, "drw_epoch": None, "drw_beta": 0.9999, "posthoc_tau": 0.0}
    return OmegaConf.create({**base, "diversity": 0.0, "diversity_temperature": 1.0, **kw})


def test_balpoe_loss_by_hand():
    z = [torch.tensor([[2.0, 0.0, -1.0, 0.5]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])]
    z.append(torch.tensor([[-1.0, 0.0, 3.0, 0.0]]))
    y = torch.tensor([2])
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    by_hand = 0.0
    for tau, logits in zip((0.0, 1.0, 2.0), z, strict=True):  # taus spread over 3 experts
        shifted = logits.double()[0] + tau * prior.log()
        by_hand += -(shifted[2] - shifted.exp().sum().log()).item()
    loss = build_loss(loss_cfg("balpoe"), COUNTS, experts=3)
    outputs = [HeadOutput(logits) for logits in z]
    assert math.isclose(
        HeadOutput(z[0], experts=outputs).loss(y, loss).item(), by_hand, rel_tol=1e-5
    )


def test_sade_experts_are_forward_uniform_and_backward():
    loss = build_loss(loss_cfg("sade"), COUNTS, experts=3)
    shifts = [m.shift for m in loss.members]
    assert torch.equal(shifts[0], torch.zeros(4))
    assert torch.allclose(shifts[1], log_prior(COUNTS))
    assert torch.allclose(shifts[2], 3 * log_prior(COUNTS))  # lambda 2: (1 + 2) log prior


def test_a_single_loss_trains_every_expert_and_the_diversity_term_by_hand():
    loss = build_loss(loss_cfg("ce", diversity=0.2, diversity_temperature=2.0), COUNTS, experts=2)
    assert isinstance(loss, ExpertLosses) and len(loss.members) == 2
    z = [torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0, 0.0]])]
    y = torch.tensor([0])
    ce = sum(F.cross_entropy(zi, y).item() for zi in z)
    mean = F.softmax((z[0] + z[1]) / 2 / 2.0, dim=1)[0]
    kl = 0.0
    for zi in z:
        p = F.softmax(zi / 2.0, dim=1)[0]
        kl += 4.0 * (mean * (mean.log() - p.log())).sum().item()
    got = loss.experts_loss([HeadOutput(zi) for zi in z], y).item()
    assert math.isclose(got, ce - 0.2 * kl, rel_tol=1e-5)


def test_expert_losses_keep_drw_and_mixed_targets():
    loss = build_loss(loss_cfg("ldam", drw_epoch=1), COUNTS, experts=2)
    loss.set_epoch(1)
    assert all(m.weight is not None for m in loss.members)
    assert isinstance(build_loss(loss_cfg("balpoe"), COUNTS, experts=4).members[1], PriorShiftedCE)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("loss.name=balpoe",), "set model.experts"),
        (("model.experts=2", "loss.name=sade"), "gives 3 experts' strengths"),
        (("model.experts=3", "loss.name=balpoe", "loss.balpoe.taus=[0,1,1]"), "mean must be 1"),
        (("model.experts=3", "train.maxnorm=step", "model.head=linear"), "model.experts=1"),
        (("model.experts=3", "model.finetune=probe"), "model.finetune=full"),
        (("loss.diversity=0.2",), "set model.experts"),
        (("model.experts=9",), "must be 1"),
    ],
)
def test_what_experts_do_not_go_with_is_refused_before_the_run(tiny_cfg, extra, message):
    with pytest.raises(ConfigError, match=message):
        check_run(tiny_cfg(*extra))


# ----------------------------------------------------------------------------- training
def test_an_expert_run_trains_resumes_bit_identically_and_evaluates(
    tiny_cfg, tmp_path, monkeypatch
):
    extra = (*EXPERTS, "model.head=camc", "loss.diversity=0.1")
    full = engine.train(tiny_cfg(*extra, f"train.run_dir={tmp_path / 'full'}"), tmp_path / "full")
    cfg = tiny_cfg(*extra, f"train.run_dir={tmp_path / 'killed'}")
    kill_after_first_checkpoint(cfg, tmp_path / "killed", monkeypatch)
    resumed = engine.train(cfg, tmp_path / "killed", resume=True)
    assert resumed == full and full["expert_weights"] == [0.333333] * 3
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    evaluated, _ = evaluate_run(tmp_path / "full")
    assert evaluated == full


# ----------------------------------------------------------------------------- adapt
@pytest.fixture(scope="module")
def expert_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("experts")
    run = train_tiny(base, "sade", *EXPERTS, "train.epochs=2")
    return base, run


def test_fitted_weights_beat_every_weighting_of_a_grid_on_the_views_agreement():
    torch.manual_seed(0)
    # expert 0 answers each image the same in both views, experts 1 and 2 at random
    steady = torch.randn(1, 1, 64, 5).expand(2, 1, 64, 5)
    noisy = torch.randn(2, 2, 64, 5) * 3
    log_probs = torch.cat([steady, noisy], dim=1).log_softmax(3)
    weights, before, after = adapt.fit_weights(log_probs)
    assert after > before and weights[0] > 0.9
    grid = [(i / 10, j / 10, 1 - (i + j) / 10) for i in range(11) for j in range(11 - i)]
    best = max(float(adapt.stability(log_probs, torch.tensor(w))) for w in grid)
    assert after >= best - 1e-4


def test_adapt_keeps_weights_that_eval_predict_and_export_use(expert_run, capsys):
    base, run = expert_run
    before, _ = evaluate_run(run)
    assert cli.main(["adapt", str(run), "--test"]) == 0
    assert "views' agreement" in capsys.readouterr().out
    saved = json.loads((run / "expert_weights.json").read_text())
    assert saved["fitted_on"]["images"] == "test split" and saved["fitted_on"]["epoch"] == 2
    assert math.isclose(sum(saved["weights"]), 1.0, rel_tol=1e-6)
    after, loaded = evaluate_run(run)
    assert after["expert_weights"] == [round(w, 6) for w in saved["weights"]]
    assert after["expert_weights"] != before["expert_weights"]
    assert torch.allclose(loaded.model.head.expert_weights, torch.tensor(saved["weights"]))
    # export traces the model with its weights: the same answers as the opened run
    ort = pytest.importorskip("onnxruntime")
    from camlt.data.inputs import decode, normalise
    from camlt.export import export

    paths, _ = write_test_pngs(base, 4)
    images = torch.stack([decode(p, loaded.spec) for p in paths])
    export(loaded, base / "experts.onnx", "onnx")
    session = ort.InferenceSession(str(base / "experts.onnx"), providers=["CPUExecutionProvider"])
    x = normalise(images, loaded.spec).float().contiguous().numpy()
    probs = session.run(["probabilities"], {"images": x})[0]
    assert np.abs(probs - loaded.logits(images).softmax(1).numpy()).max() < 1e-4


def test_adapt_on_image_files_and_the_maps_of_experts(expert_run, capsys):
    from camlt.viz import compute_maps

    base, run = expert_run
    paths, _ = write_test_pngs(base, 6)
    assert cli.main(["adapt", str(run), "--images", str(paths[0].parent)]) == 0
    saved = json.loads((run / "expert_weights.json").read_text())
    assert saved["fitted_on"] == {"images": "files", "count": 6, "epoch": 2, "seed": 0}
    loaded = open_run(run, device="cpu")
    from camlt.data.inputs import decode, normalise

    x = normalise(torch.stack([decode(p, loaded.spec) for p in paths]), loaded.spec)
    result = compute_maps(loaded.model, x)
    assert result.maps["raw_cam"].shape == (6, 8, 8)  # resnet8 on 32 px


def test_adapt_refuses_a_single_model_and_a_damaged_weights_file(expert_run, capsys):
    base, run = expert_run
    single = train_tiny(base, "single", "model.head=linear")
    assert cli.main(["adapt", str(single), "--test"]) == 2
    assert "multi-expert" in capsys.readouterr().err
    assert not (single / "expert_weights.json").exists()
    (run / "expert_weights.json").write_text('{"weights": [1, 2]}')
    with pytest.raises(CheckpointError, match="expected 3 finite numbers"):
        open_run(run, device="cpu")
    (run / "expert_weights.json").unlink()
