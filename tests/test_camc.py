"""The CAMC head (docs/camc.md: steps 1-9 and variant=class): shapes, gradients, maps, prototypes, options."""

from __future__ import annotations

import importlib.util
import io
import sys

import pytest
import torch
import torch.nn.functional as nnf
from conftest import ROOT
from reliability_helpers import kill_after_first_checkpoint

from camlt import CAMCHead, build_model
from camlt.checkpoint import load_checkpoint
from camlt.config import load_config
from camlt.heads import NormalizedHead
from camlt.models import LongTailClassifier, create_backbone

RECIPE = ROOT / "configs" / "fmnist_lt_camc.yaml"
MAPS = ("raw_cam", "calibrated_cam", "correlation", "importance")


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's cores are shared; restore the caller's setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fmap(b: int = 4, c: int = 16, h: int = 5, w: int = 6, seed: int = 0) -> torch.Tensor:
    """A non-negative feature map, as after a ReLU."""
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)).relu()


def head(c: int = 16, K: int = 10, **kw) -> CAMCHead:
    """A seeded head: C channels, K classes, CAMC options as keywords."""
    torch.manual_seed(0)
    return CAMCHead(c, K, **kw)


@pytest.mark.parametrize("num_classes", [10, 100, 8142])
@pytest.mark.parametrize("variant", ["section2", "class"])
def test_shapes_for_small_and_large_label_spaces(num_classes, variant):
    h = head(K=num_classes, variant=variant).train()
    F, y = fmap(), torch.tensor([0, 3, 3, num_classes - 1])
    out = h(F, y, return_maps=True)
    assert out.logits.shape == out.aux_logits.shape == (4, num_classes)
    assert out.features.shape == (4, 16) and out.aux_weight == 0.5
    assert {name: tuple(t.shape) for name, t in out.maps.items()} == dict.fromkeys(MAPS, (4, 5, 6))
    assert h.k == min(5, num_classes)
    assert torch.isfinite(out.logits).all()


def test_gradients_reach_backbone_and_classifier():
    torch.manual_seed(0)
    model = LongTailClassifier(create_backbone("resnet8", in_channels=1), CAMCHead(64, 10))
    images, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    out = model(images, y)
    loss = out.loss(y)
    assert torch.allclose(
        loss, nnf.cross_entropy(out.logits, y) + 0.5 * nnf.cross_entropy(out.aux_logits, y)
    )  # the head's rule: CE(z, y) + gamma CE(z0, y), gamma 0.5 by default
    loss.backward()
    assert model.head.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_calibrated_maps_ignore_a_class_weight_norm_raw_maps_do_not():
    h, F = head().eval(), fmap()
    c = torch.tensor([2, 2, 7, 2])
    before = h(F, return_maps=True, map_class=c)
    with torch.no_grad():
        h.classifier.weight[2] *= 7.0
    after = h(F, return_maps=True, map_class=c)
    for name in ("calibrated_cam", "correlation", "importance"):
        torch.testing.assert_close(after.maps[name], before.maps[name])
    torch.testing.assert_close(after.logits, before.logits)  # cosine logits: norm-free too
    rows = c == 2
    torch.testing.assert_close(after.maps["raw_cam"][rows], 7.0 * before.maps["raw_cam"][rows])
    assert not torch.allclose(after.maps["raw_cam"][rows], before.maps["raw_cam"][rows])
    torch.testing.assert_close(after.maps["raw_cam"][~rows], before.maps["raw_cam"][~rows])


def test_raw_cam_and_calibrated_cam_follow_their_definitions():
    h, F = head().eval(), fmap()
    c = torch.tensor([1, 4, 4, 9])
    maps = h(F, return_maps=True, map_class=c).maps
    w = h.classifier.weight.detach()[c]
    raw = torch.einsum("bc,bchw->bhw", w, F)
    cos = torch.einsum("bc,bchw->bhw", nnf.normalize(w, dim=1), nnf.normalize(F, dim=1))
    torch.testing.assert_close(maps["raw_cam"], raw)
    torch.testing.assert_close(maps["calibrated_cam"], cos)


