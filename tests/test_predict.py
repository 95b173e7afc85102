"""``camlt predict``: a trained run on image files, bad files, foreign checkpoints."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from omegaconf import OmegaConf
from PIL import Image
from viz_helpers import train_tiny, write_test_pngs

from camlt import cli
from camlt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from camlt.data import build_datasets
from camlt.data.inputs import decode, input_spec
from camlt.predict import collect_images, predict_files
from camlt.trained import open_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    paths, labels = write_test_pngs(base, 6)
    return {
        "base": base,
        "normalized": train_tiny(base, "normalized", "model.head=normalized"),
        "camc": train_tiny(base, "camc", "model.head=camc"),
        "pngs": paths,
        "labels": labels,
    }


@pytest.mark.parametrize("head", ["normalized", "camc"])
def test_predictions_on_files_equal_the_model_on_the_training_tensors(runs, head):
    loaded = open_run(runs[head], device="cpu")
    results = predict_files(loaded, runs["pngs"], topk=10)
    assert [r.path for r in results] == [str(p) for p in runs["pngs"]]
    _, test = build_datasets(loaded.cfg)  # what evaluation feeds the model: padded to 32x32
    expected = loaded.logits(test.images[: len(results)]).softmax(1)
    for r, probs in zip(results, expected, strict=True):
        assert sum(r.probs) == pytest.approx(1.0, abs=1e-5)  # all 10 classes: sums to one
        assert r.probs == sorted(r.probs, reverse=True)
        assert r.names == [loaded.classes[c] for c in r.classes]
        assert torch.allclose(torch.tensor(r.probs), probs[r.classes], atol=1e-5)


def test_grey_png_becomes_the_padded_training_input(runs):
    loaded = open_run(runs["normalized"], device="cpu")
    _, test = build_datasets(loaded.cfg)
    assert torch.equal(decode(runs["pngs"][0], loaded.spec), test.images[0])


def test_a_colour_photo_given_to_a_greyscale_model_is_warned_about(runs, capsys, tmp_path):
    from PIL import Image

    grey_as_rgb = Image.open(runs["pngs"][0]).convert("RGB")
    grey_as_rgb.save(tmp_path / "grey_rgb.png")
    colour = grey_as_rgb.copy()
    colour.putpixel((3, 3), (250, 10, 10))
    colour.save(tmp_path / "colour.png")
    loaded = open_run(runs["normalized"], device="cpu")
    predict_files(loaded, [runs["pngs"][0], tmp_path / "grey_rgb.png"], topk=1)
    assert "warning" not in capsys.readouterr().err  # grey stays grey, whatever its mode
    predict_files(loaded, [tmp_path / "colour.png"], topk=1)
    err = capsys.readouterr().err
    assert "1 colour image(s) made grey for a model trained on greyscale" in err
    assert "colour.png" in err


def test_cli_csv_json_and_an_undecodable_file_is_named_and_skipped(runs, capsys, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = [str(p) for p in runs["pngs"][:3]]
    rc = cli.main(
        ["predict", str(runs["normalized"]), *good, str(bad), "--topk", "3", "--format", "csv"]
    )
    out, err = capsys.readouterr()
    assert rc == 1 and "broken.png" in err and "cannot decode" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == [p for p in good for _ in range(3)]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3] * 3
    first = [float(r["prob"]) for r in rows[:3]]
    assert first == sorted(first, reverse=True)

    rc = cli.main(
        [
            "predict",
            str(runs["normalized"] / "checkpoint.pt"),
            good[0],
            "--format",
            "json",
            "--topk",
            "2",
        ]
    )
    out, _ = capsys.readouterr()
    parsed = json.loads(out)
    assert rc == 0 and parsed[0]["path"] == good[0]
    assert [t["rank"] for t in parsed[0]["top"]] == [1, 2]
    assert parsed[0]["top"][0]["prob"] >= parsed[0]["top"][1]["prob"]

    rc = cli.main(["predict", str(runs["normalized"]), str(runs["pngs"][0].parent)])
    out, _ = capsys.readouterr()
    assert rc == 0 and out.count("img0") == len(runs["pngs"])  # a folder: every image in it


def test_folders_and_globs_are_collected_in_order(runs):
    folder = runs["pngs"][0].parent
    found, missing = collect_images([str(folder), str(folder / "img0[0-1].png"), "nothing.png"])
    assert found == sorted(runs["pngs"])  # duplicates from the glob are dropped
    assert missing == [("nothing.png", "no such file or folder")]


def test_checkpoint_of_another_model_names_what_differs(runs, tmp_path):
    state = load_checkpoint(runs["normalized"] / "checkpoint.pt")
    cfg = yaml.safe_load(state["config"])
    cfg["model"]["backbone"] = "resnet20"
    state["config"] = yaml.safe_dump(cfg)
    save_checkpoint(
        tmp_path / "other.pt", {k: v for k, v in state.items() if k != "format_version"}
    )
    with pytest.raises(CheckpointError, match=r"backbone=resnet20.*weights missing"):
        open_run(tmp_path / "other.pt", device="cpu")

    cfg["model"]["backbone"] = "resnet8"
    cfg["model"]["from_the_future"] = 1  # a key a newer camlt wrote
    state["config"] = yaml.safe_dump(cfg)
    state["camlt_version"] = "9.9.9"
    save_checkpoint(
        tmp_path / "newer.pt", {k: v for k, v in state.items() if k != "format_version"}
    )
    with pytest.raises(CheckpointError, match=r"from_the_future.*camlt 9\.9\.9"):
        open_run(tmp_path / "newer.pt", device="cpu")


def test_config_beside_the_checkpoint_that_differs_is_refused(runs, tmp_path, capsys):
    run = tmp_path / "copied"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((runs["normalized"] / "checkpoint.pt").read_bytes())
    saved = OmegaConf.load(runs["normalized"] / "config.yaml")
    saved.model.scale = 32.0
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    for command in (["predict", str(run), str(runs["pngs"][0])], ["eval", str(run)]):
        rc = cli.main(command)
        _, err = capsys.readouterr()
        assert rc == 2 and "model.scale" in err and "checkpoint != config.yaml" in err


def test_input_specs_of_rgb_and_file_datasets(runs, tmp_path):
    cfg = OmegaConf.load(runs["normalized"] / "config.yaml")
    cfg.data.name = "cifar10_lt"
    assert input_spec(cfg).shape == (3, 32, 32)
    cfg.data.name = "imagenet_lt"
    spec = input_spec(cfg)
    wide = tmp_path / "wide.jpg"
    Image.new("RGB", (400, 300), (200, 10, 10)).save(wide)
    tensor = decode(wide, spec)
    assert spec.shape == tuple(tensor.shape) == (3, 224, 224)
    assert tensor[0].float().mean() > 150 and tensor[1].float().mean() < 60  # still red


def test_image_folder_run_predicts_files_as_it_evaluates_them(tmp_path):
    from imagefiles import file_overrides, image_folder

    import camlt.report as report_module
    from camlt import engine
    from camlt.config import load_config

    root = image_folder(tmp_path / "pets", {"cat": 12, "dog": 9, "emu": 6})
    overrides = ["data.name=image_folder", f"data.root={root}", "data.test_fraction=0.3"]
    cfg = load_config(
        ROOT / "configs" / "fmnist_lt.yaml", file_overrides(tmp_path / "run", *overrides)
    )
    engine.train(cfg, tmp_path / "run")
    loaded = open_run(tmp_path / "run", device="cpu")
    assert loaded.spec.shape == (3, 32, 32) and loaded.classes == ["cat", "dog", "emu"]

    data, test_set = report_module.load_run_data(tmp_path / "run", "run", tmp_path / "rep", "cpu")
    results = predict_files(loaded, [Path(f) for f in test_set.files], topk=3)
    by_file = torch.tensor([[r.probs[r.classes.index(c)] for c in range(3)] for r in results])
    assert torch.allclose(by_file, data.logits.softmax(1), atol=1e-5)  # same decode and crop
    assert report_module.tail_cam_grid(data, test_set, 2) is not None
