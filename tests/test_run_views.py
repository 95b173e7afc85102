"""Every view of a run shows that run, and writes only where it may: report and cam refuse an
--out folder they did not make, a checkpoint of another run, a log that does not end where the
checkpoint does; damaged run files are named by line; class names are drawn as plain text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, tiny_overrides
from imagefiles import file_overrides, image_folder
from viz_helpers import data_root, train_tiny, write_test_pngs

from camlt import engine
from camlt.checkpoint import CheckpointError, read_json, read_jsonl
from camlt.cli import main as cli
from camlt.config import load_config
from camlt.rundir import OUTPUT_MARKER
from camlt.trained import open_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("views")
    pngs, _ = write_test_pngs(base, 2)
    return {
        "a": train_tiny(base, "a", "model.head=linear"),
        "b": train_tiny(base, "b", "model.head=linear", "train.seed=1"),
        "base": base,
        "pngs": pngs,
    }


def copy_run(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


# ----------------------------------------------------------------------------- --out folders
@pytest.mark.parametrize("command", ["report", "cam"])
def test_an_out_folder_of_other_files_is_refused_and_kept(runs, tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("my page")
    (out / "img00_cam.png").write_text("my picture")
    args = [command, str(runs["a"])]
    args += [str(p) for p in runs["pngs"]] if command == "cam" else []
    assert cli([*args, "--out", str(out), "--device", "cpu"]) == 2
    assert "holds files camlt did not write" in capsys.readouterr().err
    assert (out / "index.html").read_text() == "my page"
    assert (out / "img00_cam.png").read_text() == "my picture"
    assert cli([*args, "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert (out / OUTPUT_MARKER).is_file()
    assert cli([*args, "--out", str(out), "--device", "cpu"]) == 0  # its own folder now


@pytest.mark.parametrize("command", ["report", "cam"])
def test_a_run_directory_is_never_an_out_folder(runs, tmp_path, capsys, command):
    run = copy_run(runs["a"], tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = [command, str(runs["a"])]
    args += [str(p) for p in runs["pngs"]] if command == "cam" else []
    assert cli([*args, "--out", str(run), "--device", "cpu", "--overwrite"]) == 2
    assert "that is a run directory" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ----------------------------------------------------------------------------- one run per view
def test_a_checkpoint_of_another_run_is_named_by_eval_and_refused_by_report(runs, tmp_path, capsys):
    mixed = copy_run(runs["a"], tmp_path / "mixed")
    shutil.copyfile(runs["b"] / "checkpoint.pt", mixed / "checkpoint.pt")
    loaded = open_run(mixed, device="cpu")
    assert loaded.foreign and "written by another run" in loaded.warnings[0]
    assert open_run(runs["a"], device="cpu").foreign is None
    assert cli(["report", str(mixed), "--device", "cpu"]) == 2
    assert "written by another run" in capsys.readouterr().err
    assert not (mixed / "report" / "index.html").exists()


def test_a_log_that_ends_elsewhere_than_the_checkpoint_is_refused_by_report(runs, tmp_path, capsys):
    run = copy_run(runs["a"], tmp_path / "run")
    record = read_jsonl(run / "metrics.jsonl")[-1]
    with open(run / "metrics.jsonl", "a") as fh:
        for epoch in (2, 3):
            fh.write(json.dumps({**record, "epoch": epoch}) + "\n")
    assert cli(["report", str(run), "--device", "cpu"]) == 2
    assert "ends at epoch 3 but checkpoint.pt is of epoch 1" in capsys.readouterr().err


def test_the_report_of_file_data_carries_its_data_check_and_no_benchmark_profile(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", {"cat": 8, "dog": 8})
    cfg = load_config(
        ROOT / "configs" / "fmnist_lt.yaml",
        file_overrides(tmp_path / "run", "data.name=image_folder", f"data.root={root}"),
    )
    engine.train(cfg, tmp_path / "run")  # 1 epoch of a recipe whose lr steps at 24 and 27
    assert "train.milestones=[24, 27]: [24, 27] lie at or beyond the last epoch" in (
        capsys.readouterr().err
    )
    assert cli(["report", str(tmp_path / "run"), "--device", "cpu"]) == 0
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "Data check: no image in two splits" in page
    assert f"image_folder {root}" in page and "order=" not in page
    summary = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert summary["data_check"]["leaks"] == []


# ----------------------------------------------------------------------------- damaged run files
@pytest.mark.parametrize(
    "line, expected",
    [
        ("garbage{", "metrics.jsonl:2: not a JSON line"),
        ("[1, 2]", "metrics.jsonl:2: expected a JSON object, found list"),
        ('{"epoch": 1}', "metrics.jsonl:2: the record lacks loss"),
        ('{"epoch": "one", "loss": 1}', "metrics.jsonl:2: epoch must be a whole number"),
    ],
)
def test_a_damaged_metrics_line_is_named_by_report_and_resume(
    runs, tmp_path, capsys, line, expected
):
    run = copy_run(runs["a"], tmp_path / "run")
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(good + line + "\n" + good)
    assert cli(["report", str(run), "--device", "cpu"]) == 2
    assert expected in capsys.readouterr().err
    if "lacks loss" not in expected:  # resume needs only the epoch of each line
        assert cli(["train", str(run)]) == 2
        assert expected in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == good + line + "\n" + good  # nothing rewritten


def test_a_truncated_final_metrics_is_named_by_stage_2(runs, tmp_path, capsys):
    stage1 = copy_run(runs["a"], tmp_path / "s1")
    text = (stage1 / "final_metrics.json").read_text()
    (stage1 / "final_metrics.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="final_metrics.json: not a readable JSON file"):
        read_json(stage1 / "final_metrics.json")
    overrides = tiny_overrides(data_root(runs["base"]), tmp_path / "s2")
    args = ["train", str(ROOT / "configs" / "stage2_crt.yaml"), *overrides]
    assert cli([*args, f"model.init_from={stage1}"]) == 2
    assert "final_metrics.json: not a readable JSON file" in capsys.readouterr().err
    assert not (tmp_path / "s2" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- names as text
def test_mathtext_and_escape_sequence_class_names_are_shown_as_plain_text(tmp_path, capsys):
    names = {"$\\undefinedcommand$": 8, "$x^$": 8, "red\x1b[31m": 8}
    root = image_folder(tmp_path / "odd", names)
    overrides = file_overrides(tmp_path / "run", "data.name=image_folder", f"data.root={root}")
    assert cli(["train", str(ROOT / "configs" / "fmnist_lt.yaml"), *overrides]) == 0
    assert cli(["report", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert (tmp_path / "run" / "report" / "confusion.png").is_file()
    image = next((root / "red\x1b[31m").iterdir())
    assert cli(["predict", str(tmp_path / "run"), str(image), "--format", "csv"]) == 0
    label = "$\\undefinedcommand$"
    args = [
        "cam",
        str(tmp_path / "run"),
        str(image),
        "--label",
        label,
        "--out",
        str(tmp_path / "cams"),
    ]
    assert cli(args) == 0
    assert len(list((tmp_path / "cams").glob("*.png"))) == 1
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "red\\x1b[31m" in out
