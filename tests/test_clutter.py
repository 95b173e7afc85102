"""The cluttered benchmark: a fixed, machine-independent picture per (split seed, split, index),
the object's box, the localisation measure, and maps with boxes in ``camlt cam`` and the report."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_overrides
from matplotlib.patches import Rectangle
from PIL import Image
from viz_helpers import data_root, train_tiny

from camlt import cli
from camlt.config import ConfigError, load_config
from camlt.data import build_sets
from camlt.data.clutter import CANVAS, ClutterSpec, render_split
from camlt.data.sources import FMNIST_SYSTEM_DIR
from camlt.errors import UsageError
from camlt.localisation import localise_test_set
from camlt.metrics import box_share, uniform_share
from camlt.report import build_report
from camlt.trained import open_run
from camlt.viz import cam_figure, cam_pages


def sources(n: int = 40) -> np.ndarray:
    """Garment-like 28 x 28 images made by arithmetic alone: the same on every numpy."""
    i = np.arange(n)[:, None, None]
    y, x = (g[None] for g in np.mgrid[:28, :28])
    blob = ((y - 14) ** 2 + (x - 14) ** 2 < 100 + 3 * (i % 7)).astype(np.int64)
    return (blob * (60 + (i * 37 + y * 5 + x * 3) % 190)).astype(np.uint8)


def test_the_same_seed_gives_the_same_bytes_and_another_index_another_picture():
    src = sources()
    a, boxes_a = render_split(src, np.arange(10), 0, "train", ClutterSpec())
    b, boxes_b = render_split(src, np.arange(10), 0, "train", ClutterSpec())
    assert a.tobytes() == b.tobytes() and np.array_equal(boxes_a, boxes_b)
    assert a.shape == (10, 1, CANVAS, CANVAS) and a.dtype == np.uint8
    assert len({img.tobytes() for img in a}) == 10  # every index its own picture
    other_seed, _ = render_split(src, np.arange(10), 1, "train", ClutterSpec())
    other_split, _ = render_split(src, np.arange(10), 0, "test", ClutterSpec())
    assert not np.array_equal(a, other_seed) and not np.array_equal(a, other_split)
    # an image's picture does not depend on which other images are drawn with it
    some, some_boxes = render_split(src, np.array([7, 2]), 0, "train", ClutterSpec())
    assert np.array_equal(some, a[[7, 2]]) and np.array_equal(some_boxes, boxes_a[[7, 2]])


def test_the_generated_images_are_pinned():
    """A change of the draws or the resampling changes every cluttered data set: it must be seen."""
    images, boxes = render_split(sources(), np.arange(40), 3, "test", ClutterSpec())
    digest = hashlib.sha256(images.tobytes() + boxes.tobytes()).hexdigest()
    assert digest == "0723e85482ce6065d714d00308bcd67b7638081236b232a0f459d1310fa276e4"


def test_the_box_holds_the_whole_object_inside_the_canvas():
    src = sources()
    spec = ClutterSpec(fragments=0, min_size=16, max_size=24)  # no clutter: only the object
    images, boxes = render_split(src, np.arange(40), 0, "train", spec)
    sides = boxes[:, 2] - boxes[:, 0]
    assert np.array_equal(sides, boxes[:, 3] - boxes[:, 1])
    assert sides.min() >= 16 and sides.max() <= 24 and len(set(sides.tolist())) > 3
    assert boxes[:, :2].min() >= 0 and boxes[:, 2:].max() <= CANVAS
    for image, (x0, y0, x1, y1) in zip(images[:, 0], boxes, strict=True):
        outside = image.copy()
        outside[y0:y1, x0:x1] = 0
        assert image[y0:y1, x0:x1].any() and not outside.any()
        # the garment is the source shrunk with Pillow's antialiased resampling
    first = np.asarray(Image.fromarray(src[0]).resize((sides[0],) * 2, Image.BILINEAR))
    x0, y0, x1, y1 = boxes[0]
    assert np.array_equal(images[0, 0, y0:y1, x0:x1], first)


def test_fragments_are_pasted_by_maximum_from_other_images():
    src = np.zeros((3, 28, 28), dtype=np.uint8)
    src[1] = 200  # the only image that can give clutter to image 0 besides image 2 (black)
    images, _ = render_split(src, np.array([0]), 0, "train", ClutterSpec(fragments=16))
    assert set(np.unique(images)) <= {0, 200} and (images == 200).any()  # own garment is black


def test_localisation_of_a_box_map_is_one_and_of_a_uniform_map_the_box_share():
    boxes = torch.tensor([[4, 8, 20, 24], [0, 0, 32, 16]])
    size = (32, 32)
    inside = torch.zeros(2, 32, 32)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        inside[i, y0:y1, x0:x1] = 1
    assert torch.allclose(box_share(inside, boxes, size), torch.ones(2))
    uniform = torch.full((2, 8, 8), 0.3)  # a feature-map-sized map, upsampled to the canvas
    share = uniform_share(boxes, size)
    assert torch.allclose(share, torch.tensor([256 / 1024, 512 / 1024]))
    assert torch.allclose(box_share(uniform, boxes, size), share)
    negative = -inside  # no positive mass: it points nowhere, and scores the uniform share
    assert torch.allclose(box_share(negative, boxes, size), share)
    outside = 1 - inside
    assert torch.allclose(box_share(outside, boxes, size), torch.zeros(2))


def clutter_config(base, *extra: str):
    overrides = tiny_overrides(data_root(base), base / "run") + list(extra)
    return load_config(ROOT / "configs" / "fmnist_lt_clutter.yaml", overrides)


@pytest.mark.parametrize("order", ["hard", "standard"])
@pytest.mark.parametrize("balanced", [False, True])
def test_counts_and_labels_are_fashion_mnist_lt_s(tmp_path, order, balanced):
    extra = [f"data.order={order}", f"data.balanced={balanced}"]
    plain = build_sets(clutter_config(tmp_path, *extra, "data.name=fmnist_lt"))
    cluttered = build_sets(clutter_config(tmp_path, *extra))
    for a, b in ((plain.train, cluttered.train), (plain.test, cluttered.test)):
        assert torch.equal(a.labels, b.labels) and a.images.shape == b.images.shape
        assert not torch.equal(a.images, b.images)
    assert plain.train.boxes is None and cluttered.test.boxes.shape == (len(plain.test), 4)
    assert cluttered.train.mean != plain.train.mean  # the cluttered set's own statistics


def test_clutter_options_out_of_range_name_the_key_and_the_range(tmp_path):
    for bad, message in (
        ("data.clutter.fragment_size=40", r"data.clutter.fragment_size=40: must be in \[1, 28\]"),
        ("data.clutter.min_size=0", r"data.clutter.min_size=0: must be in \[1, 28\]"),
        ("data.clutter.max_size=29", r"data.clutter.max_size=29: must be in \[1, 28\]"),
        ("data.clutter.fragments=-1", r"data.clutter.fragments=-1: must be in \[0, 16\]"),
    ):
        with pytest.raises(ConfigError, match=message):
            clutter_config(tmp_path, bad)
    with pytest.raises(ConfigError, match="min_size=20 is above data.clutter.max_size=18"):
        clutter_config(tmp_path, "data.clutter.min_size=20", "data.clutter.max_size=18")


@pytest.fixture(scope="module")
def clutter_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("clutter")
    return train_tiny(base, "camc", "data.name=fmnist_lt_clutter", "model.head=camc")


def test_every_map_of_a_trained_run_is_localised_against_its_uniform_baseline(clutter_run):
    loaded = open_run(clutter_run, device="cpu")
    test = build_sets(loaded.cfg, verbose=False).test
    shares = localise_test_set(loaded, test, batch_size=7)
    assert set(shares) == {"raw_cam", "calibrated_cam", "correlation", "importance", "uniform"}
    for values in shares.values():
        assert values.shape == (len(test),) and (values >= 0).all() and (values <= 1).all()
    assert torch.allclose(shares["uniform"], uniform_share(test.boxes, (32, 32)))


def test_localisation_on_a_data_set_without_boxes_says_it_needs_boxes(tmp_path):
    run = train_tiny(tmp_path, "plain", "model.head=linear")
    loaded = open_run(run, device="cpu")
    with pytest.raises(UsageError, match="localisation needs object boxes"):
        localise_test_set(loaded, build_sets(loaded.cfg, verbose=False).test)


def test_cam_of_test_images_draws_boxes_and_the_report_shows_localisation(
    clutter_run, tmp_path, capsys
):
    out = tmp_path / "cams"
    assert cli.main(["cam", str(clutter_run), "--test", "3", "--out", str(out)]) == 0
    written = sorted(out.glob("test_*_cam.png"))
    assert len(written) == 3 and capsys.readouterr().out.count("_cam.png") == 3
    loaded = open_run(clutter_run, device="cpu")
    test = build_sets(loaded.cfg, verbose=False).test
    pages = cam_pages(loaded, test.images[:2], ["a", "b"], [0, 1], test.boxes[:2])
    assert [row.box for row in pages[1]] == [tuple(test.boxes[1].tolist())] * 2  # pred, true
    fig = cam_figure(pages[1])
    boxes_drawn = [ax for ax in fig.axes if any(isinstance(p, Rectangle) for p in ax.patches)]
    assert len(boxes_drawn) == len(fig.axes) == 2 * 5  # image + 4 CAMC maps, two rows
    assert "% in box" in fig.axes[1].get_title()
    pages[1][0].box = None
    assert not any(isinstance(p, Rectangle) for p in cam_figure(pages[1][:1]).axes[0].patches)
    assert cli.main(["cam", str(clutter_run), "x.png", "--test", "3", "--out", str(out)]) == 2
    assert "--test draws the run's own test images" in capsys.readouterr().err
    assert cli.main(["cam", str(clutter_run), "--out", str(out)]) == 2  # neither files nor --test
    assert "give image files, or --test N" in capsys.readouterr().err
    page = build_report(clutter_run, out=tmp_path / "report", device="cpu")
    assert (page.parent / "localisation.png").is_file()
    assert "localisation.png" in page.read_text()


@pytest.mark.skipif(
    not (FMNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="the real Fashion-MNIST (apt-get install dataset-fashion-mnist; CI installs it)",
)
def test_the_real_cluttered_test_set_is_the_same_on_every_machine():
    """The fingerprint ``camlt data stats configs/fmnist_lt_clutter.yaml`` prints (docs/clutter.md)."""
    cfg = load_config(ROOT / "configs" / "fmnist_lt_clutter.yaml", [])
    test = build_sets(cfg, verbose=False).test
    assert cli.test_fingerprint(test) == (
        "a5833f5c2a89ea139eee3c67fcd86ca2ecad75a82ddd8600fd7c992fc9c6578c"
    )


def test_the_localisation_table_has_every_map_of_a_run_by_group(clutter_run):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cam_stats
    import clutter as clutter_table

    measured = cam_stats.run_localisation(clutter_run)
    assert set(measured) == {"raw_cam", "calibrated_cam", "correlation", "importance", "uniform"}
    for groups in measured.values():
        assert {"overall", "head", "tail", "rarest"} <= set(groups)
        assert groups["overall"] == pytest.approx(sum(groups["per_class"]) / 10)
    row = clutter_table.ROWS[3]
    text = cam_stats.localisation_markdown(clutter_table.ROWS, "t", {f"{row.name}/seed0": measured})
    assert text.count(f"| {row.name} |") == 5 and "| uniform (box share) | 0 |" in text
    assert cam_stats.localisation_markdown(clutter_table.ROWS, "t", {}) == "Not run yet.\n"
