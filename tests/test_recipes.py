"""The strong-recipe levers: MaxNorm, weight balancing's stage 2, mixing and strong augmentation."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, tiny_overrides
from omegaconf import OmegaConf
from reliability_helpers import kill_after_first_checkpoint

from camlt import engine
from camlt.checkpoint import load_checkpoint
from camlt.config import ConfigError, diff, load_config
from camlt.data.augment import STRONG, AugmentSettings, BatchPolicy, parse_augment
from camlt.heads import LinearHead
from camlt.losses import LOSSES, MixedTargets, build_loss
from camlt.mixing import BatchMixer, MixSettings, remix_weights
from camlt.preflight import check_run
from camlt.regularize import MaxNorm, project_rows, rule_threshold

RECIPE = ROOT / "configs" / "fmnist_lt.yaml"
COUNTS = [500, 200, 80, 30, 10]


# ----------------------------------------------------------------------------- MaxNorm
def test_maxnorm_caps_long_rows_and_leaves_short_ones_bit_identical():
    weight = torch.randn(6, 16)
    weight[:3] *= 5  # three long rows
    before = weight.clone()
    threshold = float(before[3:].norm(dim=1).max()) + 0.1
    project_rows(weight, threshold)
    norms = weight.norm(dim=1)
    assert (norms <= threshold * (1 + 1e-6)).all()
    assert torch.equal(weight[3:], before[3:])  # already inside: untouched
    assert torch.allclose(norms[:3], torch.full((3,), threshold))
    # the direction of a projected row is kept
    assert torch.allclose(weight[0] / norms[0], before[0] / before[0].norm(), atol=1e-6)


def test_maxnorm_rule_threshold_and_one_optimiser_step():
    head = LinearHead(8, 4)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0, 5.0])).repeat(1, 2))
    norms = head.classifier.weight.detach().norm(dim=1)
    assert rule_threshold(head.classifier.weight) == pytest.approx(
        float(norms.min() + 0.1 * (norms.max() - norms.min()))
    )
    maxnorm = MaxNorm(head, "step", None)
    maxnorm.start()
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    head(torch.randn(4, 8, 2, 2)).logits.sum().backward()
    opt.step()
    maxnorm.after_step()
    assert (head.classifier.weight.norm(dim=1) <= maxnorm.threshold * (1 + 1e-6)).all()


def checked(path, overrides: list[str]):
    """A config as training takes it: loaded, then checked against the registries."""
    cfg = load_config(path, overrides)
    check_run(cfg)
    return cfg


def test_maxnorm_is_refused_where_it_means_nothing():
    with pytest.raises(ConfigError, match=r"model.head=normalized.*unit length"):
        checked(RECIPE, ["train.maxnorm=step"])
    with pytest.raises(ConfigError, match="model.head=camc"):
        checked(ROOT / "configs" / "fmnist_lt_camc.yaml", ["train.maxnorm=epoch"])
    with pytest.raises(ConfigError, match="stage2.method=lws"):
        checked(ROOT / "configs" / "stage2_lws.yaml", ["model.init_from=x", "train.maxnorm=step"])
    with pytest.raises(ConfigError, match="train.maxnorm_threshold=-1.0: must be positive"):
        load_config(
            RECIPE, ["model.head=linear", "train.maxnorm=step", "train.maxnorm_threshold=-1"]
        )
    with pytest.raises(
        ConfigError, match="train.maxnorm='always': expected one of off, step, epoch"
    ):
        load_config(RECIPE, ["model.head=linear", "train.maxnorm=always"])


# ----------------------------------------------------------------------------- mixed targets
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mixed_targets_with_lambda_one_equal_the_unmixed_loss(name):
    cfg = OmegaConf.structured(load_config(RECIPE).loss)
    cfg.drw_epoch = 0  # class weights on from the start, so the weighted path is tested too
    loss = build_loss(cfg, COUNTS)
    torch.manual_seed(0)
    logits, a, b = torch.randn(12, 5), torch.randint(0, 5, (12,)), torch.randint(0, 5, (12,))
    plain = loss(logits, a)
    assert torch.equal(loss(logits, MixedTargets(a, b, torch.ones(12))), plain)
    assert torch.equal(loss(logits, MixedTargets(b, a, torch.zeros(12))), plain)
    half = loss(logits, MixedTargets(a, b, torch.full((12,), 0.5)))
    assert torch.isfinite(half) and not torch.equal(half, plain)


def test_remix_moves_the_label_to_the_rarer_class():
    counts = torch.tensor([300, 100, 40, 10])
    a, b = torch.tensor([0, 0, 3, 3, 1, 1]), torch.tensor([3, 3, 0, 0, 2, 0])
    # lam = 0.3: a[i]'s share of the image; ratios n_a / n_b: 30, 30, 1/30, 1/30, 2.5, 1/3
    w = remix_weights(0.3, a, b, counts, kappa=3.0, tau=0.5)
    # 0 vs 3: frequent a, l < tau -> wholly b's; 3 vs 0: rare a but 1 - l = 0.7 >= tau -> l
    # 1 vs 2: ratio 2.5 < kappa -> l; 1 vs 0: ratio 1/3 <= 1/kappa but 1 - l >= tau -> l
    assert w.tolist() == pytest.approx([0.0, 0.0, 0.3, 0.3, 0.3, 0.3])
    w = remix_weights(0.8, a, b, counts, kappa=3.0, tau=0.5)
    # lam = 0.8: 0 vs 3: l >= tau -> l; 3 vs 0: 1 - l = 0.2 < tau and rare a -> wholly a's
    assert w.tolist() == pytest.approx([0.8, 0.8, 1.0, 1.0, 0.8, 1.0])


def test_cutmix_label_weight_is_the_kept_area():
    mixer = BatchMixer(MixSettings("cutmix", alpha=1.0), COUNTS, seed=3)
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 20, 20).clone()
    labels = torch.arange(8) % 5
    for step in range(5):
        mixed, targets = mixer(images, labels, epoch=0, step=step)
        kept = (mixed == images).float().mean(dim=(1, 2, 3))
        moved = targets.a != targets.b  # pasted from another image with another label
        same_source = (mixed == images).all(dim=(1, 2, 3)) & ~moved
        for i in range(8):
            if not same_source[i] and targets.lam[i] < 1:
                assert targets.lam[i].item() == pytest.approx(kept[i].item())


def test_mixup_mixes_images_and_labels_by_one_factor():
    mixer = BatchMixer(MixSettings("mixup", alpha=0.4), COUNTS, seed=0)
    images, labels = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, t = mixer(images, labels, epoch=2, step=7)
    lam = float(t.lam[0])
    assert torch.all(t.lam == lam) and 0 <= lam <= 1 and torch.equal(t.a, labels)
    partner = [
        int(
            torch.argmin(
                (images - (mixed[i] - lam * images[i]) / (1 - lam)).abs().flatten(1).sum(1)
            )
        )
        for i in range(6)
    ]
    assert torch.equal(t.b, labels[partner])
    again = mixer(images, labels, epoch=2, step=7)
    assert torch.equal(again[0], mixed) and torch.equal(again[1].lam, t.lam)  # (seed, epoch, step)


def test_mixing_stops_at_its_epoch():
    mixer = BatchMixer(MixSettings("mixup", stop_epoch=3), COUNTS, seed=0)
    images, labels = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])
    assert isinstance(mixer(images, labels, 2, 0)[1], MixedTargets)
    out, plain = mixer(images, labels, 3, 0)
    assert out is images and plain is labels


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.mix=blend", "expected one of none, mixup, cutmix, remix"),
        ("train.mix_alpha=-0.5", "train.mix_alpha=-0.5: must be > 0"),
        ("train.mix_prob=1.5", r"train.mix_prob=1.5: must be in \[0, 1\]"),
        ("train.remix.kappa=0.5", "train.remix.kappa=0.5: must be a number >= 1"),
        ("data.erasing_prob=-0.1", r"data.erasing_prob=-0.1: must be in \[0, 1\]"),
        ("data.randaugment_magnitude=31", r"data.randaugment_magnitude=31: must be in \[0, 30\]"),
        ("data.augment=crop_flip+jitter", "unknown step 'jitter'.*autoaugment, randaugment"),
        ("data.augment=none+cutout", "'none' cannot be combined"),
        ("train.mix_stop_epoch=-1", "0-based epoch"),
    ],
)
def test_bad_lever_settings_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError, match=message):
        checked(RECIPE, [override])


# ----------------------------------------------------------------------------- augmentation
def test_legacy_boolean_augment_still_reads():
    assert load_config(RECIPE, ["data.augment=false"]).data.augment == "none"
    assert load_config(RECIPE, ["data.augment=true"]).data.augment == "crop_flip"
    assert parse_augment("crop_flip+autoaugment+cutout") == ("crop_flip", "autoaugment", "cutout")


@pytest.mark.parametrize("step", STRONG)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_augmentation_keeps_shape_dtype_and_range_and_is_seeded(step, channels):
    policy = BatchPolicy(AugmentSettings((step,), cutout_size=6), image_side=16)
    batch = torch.randint(1, 255, (12, channels, 16, 16), dtype=torch.uint8)
    before = torch.get_rng_state()
    out = policy(batch, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    assert out.shape == batch.shape and out.dtype == torch.uint8
    again = policy(batch, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)  # a function of the generator, so of (seed, epoch, batch)
    other = policy(batch, torch.Generator().manual_seed(6))
    assert not torch.equal(out, other) or step == "erasing"
    if step == "cutout":  # one 6 x 6 square of zeros per image, wholly inside
        assert ((out == 0).flatten(1).sum(1) == 36 * channels).all()


def test_images_of_a_batch_get_their_own_draws():
    policy = BatchPolicy(AugmentSettings(("cutout",), cutout_size=4), image_side=16)
    batch = torch.full((16, 1, 16, 16), 200, dtype=torch.uint8)
    out = policy(batch, torch.Generator().manual_seed(0))
    boxes = {tuple((out[i, 0] == 0).nonzero()[0].tolist()) for i in range(16)}
    assert len(boxes) > 4


# ----------------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def fmnist(fmnist_root):
    return fmnist_root


LEVERS = [
    "train.mix=remix data.augment=crop_flip+autoaugment+cutout train.maxnorm=step",
    "train.mix=cutmix data.augment=crop_flip+randaugment train.maxnorm=epoch",
    "train.sam=sam train.mix=mixup train.maxnorm=step",
    "train.sam=imbsam train.sam_tail_max=15 data.augment=crop_flip+trivialaugment train.maxnorm=step",
]


@pytest.mark.parametrize("levers", LEVERS)
def test_a_resumed_run_with_every_lever_equals_an_uninterrupted_one(
    fmnist, tmp_path, levers, monkeypatch
):
    def cfg(name: str):
        extra = ["model.head=linear", "loss.name=balanced_softmax", *levers.split()]
        return load_config(RECIPE, tiny_overrides(fmnist, tmp_path / name) + extra)

    full = engine.train(cfg("full"), tmp_path / "full")
    kill_after_first_checkpoint(cfg("part"), tmp_path / "part", monkeypatch)
    resumed = engine.train(cfg("part"), tmp_path / "part", resume=True)
    assert resumed == full
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["maxnorm"] == b["maxnorm"]
    norms = a["model"]["head.classifier.weight"].norm(dim=1)
    assert (norms <= a["maxnorm"]["threshold"] * (1 + 1e-5)).all()


def test_weight_balancing_stage2_leaves_the_backbone_bit_identical(fmnist, tmp_path):
    s1 = tmp_path / "s1"
    engine.train(load_config(RECIPE, tiny_overrides(fmnist, s1) + ["model.head=linear"]), s1)
    cfg = load_config(
        ROOT / "configs" / "stage2_wb.yaml",
        tiny_overrides(fmnist, tmp_path / "wb") + [f"model.init_from={s1}"],
    )
    engine.train(cfg, tmp_path / "wb")
    before = load_checkpoint(s1 / "checkpoint.pt")["model"]
    after = load_checkpoint(tmp_path / "wb" / "checkpoint.pt")
    body = {k: v for k, v in before.items() if k.startswith("backbone.")}
    assert body and all(
        torch.equal(v, after["model"][k.replace("backbone.", "backbone.body.", 1)])
        for k, v in body.items()
    )
    w0, w1 = before["head.classifier.weight"], after["model"]["head.classifier.weight"]
    assert not torch.equal(w0, w1)  # the stage-1 classifier was trained further
    norms0 = w0.norm(dim=1)
    threshold = after["maxnorm"]["threshold"]
    assert threshold == pytest.approx(float(norms0.min() + 0.1 * (norms0.max() - norms0.min())))
    assert (w1.norm(dim=1) <= threshold * (1 + 1e-5)).all()


# ----------------------------------------------------------------------------- the study
def load_recipes():
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("recipes")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_every_row_of_the_recipes_table_loads_and_changes_one_lever():
    recipes = load_recipes()
    names = [row.name for row in recipes.ROWS]
    assert len(set(names)) == len(names)
    assert set(recipes.FIRST) <= set(names)
    base = load_config(RECIPE, ["model.head=linear"])
    best = load_config(RECIPE, recipes.BEST)
    for row in recipes.ROWS:
        if row.name.startswith(recipes.on_best_row("")):  # one lever on the best recipe
            cfg = load_config(ROOT / row.config, row.overrides)
            changed = {d.split(":")[0] for d in diff(best, cfg)}
            assert len(changed) == 1, (row.name, changed)
            continue
        if row.name == recipes.CEILING_BEST:  # the best recipe's head on the balanced set
            cfg = load_config(ROOT / row.config, row.overrides)
            changed = {d.split(":")[0] for d in diff(best, cfg)}
            assert cfg.data.balanced and changed == {"data.balanced", "loss.name"}, changed
            continue
        if row.name.startswith(("standard:", "60 epochs:")):  # the finalists elsewhere
            cfg = load_config(ROOT / row.config, row.overrides)
            assert cfg.data.order == "standard" or cfg.train.epochs == 60, row.name
            continue
        extra = ["model.init_from=runs/stage1"] if row.depends else []
        cfg = load_config(ROOT / row.config, row.overrides + extra)
        assert cfg.data.name == "fmnist_lt" and cfg.data.order == "hard"
        assert cfg.data.imbalance == 100 and cfg.model.backbone == "resnet32"
        if row.depends:  # weight balancing's stage 2 on a stage-1 row of this table
            assert cfg.stage2.method == "wb" and cfg.train.maxnorm == "step"
            assert row.depends in names
            continue
        assert cfg.train.epochs == 30 and cfg.model.head == "linear"
        changed = {d.split(":")[0] for d in diff(base, cfg)}
        assert len(changed - {"data.balanced"}) <= 1, (row.name, changed)


@pytest.mark.parametrize("name", ["fmnist_lt", "cifar10_lt", "cifar100_lt"])
def test_the_strong_recipes_are_their_dataset_recipe_with_the_best_measured_changes(name):
    strong = load_config(ROOT / "configs" / f"{name}_strong.yaml")
    plain = load_config(ROOT / "configs" / f"{name}.yaml")
    assert {d.split(":")[0] for d in diff(plain, strong)} == {"loss.name"}
    assert strong.loss.name == "balanced_softmax" and strong.model.head == "normalized"


def test_a_newly_registered_mix_or_augmentation_step_is_valid_at_once(monkeypatch):
    """The names are the registries' own: config.py keeps no second list."""
    from camlt.data.augment import POLICIES
    from camlt.mixing import MIX_FUNCTIONS

    with pytest.raises(ConfigError, match="train.mix='blend'"):
        checked(RECIPE, ["train.mix=blend", "data.augment=crop_flip+posterize"])
    monkeypatch.setitem(MIX_FUNCTIONS._entries, "blend", lambda *a: None)
    with pytest.raises(ConfigError, match="unknown step 'posterize'"):
        checked(RECIPE, ["train.mix=blend", "data.augment=crop_flip+posterize"])
    monkeypatch.setitem(POLICIES._entries, "posterize", lambda v2, st, side: None)
    checked(RECIPE, ["train.mix=blend", "data.augment=crop_flip+posterize"])


def test_remix_settings_sit_under_its_name_and_the_old_flat_ones_still_read():
    cfg = checked(RECIPE, ["train.mix=remix", "train.remix_kappa=2"])  # the old spelling
    assert cfg.train.remix == {"kappa": 2.0, "tau": 0.5} and "remix_kappa" not in cfg.train
    plain = checked(RECIPE, ["train.mix=mixup", "train.remix.kappa=2"])
    assert "remix" not in plain.train  # another mix's settings are not part of the run
    with pytest.raises(ConfigError, match="train.epoch: not a setting; expected epochs"):
        checked(RECIPE, ["train.epoch=3"])  # a typo in an open section, refused before a run
