"""Hostile inputs that once gave silent wrong results: link structures, path shapes, text
encodings and line endings, and a named data root that lacks the data. Each class of input is
generated (hypothesis), not only the cases the review found."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_cifar, write_fmnist
from fuzz_settings import examples
from hypothesis import given
from hypothesis import strategies as st
from imagefiles import write_jpeg
from test_files import split_cfg

from camlt.config import load_config
from camlt.data import DataError, build_sets
from camlt.data.check import check
from camlt.data.owndata import read_csv_list, read_image_folder, stratified_split
from camlt.data.paths import leaves_root, resolve_paths
from camlt.data.sources import load_cifar, load_fmnist
from camlt.data.splitfile import read_split_file

CLASSES = ("c0", "c1", "c2")


# ----------------------------------------------------------------------------- link structures
def write_tree(root: Path, per_class: int = 4) -> dict[str, str]:
    """Class folders of empty .png files (the reader lists names; it decodes nothing);
    returns real path -> class."""
    owner = {}
    for name in CLASSES:
        for i in range(per_class):
            path = root / name / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            owner[os.path.realpath(path)] = name
    return owner


LINK = st.tuples(
    st.sampled_from(CLASSES),  # the folder the link is put in
    st.sampled_from(["self", "parent", "root", "class", "file", "outside"]),
    st.sampled_from(CLASSES),  # the class a "class" or "file" link points into
)


def make_link(root: Path, outside: Path, index: int, link: tuple[str, str, str]) -> None:
    where, kind, target = link
    place = root / where / f"link{index}"
    if kind == "file":
        place = place.with_suffix(".png")
    dest = {
        "self": root / where,
        "parent": root / where / "..",
        "root": root,
        "class": root / target,
        "file": root / target / f"{target}_0.png",
        "outside": outside,
    }[kind]
    os.symlink(dest, place)


@examples(60)
@given(links=st.lists(LINK, max_size=6))
def test_any_link_structure_counts_each_real_file_once_under_its_own_class(links, tmp_path_factory):
    base = tmp_path_factory.mktemp("tree")
    root, outside = base / "images", base / "elsewhere"
    owner = write_tree(root)
    (outside / "x.png").parent.mkdir(parents=True)
    (outside / "x.png").touch()
    for i, link in enumerate(links):
        make_link(root, outside, i, link)
    found = read_image_folder(root)  # terminates, whatever loops the links make
    reals = [os.path.realpath(root / p) for p in found.paths]
    assert len(reals) == len(set(reals))  # each real file once
    for real, label in zip(reals, found.labels.tolist(), strict=True):
        if real in owner:  # a file inside a class folder keeps that folder's class
            assert found.classes[label] == owner[real]
    assert set(owner) <= set(reals)
    train, val, test = stratified_split(found.labels, (0.2, 0.3), seed=0)
    splits = [{reals[i] for i in part} for part in (train, val, test)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_the_reviewed_cases_loop_and_cross_class_link(tmp_path):
    root = tmp_path / "images"
    write_tree(root)
    os.symlink(root / "c0", root / "c0" / "again")  # a link back to itself
    os.symlink(root / "c1", root / "c0" / "other")  # another class's folder
    found = read_image_folder(root)
    assert len(found) == 12 and np.bincount(found.labels).tolist() == [4, 4, 4]
    assert len(found.meta["duplicates"]) == 4  # c1's four files, seen again through c0/other
    report = check(root)
    assert report["num_images"] == 12 and len(report["duplicates"]) == 4


# ----------------------------------------------------------------------------- path shapes
SEGMENT = st.sampled_from(["..", ".", "a", "b", "", "img.png"])


@examples(200)
@given(parts=st.lists(SEGMENT, min_size=1, max_size=6), lead=st.booleans())
def test_no_path_shape_reads_outside_the_root_unless_allowed(parts, lead, tmp_path_factory):
    base = tmp_path_factory.mktemp("paths")
    root = base / "root" / "sub"
    for folder in (base, base / "root", root, root / "a", root / "b", root / "a" / "b"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "img.png").touch()
    path = ("/" if lead else "") + "/".join(parts)
    res = resolve_paths([path], root, "exact")
    inside = os.path.realpath(root)
    for found in res.files:
        if found is not None:
            assert os.path.realpath(found).startswith(inside + os.sep)
    escapes = not os.path.realpath(os.path.join(root, path.lstrip("/"))).startswith(inside)
    assert leaves_root(path) == escapes
    assert res.outside == ([0] if escapes else [])
    allowed = resolve_paths([path], root, "exact", allow_outside=True)
    assert allowed.outside == res.outside and allowed.allowed_outside == escapes


def test_a_split_file_climbing_out_of_the_root_is_refused_by_line(tmp_path):
    root = tmp_path / "root"

    write_jpeg(root / "a.jpg", 0, 1)
    write_jpeg(root / "b.jpg", 1, 2)
    write_jpeg(tmp_path / "secret.jpg", 1, 3)
    files = {
        "train": root / "train.txt",
        "test": root / "test.txt",
    }
    files["train"].write_text("a.jpg 0\n../secret.jpg 1\nb.jpg 1\n")
    files["test"].write_text("a.jpg 0\nb.jpg 1\n")
    with pytest.raises(DataError, match=r"train.txt:2 \.\./secret.jpg.*allow_outside_root"):
        build_sets(split_cfg(tmp_path, root, files))
    allowed = ("data.allow_outside_root=true", "data.leaks=off")  # test repeats train's images
    sets = build_sets(split_cfg(tmp_path, root, files, *allowed))
    assert len(sets.train) == 3
    report = check(files["train"], root)
    assert report["outside_root"] == 1 and "train.txt:2" in report["outside_root_files"][0]


# ----------------------------------------------------------------------------- encodings
ENDINGS = st.sampled_from(["\n", "\r\n"])
NAMES = st.lists(
    st.text(alphabet="abcdefghij_- éü", min_size=1, max_size=8).map(str.strip).filter(bool),
    min_size=1,
    max_size=4,
    unique=True,
)


@examples(80)
@given(names=NAMES, ending=ENDINGS, bom=st.booleans(), header=st.booleans())
def test_csv_reads_the_same_whatever_its_bom_and_line_endings(
    names, ending, bom, header, tmp_path_factory
):
    rows = [f"img{i}.png,{name}" for i, name in enumerate(names)]
    text = ending.join((["path,label"] if header else []) + rows) + ending
    path = tmp_path_factory.mktemp("csv") / "list.csv"
    path.write_bytes(text.encode("utf-8-sig" if bom else "utf-8"))
    found = read_csv_list(path)
    assert found.classes == sorted(names)  # no phantom class from a BOM-glued header
    assert found.paths == [f"img{i}.png" for i in range(len(names))]


@examples(80)
@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=6), ending=ENDINGS, bom=st.booleans()
)
def test_split_file_reads_the_same_whatever_its_bom_and_line_endings(
    labels, ending, bom, tmp_path_factory
):
    text = ending.join(f"dir/img {i}.jpg {label}" for i, label in enumerate(labels)) + ending
    path = tmp_path_factory.mktemp("split") / "train.txt"
    path.write_bytes(text.encode("utf-8-sig" if bom else "utf-8"))
    found = read_split_file(path)
    assert found.paths == [f"dir/img {i}.jpg" for i in range(len(labels))]
    assert found.labels.tolist() == labels


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_recipe_with_a_bom_reads_as_without(tmp_path, ending):
    text = ending.join(["train:", "  epochs: 7", "model:", "  head: linear", ""])
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(text.encode("utf-8-sig"))
    cfg = load_config(recipe)
    assert cfg.train.epochs == 7 and cfg.model.head == "linear"


def test_a_bom_csv_of_the_review_makes_no_phantom_class(tmp_path):
    rows = ["path,label"]
    for i in range(6):
        write_jpeg(tmp_path / f"i{i}.jpg", i % 2, i)
        rows.append(f"i{i}.jpg,{'cat' if i % 2 else 'dog'}")
    (tmp_path / "list.csv").write_bytes(("\n".join(rows) + "\n").encode("utf-8-sig"))
    cfg = load_config(
        ROOT / "configs" / "fmnist_lt.yaml",
        ["data.name=csv", f"data.csv_file={tmp_path / 'list.csv'}", "data.test_fraction=0.34"],
    )
    sets = build_sets(cfg)
    assert sets.train.classes == ["cat", "dog"]


# ----------------------------------------------------------------------------- a named root
@pytest.mark.parametrize("drop", [None, "t10k-labels-idx1-ubyte.gz"])
def test_a_named_root_without_the_data_fails_naming_what_is_missing(tmp_path, drop):
    root = tmp_path / "fm"
    if drop:
        write_fmnist(root)
        (root / drop).unlink()
    else:
        root.mkdir()
    with pytest.raises(DataError) as err:
        load_fmnist(str(root))  # the system's copy (if installed) is never used instead
    text = str(err.value)
    assert f"data.root={root}" in text
    assert (drop or "train-images-idx3-ubyte.gz") in text
    if drop:
        assert "train-images-idx3-ubyte.gz lacks" not in text and f"{root} lacks {drop}" in text


def test_a_named_cifar_root_is_used_or_refused(tmp_path, monkeypatch):
    write_cifar(tmp_path / "elsewhere")
    monkeypatch.setenv("CAMLT_DATA", str(tmp_path / "elsewhere"))  # once searched as a fallback
    with pytest.raises(DataError, match=r"data.root=.*empty: CIFAR-10 is not there"):
        load_cifar(10, str(tmp_path / "empty"))
    splits, _ = load_cifar(10, None)  # no root named: the environment's copy
    assert len(splits["train"].labels) == 120
    shutil.rmtree(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- YAML structures
def nested_aliases(levels: int, width: int) -> str:
    """A "billion laughs": each level lists the one below ``width`` times by alias."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@examples(40)
