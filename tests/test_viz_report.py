"""CAM maps and overlays, the HTML run report (also in a real browser) and TensorBoard logging."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from viz_helpers import train_tiny, write_test_pngs

from camlt import cli
from camlt.heads import LinearHead, NormalizedHead
from camlt.models import LongTailClassifier
from camlt.report import build_report
from camlt.trained import open_run
from camlt.viz import MAP_NAMES, compute_maps, figure_pixels

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("viz")
    paths, labels = write_test_pngs(base, 3)
    return {
        "normalized": train_tiny(base, "normalized", "model.head=normalized"),
        # the CAMC run also logs to TensorBoard, so its events hold real CAMC maps
        "camc": train_tiny(base, "camc", "model.head=camc", "train.tensorboard=true"),
        "pngs": paths,
        "labels": labels,
    }


class _Body(torch.nn.Module):
    out_channels = 6

    def forward(self, x):
        return x


def test_each_head_s_cam_averages_to_its_logit():
    fmap = torch.randn(4, 6, 5, 5)
    linear = LongTailClassifier(_Body(), LinearHead(6, 3))
    result = compute_maps(linear, fmap)
    logits = linear(fmap).logits
    top = logits.argmax(1)
    cam = result.maps["raw_cam"]
    assert cam.shape == (4, 5, 5) and torch.equal(result.classes, top)
    bias = linear.head.classifier.bias[top]
    # CAM property: the mean of <F_u, w_c> over locations, plus the bias, is the logit z_c
    assert torch.allclose(cam.mean((1, 2)) + bias, logits[torch.arange(4), top], atol=1e-5)
    assert all(result.maps[name] is None for name in MAP_NAMES[1:])
    assert result.base_logits is None  # no guide without CAMC

    normalized = LongTailClassifier(_Body(), NormalizedHead(6, 3))
    wanted = torch.tensor([2, 2, 0, 1])
    cam = compute_maps(normalized, fmap, wanted).maps["raw_cam"]
    # the same property for the normalized classifier: s / |f0| times the mean is the logit
    f0 = fmap.mean((2, 3))
    logit = normalized(fmap).logits[torch.arange(4), wanted]
    scale = normalized.head.classifier.scale
    assert torch.allclose(scale * cam.mean((1, 2)) / f0.norm(dim=1), logit, atol=1e-5)


def test_camc_maps_for_the_requested_class(runs):
    loaded = open_run(runs["camc"], device="cpu")
    from camlt.data.inputs import load_images, normalise

    _, images = load_images(runs["pngs"], loaded.spec)
    batch = normalise(images, loaded.spec)
    wanted = torch.tensor([3, 4, 5])
    result = compute_maps(loaded.model, batch, wanted)
    assert torch.equal(result.classes, wanted)
    for name in MAP_NAMES:
        assert result.maps[name].shape == (3, 8, 8)  # resnet8 on 32x32: an 8x8 feature map
    assert torch.allclose(result.maps["importance"].mean((1, 2)), torch.ones(3), atol=1e-4)
    z0 = loaded.model.head(loaded.model.backbone(batch)).aux_logits
    assert torch.allclose(result.base_logits, z0, atol=1e-5)  # the guide, returned with the maps
    other = compute_maps(loaded.model, batch, torch.tensor([0, 0, 0]))
    assert not torch.allclose(other.maps["calibrated_cam"], result.maps["calibrated_cam"])


def test_cam_writes_one_png_per_image_of_the_expected_size(runs, tmp_path, capsys):
    pngs = [str(p) for p in runs["pngs"][:2]]
    assert cli.main(["cam", str(runs["normalized"]), *pngs, "--out", str(tmp_path)]) == 0
    written = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in written] == ["img00_cam.png", "img01_cam.png"]
    assert Image.open(written[0]).size == figure_pixels(1, cols=2)  # the image and its raw CAM

    capsys.readouterr()
    assert (
        cli.main(["cam", str(runs["camc"]), pngs[0], "--out", str(tmp_path), "--label", "cat"]) == 2
    )
    assert "unknown class 'cat'" in capsys.readouterr().err


def test_cam_with_a_label_adds_the_true_class_row(runs, tmp_path):
    png = str(runs["pngs"][0])
    assert cli.main(["cam", str(runs["camc"]), png, "--out", str(tmp_path), "--label", "coat"]) == 0
    assert Image.open(tmp_path / "img00_cam.png").size == figure_pixels(2)


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    page = build_report(runs["camc"], runs["normalized"], out, device="cpu", cam_images=3)
    return page


def test_report_references_every_figure_it_wrote(report):
    html = report.read_text()
    referenced = set(re.findall(r'<img src="([^"]+)"', html))
    pngs = {p.name for p in report.parent.glob("*.png")}
    assert referenced == pngs
    assert pngs >= {
        "learning_curves.png",
        "per_class_accuracy.png",
        "groups.png",
        "reliability.png",
        "confusion.png",
        "tail_cams.png",
    }
    assert "baseline" in html and "http" not in html.replace("http-equiv", "")  # no external files
    assert all(Image.open(report.parent / name).size[0] > 100 for name in pngs)


def test_report_reuses_its_test_predictions(report, runs, monkeypatch):
    import camlt.report as report_module

    def no_second_evaluation(*args, **kwargs):
        raise AssertionError("the test set was evaluated again")

    monkeypatch.setattr(report_module, "_test_logits", no_second_evaluation)
    data, _ = report_module.load_run_data(runs["camc"], "run", report.parent, "cpu")
    assert len(data.logits) == len(data.labels) == 80  # 8 generated test images per class
    with pytest.raises(AssertionError, match="evaluated again"):  # another checkpoint: not reused
        report_module.load_run_data(runs["normalized"], "run", report.parent, "cpu")


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _loaded_counts(page: Path, profile: Path) -> tuple[int, int]:
    dom = _chromium("--dump-dom", page.as_uri(), profile=profile).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, f"chromium returned no page: {dom[:300]!r}"
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    assert total and loaded, f"the page's load script did not run: {body.group(0)}"
    return int(loaded.group(1)), int(total.group(1))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_a_real_browser(report, tmp_path):
    figures = len(re.findall(r"<img ", report.read_text()))
    assert _loaded_counts(report, tmp_path / "profile") == (figures, figures)

    shot = tmp_path / "report.png"
    _chromium(
        "--hide-scrollbars",
        "--window-size=1300,2400",
        f"--screenshot={shot}",
        report.as_uri(),
        profile=tmp_path / "profile",
    )
    assert Image.open(shot).size == (1300, 2400)

    broken = tmp_path / "broken"  # the check can fail: a missing figure is counted as not loaded
    shutil.copytree(report.parent, broken)
    (broken / "confusion.png").unlink()
    assert _loaded_counts(broken / "index.html", tmp_path / "profile") == (figures - 1, figures)


def test_tensorboard_logs_scalars_and_cam_images(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["camc"] / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "test/overall", "test/tail", "test/ece"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in events.Scalars("test/overall")] == [1]
    image = events.Images(tags["images"][0])[0]
    assert tags["images"] == ["cam/tail_test_images"]
    assert image.width == 5 * 32 and image.height == 8 * 32  # 8 rows of 5 panels, 32x32 each


def test_on_object_lift_is_one_for_a_blind_map_and_inverse_area_on_the_object():
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cam_stats

    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    images[:, :, :, :2] = 255  # the object: a quarter of the image
    share = cam_stats.object_share(images, (4, 4))
    flat = torch.ones(2, 4, 4)
    on_object = torch.zeros(2, 4, 4)
    on_object[:, :, 0] = 1.0
    assert torch.allclose(cam_stats.on_object_lift(flat, share), torch.ones(2))
    assert torch.allclose(cam_stats.on_object_lift(on_object, share), torch.full((2,), 4.0))
    assert torch.allclose(cam_stats.on_object_lift(1 - on_object, share), torch.zeros(2))
