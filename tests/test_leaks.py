"""Images in two places and class names that print alike (camlt.data.leaks): found by
``data check`` and ``train``, refused by training unless the user says otherwise, recorded in the
run. The planted cases are generated (hypothesis) and checked against a plain byte comparison
written here, not against the module's own grouping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fuzz_settings import examples
from hypothesis import given
from hypothesis import strategies as st
from imagefiles import file_overrides, image_folder, write_jpeg, write_lines
from test_files import RECIPE, cfg_for, split_cfg

from camlt import engine
from camlt.cli import main as cli
from camlt.data import DataError, build_sets
from camlt.data.leaks import SAMPLE_BYTES, check_splits, identical_groups, lookalike_classes
from camlt.data.owndata import read_csv_list
from camlt.data.splitfile import SplitList
from camlt.errors import printable


def split_of(name: str, paths: list[Path], labels: list[int]) -> SplitList:
    lines = np.arange(1, len(paths) + 1)
    return SplitList(name, [str(p) for p in paths], np.asarray(labels), lines)


# ----------------------------------------------------------------------------- byte groups
@examples(40)
@given(
    sizes=st.lists(st.integers(1, 3 * SAMPLE_BYTES), min_size=2, max_size=12),
    copies=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2)), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_identical_files_are_grouped_exactly_as_bytes_say(sizes, copies, seed, tmp_path_factory):
    """Files with random bytes, some copied into another split: each planted group is found,
    and nothing else (same size or same sample with other bytes is not a copy)."""
    root = tmp_path_factory.mktemp("bytes")
    rng = np.random.default_rng(seed)
    files = []
    for i, size in enumerate(sizes):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        if i % 3 == 2 and size > 2 * SAMPLE_BYTES:  # same size, head and tail as the file before
            prev = files[-1].read_bytes()
            if len(prev) == size:
                data = prev[:SAMPLE_BYTES] + data[SAMPLE_BYTES:-SAMPLE_BYTES] + prev[-SAMPLE_BYTES:]
        path = root / f"f{i}.bin"
        path.write_bytes(data)
        files.append(path)
    for n, (source, _) in enumerate(copies):
        if source < len(files):
            copy = root / f"copy{n}.bin"
            shutil.copyfile(files[source], copy)
            files.append(copy)
    groups, _ = identical_groups([str(f) for f in files])
    found = {frozenset(files[i].name for i in group) for group in groups}
    by_bytes: dict[bytes, set[str]] = {}
    for f in files:
        by_bytes.setdefault(f.read_bytes(), set()).add(f.name)
    assert found == {frozenset(names) for names in by_bytes.values() if len(names) > 1}


def test_a_path_listed_twice_is_one_group_without_reading_it(tmp_path):
    groups, read = identical_groups(["no/such/file.jpg", "elsewhere.jpg", "no/such/file.jpg"])
    assert groups == [[0, 2]] and read == 0


def test_leaks_conflicts_and_repeats_are_told_apart(tmp_path):
    for i in range(4):
        write_jpeg(tmp_path / f"{i}.jpg", i % 2, seed=i)
    shutil.copyfile(tmp_path / "0.jpg", tmp_path / "0copy.jpg")
    p = [tmp_path / f"{i}.jpg" for i in range(4)]
    splits = {
        "train": split_of("train.txt", [p[0], p[1], p[1]], [0, 1, 1]),  # 1.jpg twice: a repeat
        "test": split_of("test.txt", [tmp_path / "0copy.jpg", p[2], p[3]], [0, 0, 1]),
        "val": split_of("val.txt", [p[3]], [0]),  # 3.jpg under label 1 in test, 0 here
    }
    found = check_splits(splits, ["a", "b"])
    assert found.leaks[0].startswith("test test.txt:1") and "= train train.txt:1" in found.leaks[0]
    assert len(found.leaks) == 2  # 0copy.jpg (test) and 3.jpg (val, first seen in test)
    assert len(found.conflicts) == 1 and "labels [0, 1]" in found.conflicts[0]
    assert len(found.repeats) == 1 and "train.txt:2" in found.repeats[0]
    assert found.refused


@pytest.mark.parametrize(
    "names, alike",
    [
        (["Cat", "cat", "dog"], [["Cat", "cat"]]),
        (["dress", "dress ", "shirt"], [["dress", "dress "]]),
        (["caf\u00e9", "cafe\u0301", "tea"], [["caf\u00e9", "cafe\u0301"]]),  # NFC vs NFD
        (["ﬁsh", "fish"], [["ﬁsh", "fish"]]),  # a ligature (NFKC)
        (["ox", "oxen", "Ox-en"], []),
    ],
)
def test_lookalike_class_names(names, alike):
    assert lookalike_classes(names) == alike


# ----------------------------------------------------------------------------- training
def test_the_reviews_folder_leak_is_refused_then_trained_on_request_and_recorded(tmp_path):
    """An image folder where most images have a byte-identical copy in the same class: after the
    per-class split, test images are training images."""
    root = image_folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    for name in ("cat", "dog"):
        for j in range(7):
            shutil.copyfile(root / name / f"img_{j}.jpg", root / name / f"img_{j}_copy.jpg")
    extra = ("data.name=image_folder", f"data.root={root}", "data.test_fraction=0.3")
    with pytest.raises(DataError, match="byte-identical.*data.leaks=warn"):
        build_sets(cfg_for(tmp_path, *extra))
    assert not (tmp_path / "run").exists()
    engine.train(cfg_for(tmp_path, *extra, "data.leaks=warn"), tmp_path / "run")
    found = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert found["leaks"] and all("test" in leak for leak in found["leaks"])
    assert cli(["eval", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["data_check"]["leaks"] == found["leaks"]


def test_a_csv_listing_one_path_under_two_labels_is_refused(tmp_path):
    for i in range(12):
        write_jpeg(tmp_path / "img" / f"{i}.jpg", i % 2, seed=i)
    rows = [f"img/{i}.jpg,{'cat' if i % 2 else 'dog'}" for i in range(12)] + ["img/3.jpg,dog"]
    csv = write_lines(tmp_path / "list.csv", ["path,label", *rows])
    with pytest.raises(DataError, match=r"under two labels.*img/3.jpg.*labels \[0, 1\]"):
        build_sets(cfg_for(tmp_path, "data.name=csv", f"data.csv_file={csv}"))


def test_a_split_file_leak_names_both_lines(tmp_path):
    root = tmp_path / "root"
    for i in range(6):
        write_jpeg(root / f"{i}.jpg", i % 3, seed=i)
    shutil.copyfile(root / "1.jpg", root / "test_1.jpg")
    files = {
        "train": write_lines(root / "train.txt", [f"{i}.jpg {i % 3}" for i in range(6)]),
        "test": write_lines(root / "test.txt", ["test_1.jpg 1", "5.jpg 2"]),
    }
    with pytest.raises(DataError, match=r"test test.txt:1 .*test_1.jpg = train train.txt:2"):
        build_sets(split_cfg(tmp_path, root, files))
    sets = build_sets(split_cfg(tmp_path, root, files, "data.leaks=off"))
    assert len(sets.test) == 2


@pytest.mark.parametrize("folders", [("dress", "dress "), ("Bag", "bag"), ("$x$", "$X$")])
def test_lookalike_class_folders_are_refused_naming_both(tmp_path, folders):
    root = image_folder(tmp_path / "clothes", {folders[0]: 6, folders[1]: 6, "coat": 6})
    with pytest.raises(DataError, match="differ only by case, whitespace") as err:
        build_sets(cfg_for(tmp_path, "data.name=image_folder", f"data.root={root}"))
    assert repr(folders[0]) in str(err.value) and repr(folders[1]) in str(err.value)


@pytest.mark.parametrize("row, what", [("img/1.jpg,", "empty label"), (",cat", "empty path")])
def test_an_empty_csv_field_is_refused_by_line(tmp_path, row, what):
    csv = write_lines(tmp_path / "list.csv", ["path,label", "img/0.jpg,dog", row])
    with pytest.raises(DataError, match=f"list.csv:3: {what}"):
        read_csv_list(csv)


# ----------------------------------------------------------------------------- data check
def test_data_check_finds_a_leak_against_another_list_and_fails_strict(tmp_path, capsys):
    root = tmp_path / "root"
    for i in range(4):
        write_jpeg(root / f"{i}.jpg", i % 2, seed=i)
    shutil.copyfile(root / "2.jpg", root / "t.jpg")
    train = write_lines(root / "train.txt", [f"{i}.jpg {i % 2}" for i in range(4)])
    test = write_lines(root / "test.txt", ["t.jpg 0"])
    args = ["data", "check", str(train), "--image-root", str(root), "--against", str(test)]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "NOT SAFE: 1 images of one split are byte-identical" in out and "t.jpg" in out
    assert cli([*args, "--strict"]) == 1
    capsys.readouterr()
    assert cli([*args, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["leaks"]) == 1


def test_data_check_of_a_folder_names_lookalikes_and_repeats(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", {"cat": 3, "Cat": 2})
    shutil.copyfile(root / "cat" / "img_0.jpg", root / "cat" / "again.jpg")
    assert cli(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "'Cat'/'cat'" in out and "twice in one class" in out


# ----------------------------------------------------------------------------- control characters
@examples(60)
@given(st.text(min_size=1, max_size=12))
def test_printable_never_lets_a_control_character_through(name):
    shown = printable(name)
    assert all(c.isprintable() or c == " " for c in shown)
    if name.isprintable():
        assert shown == name


def test_a_folder_named_with_an_escape_sequence_is_printed_escaped(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", {"cat\x1b[31m": 3, "dog": 2})
    assert cli(["data", "check", str(root), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "cat\\x1b[31m" in out


def test_an_empty_class_folder_is_refused_or_left_out_on_request(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", {"cat": 8, "dog": 8})
    (root / "emu").mkdir()
    extra = ("data.name=image_folder", f"data.root={root}")
    with pytest.raises(DataError, match="without any image: emu.*data.bad_images=skip"):
        build_sets(cfg_for(tmp_path, *extra))
    sets = build_sets(cfg_for(tmp_path, *extra, "data.bad_images=skip"))
    assert sets.train.classes == ["cat", "dog"]
    assert "left out 1 class folders without any image (data.bad_images=skip): emu" in (
        capsys.readouterr().err
    )
    assert cli(["data", "check", str(root)]) == 0
    assert "class folders without any image" in capsys.readouterr().out


def test_a_cut_jpeg_in_own_data_is_found_at_start_not_mid_epoch(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", {"cat": 8, "dog": 8})
    whole = (root / "dog" / "img_3.jpg").read_bytes()
    (root / "dog" / "img_3.jpg").write_bytes(whole[: len(whole) // 2])  # the header still opens
    extra = ("data.name=image_folder", f"data.root={root}")
    args = ["train", str(RECIPE), *file_overrides(tmp_path / "run", *extra)]
    assert cli(args) == 2
    assert "do not open" in capsys.readouterr().err and not (tmp_path / "run").exists()
    sets = build_sets(cfg_for(tmp_path, *extra, "data.bad_images=skip"))
    assert sum(len(s) for s in (sets.train, sets.test)) == 15