@given(levels=st.integers(1, 9), width=st.integers(1, 10))
def test_nested_aliases_are_refused_fast_beyond_the_bound_or_read(levels, width, tmp_path_factory):
    import time

    from camlt.config import MAX_YAML_NODES, ConfigError, load_yaml

    text = nested_aliases(levels, width)
    seq = 1 + width  # the nodes level 0's list stands for; each level lists the last width times
    size = 1 + (1 + seq)
    for _ in range(1, levels):
        seq = 1 + width * seq
        size += 1 + seq
    start = time.perf_counter()
    try:
        loaded = load_yaml(text)
    except ConfigError as err:
        assert "aliases" in str(err) and size > MAX_YAML_NODES
    else:
        assert len(loaded) == levels and size <= MAX_YAML_NODES
    assert time.perf_counter() - start < 2.0
    recipe = tmp_path_factory.mktemp("bomb") / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=str(recipe.name)):  # never a hang, never a traceback
        load_config(recipe)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.root=!tag x", "not valid YAML"),
        ("train.epochs={", "not valid YAML"),
        ("train=5", "'train' is a section, not a value"),
        ("model.camc=[1]", r"model.camc=\[1\]: a section of settings"),
        ("train.seed=-1", r"train.seed=-1: must be a whole number in \[0, 4294967295\]"),
        ("data.split_seed=4294967296", "data.split_seed=4294967296: must be a whole number"),
        ("train.lr=.inf", "train.lr=inf: must be a finite number"),
        ("data.max_pixels=0", "data.max_pixels=0: must be positive"),
        ("data.balanced='30'", "data.balanced='30': expected true or false"),  # was true
    ],
)
def test_bad_values_name_their_key(override, message):
    from camlt.config import ConfigError
    from camlt.preflight import check_run

    with pytest.raises(ConfigError, match=message):  # at load, or before a run starts
        check_run(load_config(ROOT / "configs" / "fmnist_lt.yaml", [override]))