@pytest.mark.parametrize("variant", ["section2", "class"])
def test_keep_length_maps_keep_the_feature_length_and_stay_scale_free(variant):
    h, F = head(variant=variant, keep_length=True).eval(), fmap()
    c = torch.tensor([1, 4, 4, 9])
    maps = h(F, return_maps=True, map_class=c).maps
    w_hat = nnf.normalize(h.classifier.weight.detach()[c], dim=1)
    longest = F.norm(dim=1).flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(
        maps["calibrated_cam"], torch.einsum("bc,bchw->bhw", w_hat, F) / longest
    )
    assert maps["calibrated_cam"].abs().max() <= 1 + 1e-6
    # one image scaled as a whole: the same maps and logits (tau keeps its meaning) ...
    scaled = h(F * 5.0, return_maps=True, map_class=c)
    torch.testing.assert_close(scaled.maps["importance"], maps["importance"])
    torch.testing.assert_close(scaled.logits, h(F).logits)
    # ... but a location's length now counts, where the cosine maps ignore it
    louder = F.clone()
    louder[:, :, 0, 0] *= 3.0
    for keep, expect_change in ((True, True), (False, False)):
        h.keep_length = keep
        base = h(F, return_maps=True, map_class=c).maps["calibrated_cam"][:, 0, 0]
        loud = h(louder, return_maps=True, map_class=c).maps["calibrated_cam"][:, 0, 0]
        assert torch.allclose(base, loud, atol=1e-5) is not expect_change


def test_keep_length_is_a_config_key_and_off_by_default():
    def head_of(overrides: list[str]) -> CAMCHead:
        cfg = load_config(RECIPE, overrides)
        return build_model(cfg.model, 10, 1, [100] * 10).head

    assert head_of(["model.camc.keep_length=true"]).keep_length is True
    assert head_of([]).keep_length is False