@examples(150)
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70))
def test_numeric_edge_values_are_taken_or_refused_by_key(value):
    from camlt.config import ConfigError

    for key in ("train.lr", "train.seed", "data.imbalance", "train.mix_alpha", "loss.drw_beta"):
        try:
            cfg = load_config(ROOT / "configs" / "fmnist_lt.yaml", [f"{key}={value!r}"])
        except ConfigError as err:
            assert key in str(err)
        else:
            import math

            from omegaconf import OmegaConf

            taken = OmegaConf.select(cfg, key)
            assert math.isfinite(taken)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from reliability_helpers import tiny

    from camlt import engine

    base = tmp_path_factory.mktemp("ckpt")
    run_dir = base / "run"
    engine.train(tiny(write_fmnist(base / "fm"), run_dir, "train.epochs=1"), run_dir)
    return run_dir


BROKEN = {
    "epoch": ["3", -1, None, 1.5, True],
    "config": [5, "a: [", "- just a list", "x: &a [*a, *a]"],
    "classes": ["shirt", [1, 2], None],
    "train_counts": [[-1] * 10, ["3"] * 10, 7],
    "model": [[1, 2], {"w": 3}],
    "rng": [{}, {"torch": 1}, None, {"torch": None, "numpy": [], "python": []}],
    "optimizer": [[], 3],
}


def mutations():
    return st.sampled_from([(k, v) for k, vs in BROKEN.items() for v in vs])


@examples(60)
@given(mutation=mutations())
def test_a_damaged_checkpoint_is_named_by_entry_from_eval_predict_and_resume(
    finished_run, mutation, tmp_path_factory
):
    import torch

    from camlt.checkpoint import CheckpointError, load_checkpoint
    from camlt.engine import train
    from camlt.trained import evaluate_run, open_run

    key, value = mutation
    run_dir = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(finished_run, run_dir)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    state[key] = value
    torch.save(state, run_dir / "checkpoint.pt")
    for use in (
        lambda: evaluate_run(run_dir),
        lambda: open_run(run_dir, device="cpu"),
        lambda: train(load_config(run_dir / "config.yaml"), run_dir, resume=True),
    ):
        with pytest.raises(
            CheckpointError, match=rf"checkpoint.pt: a damaged camlt checkpoint: .*'{key}'"
        ):
            use()


def test_a_run_whose_checkpoint_is_gone_is_refused_and_loses_nothing(finished_run, tmp_path):
    from camlt.checkpoint import CheckpointError, atomic_write_text
    from camlt.engine import train

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "checkpoint.pt").unlink()
    before = {n: (run_dir / n).read_bytes() for n in ("metrics.jsonl", "final_metrics.json")}
    with pytest.raises(CheckpointError, match=r"1 epochs logged\) but no checkpoint.pt"):
        train(load_config(run_dir / "config.yaml"), run_dir, resume=True)
    assert {n: (run_dir / n).read_bytes() for n in before} == before
    # killed between epoch 1's metrics line and its first checkpoint: it starts again
    (run_dir / "final_metrics.json").unlink()
    atomic_write_text(run_dir / "metrics.jsonl", before["metrics.jsonl"].decode())
    train(load_config(run_dir / "config.yaml"), run_dir, resume=True)
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "final_metrics.json").is_file()


class Thing:
    """A picklable object that is not plain data: weights_only loading refuses it."""


def test_torch_advice_and_colour_codes_never_reach_the_user(tmp_path):
    import pickle

    import torch

    from camlt.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint

    torch.save({"format_version": FORMAT_VERSION, "x": Thing()}, tmp_path / "a.pt")
    with open(tmp_path / "b.pt", "wb") as fh:
        pickle.dump({"format_version": FORMAT_VERSION, "x": Thing()}, fh)
    for name in ("a.pt", "b.pt"):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(tmp_path / name)
        text = str(err.value)
        assert "weights_only=False" not in text and "\x1b[" not in text and name in text


# ----------------------------------------------------------------------------- the CLI
def test_cli_numbers_files_and_folders_are_one_line_each(finished_run, tmp_path, capsys):
    from camlt.cli import main

    for option, value, message in (
        ("--batch-size", "0", "must be at least 1, got 0"),
        ("--batch-size", "-1", "must be at least 1, got -1"),
        ("--topk", "x", "expected a whole number, got 'x'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", str(finished_run), str(tmp_path), option, value])
        assert exit_.value.code == 2
        assert f"argument {option}: {message}" in capsys.readouterr().err
    assert main(["eval", str(finished_run), "--out", str(tmp_path / "no" / "e.json")]) == 2
    assert f"the folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    recipe = str(ROOT / "configs" / "fmnist_lt.yaml")
    assert main(["train", recipe, f"train.run_dir={tmp_path / 'afile'}"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_an_image_above_the_pixel_limit_is_named_before_decoding(finished_run, tmp_path, capsys):
    from PIL import Image

    from camlt.cli import main

    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")
    Image.new("L", (28, 28)).save(tmp_path / "small.png")
    code = main(["predict", str(finished_run), str(tmp_path), "--max-pixels", "1000000"])
    err = capsys.readouterr()
    assert code == 1 and "big.png: 3000 x 2000 = 6,000,000 pixels, above the limit" in err.err
    assert "small.png" in err.out
    assert main(["predict", str(finished_run), str(tmp_path / "big.png")]) == 0  # under 50 M


def test_too_few_images_for_a_test_split_names_the_real_fraction(tmp_path):
    root = tmp_path / "images"
    for name in CLASSES:
        for i in range(2):  # 2 images a class: none can go to the test split
            write_jpeg(root / name / f"{i}.jpg", 0, i)
    cfg = load_config(
        ROOT / "configs" / "fmnist_lt.yaml",
        ["data.name=image_folder", f"data.root={root}", "data.test_fraction=0.3"],
    )
    with pytest.raises(DataError, match=r"data.test_fraction=0.3, but no class has the 3 images"):
        build_sets(cfg)


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from camlt import cli
    from camlt.data import DataError

    def user_error(args):
        raise DataError("data.root=/x: Fashion-MNIST is not there")

    def bug(args):
        raise ValueError("an internal inconsistency")

    recipe = str(ROOT / "configs" / "fmnist_lt.yaml")
    monkeypatch.setattr(cli, "cmd_train", user_error)  # the parser binds it when main builds it
    assert cli.main(["train", recipe]) == 2
    assert capsys.readouterr().err == "camlt: error: data.root=/x: Fashion-MNIST is not there\n"
    monkeypatch.setattr(cli, "cmd_train", bug)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        cli.main(["train", recipe])