@pytest.mark.parametrize("variant", ["section2", "class"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_importance_has_mean_one_and_is_not_uniform(variant, mode):
    h = head(variant=variant).train(mode == "train")
    for map_class in (None, torch.tensor([0, 1, 2, 3])):
        a = h(fmap(), torch.tensor([0, 1, 2, 3]), return_maps=True, map_class=map_class)
        a = a.maps["importance"]
        torch.testing.assert_close(a.mean(dim=(1, 2)), torch.ones(4))
        assert (a >= 0).all() and a.flatten(1).std(1).min() > 0.05


def test_prototypes_move_only_in_training_and_only_for_present_classes():
    h, F = head(K=6, mu=0.9), fmap()
    y = torch.tensor([0, 0, 2, 2])
    assert not h.P_ready
    h.eval()
    first = h(F, y)
    assert not h.P_ready and torch.equal(h.P, torch.zeros(6, 16))  # eval leaves P untouched
    torch.testing.assert_close(h(F, y).logits, first.logits, rtol=0, atol=0)  # deterministic

    h.train()
    w_hat = nnf.normalize(h.classifier.weight.detach(), dim=1)
    out = h(F, y)
    assert h.P_ready
    g = (out.features - F.mean(dim=(2, 3))).detach() / h.alpha  # f = f0 + alpha * g
    g_hat = nnf.normalize(g, dim=1)
    for c in (0, 2):
        mean = g_hat[y == c].mean(0)
        expected = nnf.normalize(0.9 * w_hat[c] + 0.1 * mean, dim=0)
        torch.testing.assert_close(h.P[c], expected)
    for c in (1, 3, 4, 5):
        torch.testing.assert_close(h.P[c], w_hat[c], rtol=0, atol=0)
    torch.testing.assert_close(h.P.norm(dim=1), torch.ones(6))

    h(F)  # training mode without labels: nothing to update
    saved = h.P.clone()
    torch.testing.assert_close(h.P, saved, rtol=0, atol=0)
    h.eval()
    a, b = h(F, y, return_maps=True), h(F, y, return_maps=True)
    torch.testing.assert_close(h.P, saved, rtol=0, atol=0)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert all(torch.equal(a.maps[n], b.maps[n]) for n in MAPS)


def test_alpha_zero_equals_gap_plus_normalized_classifier():
    F = fmap()
    plain = NormalizedHead(16, 10, scale=16.0)
    for alpha, same in ((0.0, True), (1.0, False)):
        h = head(alpha=alpha).eval()
        plain.load_state_dict(
            {k: v for k, v in h.state_dict().items() if k.startswith("classifier.")}
        )
        assert torch.allclose(h(F).logits, plain(F).logits, atol=1e-6) is same


def test_state_dict_restores_prototypes_exactly():
    h = head(mu=0.5).train()
    for seed in range(3):
        h(fmap(seed=seed), torch.tensor([seed, 1, 1, 4]))
    buffer = io.BytesIO()
    torch.save(h.state_dict(), buffer)
    assert {"P", "P_ready", "classifier.weight"} <= set(h.state_dict())
    fresh = CAMCHead(16, 10)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.P_ready and torch.equal(fresh.P, h.P)
    h.eval(), fresh.eval()
    assert torch.equal(fresh(fmap()).logits, h(fmap()).logits)
    unloaded = CAMCHead(16, 10).eval()
    unloaded.classifier.load_state_dict(h.classifier.state_dict())
    assert not torch.allclose(unloaded(fmap()).logits, h(fmap()).logits)  # P matters


def test_use_corr_false_ignores_prototypes_use_corr_true_does_not():
    F, y = fmap(), torch.tensor([0, 1, 2, 3])
    for use_corr in (False, True):
        h = head(use_corr=use_corr).eval()
        before = h(F).logits
        with torch.no_grad():
            h.P.copy_(nnf.normalize(torch.randn(10, 16), dim=1))
            h.P_ready.fill_(True)
        assert torch.allclose(h(F, y).logits, before) is not use_corr


def test_guide_target_uses_labels_in_training_and_prediction_at_test():
    F, y = fmap(), torch.tensor([3, 1, 4, 1])
    target, predicted = head(guide="target"), head(guide="predicted")
    target.train()(F)  # sets P = Ŵ; no labels, no update
    ref = target.eval()(F, return_maps=True, map_class=y)
    out = target.train()(F, y, return_maps=True)  # P is updated after its use
    torch.testing.assert_close(out.maps["importance"], ref.maps["importance"])
    assert not torch.allclose(out.logits, predicted.train()(F, y).logits)
    target.eval(), predicted.eval()
    predicted.load_state_dict(target.state_dict())
    torch.testing.assert_close(target(F, y).logits, predicted(F, y).logits)


def test_guide_balanced_guides_with_the_prior_corrected_prediction():
    counts = [5000, 2000, 800, 300, 120, 50, 20, 8, 3, 1]
    F = fmap(b=8)
    balanced = head(guide="balanced", class_counts=counts, k=1, scale=4.0).eval()
    predicted = head(guide="predicted", k=1, scale=4.0).eval()
    b_out, p_out = balanced(F, return_maps=True), predicted(F, return_maps=True)
    torch.testing.assert_close(b_out.aux_logits, p_out.aux_logits)  # same base prediction
    prior = torch.tensor(counts, dtype=torch.float32)
    top_b = (b_out.aux_logits - (prior / prior.sum()).log()).argmax(1)
    top_p = p_out.aux_logits.argmax(1)
    assert not torch.equal(top_b, top_p)
    for h, top, out in ((balanced, top_b, b_out), (predicted, top_p, p_out)):
        ref = h(F, return_maps=True, map_class=top).maps
        assert all(torch.allclose(out.maps[n], ref[n]) for n in MAPS)
    assert not torch.allclose(b_out.logits, p_out.logits)


def test_class_variant_reinforces_each_class_by_its_own_attention():
    F = fmap()
    h = head(variant="class", lam=0.7).eval()
    out = h(F, return_maps=True)
    s = h.classifier.scale
    for c in range(10):
        maps = h(F, return_maps=True, map_class=torch.full((4,), c)).maps
        boost = (maps["importance"] * maps["calibrated_cam"]).mean(dim=(1, 2))
        torch.testing.assert_close(out.logits[:, c] - out.aux_logits[:, c], s * 0.7 * boost)
    zero = head(variant="class", lam=0.0).eval()
    torch.testing.assert_close(zero(F).logits, zero(F).aux_logits)


def test_class_variant_with_many_classes_reinforces_k_classes_including_the_label():
    h = head(K=100, variant="class", guide="target").train()
    F, y = fmap(), torch.tensor([10, 20, 30, 40])
    out = h(F, y)
    changed = out.logits != out.aux_logits
    assert changed.sum(1).tolist() == [5] * 4
    assert changed[torch.arange(4), y].all()


def test_autocast_keeps_the_head_math_in_float32():
    h = head().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = h(fmap().bfloat16(), torch.tensor([0, 1, 2, 3]), return_maps=True)
    assert out.logits.dtype == out.aux_logits.dtype == torch.float32
    assert out.maps["importance"].dtype == torch.float32 and h.P.dtype == torch.float32


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"use_cam": False, "use_corr": False}, "use_cam and model.camc.use_corr"),
        ({"guide": "balanced"}, "class counts"),
        ({"variant": "other"}, "model.camc.variant"),
        ({"mu": 1.0}, "model.camc.mu"),
    ],
)
def test_bad_options_are_refused_with_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        CAMCHead(16, 10, **options)


def test_timm_cnn_and_torchvision_resnet50_take_the_head():
    cfg = load_config(RECIPE, ["model.backbone=timm/resnet10t"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 10, 3, [100] * 10).eval()
    assert isinstance(model.head, CAMCHead)
    out = model.head(model.backbone(torch.randn(2, 3, 64, 64)), return_maps=True)
    assert out.logits.shape == (2, 10) and out.maps["importance"].shape == (2, 2, 2)

    resnet50 = build_model(load_config(RECIPE, ["model.backbone=resnet50"]).model, 7, 3, [9] * 7)
    assert resnet50.head.P.shape == (7, 2048)
    with torch.no_grad():
        out = resnet50.eval()(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 7) and torch.isfinite(out.logits).all()


def test_engine_trains_camc_and_resume_restores_the_prototypes(tiny_cfg, tmp_path, monkeypatch):
    from camlt import engine

    full_cfg = tiny_cfg("model.head=camc", f"train.run_dir={tmp_path / 'full'}")
    engine.train(full_cfg, tmp_path / "full")
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    assert full["head.P_ready"]
    w_hat = nnf.normalize(full["head.classifier.weight"], dim=1)
    assert not torch.allclose(full["head.P"], w_hat)

    cfg = tiny_cfg("model.head=camc", f"train.run_dir={tmp_path / 'killed'}")
    kill_after_first_checkpoint(cfg, tmp_path / "killed", monkeypatch)
    engine.train(cfg, tmp_path / "killed", resume=True)
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert torch.equal(resumed["head.P"], full["head.P"])
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def load_ablation():
    """benchmarks/ablation.py as a module (it imports its sibling table.py)."""
    path = ROOT / "benchmarks" / "ablation.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("camc_ablation", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_ablation_rows_are_valid_configs():
    module = load_ablation()
    names = [row.name for row in module.ROWS]
    assert len(names) == len(set(names)) and all("/" not in n for n in names)
    for row in module.ROWS:
        cfg = load_config(ROOT / row.config, row.overrides)
        camc = cfg.model.head == "camc"
        assert not camc or cfg.model.scale == module.BEST_S, row.name
    standard = [r for r in module.ROWS if "data.order=standard" in r.overrides]
    assert sum(r.config.endswith("camc.yaml") for r in standard) == 2
    assert {f"model.scale={s}" for s in (4, 8, 16, 32, 64)} <= {
        o for r in module.ROWS for o in r.overrides
    }


def test_ablation_extra_columns_read_the_rarest_classes():
    module = load_ablation()
    entry = {"train_counts": [50, 3, 9, 7, 40], "metrics": {"per_class": [0.9, 0.1, 0.5, 0.3, 1]}}
    assert module.RAREST_COLUMNS["rarest"](entry) == 0.1
    assert module.RAREST_COLUMNS["3 rarest"](entry) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.camc.k=0", "model.camc.k=0: must be a whole number >= 1"),
        ("model.camc.mu=1.0", r"model.camc.mu=1.0: must be in \[0, 1\)"),
        ("model.camc.guide=top", "model.camc.guide='top': expected one of"),
        ("model.camc.alpah=2", "model.camc.alpah: not a setting of camc; expected variant, alpha"),
        ("model.cmac.alpha=2", "model.cmac: not a setting"),
    ],
)
def test_the_heads_settings_are_checked_by_key_before_a_run(override, message):
    from camlt.config import ConfigError
    from camlt.preflight import check_run

    with pytest.raises(ConfigError, match=message):
        check_run(load_config(RECIPE, [override]))


def test_only_the_chosen_heads_settings_are_part_of_the_run():
    from camlt.preflight import check_run

    camc = load_config(RECIPE, ["model.camc.alpha=2"])
    check_run(camc)
    assert camc.model.camc.alpha == 2.0 and camc.model.camc.k == 5  # completed with defaults
    plain = load_config(RECIPE, ["model.head=normalized"])
    check_run(plain)
    assert "camc" not in plain.model  # a CAMC recipe turned plain: its section is left out
