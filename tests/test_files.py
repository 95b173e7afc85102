"""Image-file datasets: split files and their prefix layouts, own data, bad input, val selection."""

import json

import numpy as np
import pytest
import torch
from conftest import ROOT
from imagefiles import (
    file_overrides,
    image_folder,
    imagenet_lt,
    places_lt,
    write_jpeg,
    write_lines,
)

from camlt import engine
from camlt.config import load_config
from camlt.data import DataError, build_loaders, build_sets
from camlt.data.files import DrawSampler
from camlt.data.owndata import stratified_split
from camlt.data.paths import resolve_paths
from camlt.data.samplers import build_sampler
from camlt.data.splitfile import read_split_file
from camlt.errors import UsageError

RECIPE = ROOT / "configs" / "fmnist_lt.yaml"


def cfg_for(tmp_path, *extra):
    return load_config(RECIPE, file_overrides(tmp_path / "run", *extra))


def split_cfg(tmp_path, root, files, *extra):
    return cfg_for(
        tmp_path,
        "data.name=split_files",
        f"data.root={root}",
        f"data.train_file={files['train'].name}",
        f"data.test_file={files['test'].name}",
        *extra,
    )


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "s.txt", ["a.jpg 0", "", "# comment", "b.jpg"])
    with pytest.raises(DataError, match=r"s\.txt:4: expected 'relative/path label'"):
        read_split_file(path)
    write_lines(path, ["a.jpg 0", "b.jpg one"])
    with pytest.raises(DataError, match=r"s\.txt:2: label 'one' is not an integer"):
        read_split_file(path)
    parsed = read_split_file(write_lines(path, ["dir with space/a.jpg 3", "b.jpg 0"]))
    assert parsed.paths == ["dir with space/a.jpg", "b.jpg"] and parsed.labels.tolist() == [3, 0]


@pytest.mark.parametrize("foldered", [False, True])
def test_imagenet_lt_val_prefix_layouts_resolve(tmp_path, capsys, foldered):
    root = tmp_path / "inet"
    files = imagenet_lt(root, val_foldered=foldered)
    sets = build_sets(split_cfg(tmp_path, root, files))
    report = capsys.readouterr().err
    assert "21/21 images found" in report and "6/6 images found" in report
    if foldered:
        assert "suffix" in report and "-> 'val/n01440764/ILSVRC2012_val_00000001.JPEG'" in report
    else:
        assert "path mapping: exact" in report
    assert sets.train.classes == ["n01440764", "n01443537", "n01484850"]  # wnids kept
    assert sets.train.class_counts() == [12, 6, 3] and len(sets.test) == 6
    assert all(f.startswith(str(root)) for f in sets.test.files)
    image, label = sets.test[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 0


@pytest.mark.parametrize("disk", ["places365", "refoldered"])
def test_places_lt_prefix_layouts_resolve(tmp_path, capsys, disk):
    root = tmp_path / "places"
    files = places_lt(root, disk)
    sets = build_sets(split_cfg(tmp_path, root, files))
    report = capsys.readouterr().err
    assert "18/18 images found" in report and "6/6 images found" in report
    # train names repeat in every class: the class folder must pick the right file
    for path, label in zip(sets.train.files, sets.train.labels.tolist(), strict=True):
        assert ["airfield", "bakery", "canyon"][label] in path
    if disk == "places365":
        assert "-> 'val_256/Places365_val_00000001.jpg'" in report


def test_ambiguous_tails_are_not_guessed_and_rewrite_option(tmp_path):
    for folder in ("a", "b"):
        write_jpeg(tmp_path / folder / "x.jpg", 0, 1)
    res = resolve_paths(["other/x.jpg"], tmp_path)
    assert res.missing == [0] and res.ambiguous == 1
    res = resolve_paths(["other/x.jpg"], tmp_path, "other/->b/")
    assert res.files == [str(tmp_path / "b" / "x.jpg")] and "rewrite" in res.report("s")


def test_missing_images_are_named_then_fatal_or_skipped(tmp_path, capsys):
    root = tmp_path / "inet"
    files = imagenet_lt(root, val_foldered=False)
    (root / "train/n01443537/n01443537_2.JPEG").unlink()
    with pytest.raises(
        DataError, match=r"1 of 21 images .*ImageNet_LT_train\.txt:15 train/n01443537/n01443537_2"
    ):
        build_sets(split_cfg(tmp_path, root, files))
    sets = build_sets(split_cfg(tmp_path, root, files, "data.bad_images=skip"))
    assert sets.train.class_counts() == [12, 5, 3]
    assert "skipped 1 missing images" in capsys.readouterr().err


def test_corrupt_and_empty_images_fatal_or_skipped(tmp_path, capsys):
    root = tmp_path / "inet"
    files = imagenet_lt(root, val_foldered=False)
    (root / "train/n01440764/n01440764_0.JPEG").write_bytes(b"")
    (root / "train/n01440764/n01440764_1.JPEG").write_bytes(b"not a jpeg at all")
    damaged = root / "train/n01443537/n01443537_0.JPEG"  # a good header, a cut-off body
    damaged.write_bytes(damaged.read_bytes()[:-300])
    cfg = split_cfg(tmp_path, root, files, "train.batch_size=6")
    with pytest.raises(DataError, match=r"n014(40764_[01]|43537_0)\.JPEG: cannot decode image"):
        list(build_loaders(cfg).train)
    loaders = build_loaders(
        split_cfg(tmp_path, root, files, "train.batch_size=6", "data.bad_images=skip")
    )
    # the two whose header does not open are left out before the classes are counted
    assert loaders.train_counts == [10, 6, 3]
    assert "left out 2 unreadable images before counting classes" in capsys.readouterr().err
    seen = sum(len(y) for y in (b[1] for b in loaders.train))
    assert seen == 18 - 1  # 3 batches of 6, less the one that fails only when decoded
    assert loaders.train.bad_files == {str(damaged)}
    assert capsys.readouterr().err.count("skipped undecodable image") == 1


def test_label_checks_and_remap_table(tmp_path):
    root = tmp_path / "inet"
    files = imagenet_lt(root, val_foldered=False)
    imagenet = cfg_for(tmp_path, "data.name=imagenet_lt", f"data.root={root}")
    with pytest.raises(DataError, match="val split file not found: .*data.val_file=none"):
        build_sets(imagenet)
    (root / "ImageNet_LT_val.txt").write_text(files["test"].read_text())
    with pytest.raises(DataError, match="labels are not contiguous: 997 of 0..999"):
        build_sets(imagenet)
    original = files["train"].read_text()
    files["train"].write_text(original.replace(" 2\n", " 1000\n"))
    with pytest.raises(DataError, match=r"ImageNet_LT_train\.txt:19: label 1000 is out of range"):
        build_sets(imagenet)
    files["train"].write_text(original.replace(" 2\n", " 7\n"))
    with pytest.raises(DataError, match="not contiguous: 5 of 0..7 have no training image"):
        build_sets(split_cfg(tmp_path, root, files))
    files["test"].write_text(files["test"].read_text().replace(" 2\n", " 7\n"))
    cfg = split_cfg(tmp_path, root, files, "data.labels=remap")
    engine.train(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "label_map.json").read_text()) == {
        "0": 0,
        "1": 1,
        "2": 7,
    }


def test_image_folder_keeps_class_names_split_and_subsample(tmp_path):
    root = image_folder(tmp_path / "pets", {"cat": 12, "dog": 9, "emu": 6})
    cfg = cfg_for(
        tmp_path,
        "data.name=image_folder",
        f"data.root={root}",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "data.split_seed=3",
    )
    sets = build_sets(cfg)
    assert sets.train.classes == ["cat", "dog", "emu"]
    total = len(sets.train) + len(sets.val) + len(sets.test)
    assert total == 27 and sets.test.class_counts() == [2, 2, 1]
    assert not set(sets.train.files) & set(sets.test.files)
    again = build_sets(cfg)
    assert again.test.files == sets.test.files  # the split is seeded
    cut = build_sets(
        cfg_for(
            tmp_path,
            "data.name=image_folder",
            f"data.root={root}",
            "data.subsample=true",
            "data.imbalance=4",
            "data.test_fraction=0.2",
        )
    )
    counts = cut.train.class_counts()
    assert counts[0] == max(counts) and counts == [int(10 * 4 ** (-i / 2)) for i in range(3)]


def test_csv_with_class_names_and_with_integers(tmp_path):
    image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    rows = ["path,label"] + [f"{c}/img_{j}.jpg,{c}" for c in "ba" for j in range(4)]

    def sets_of(name, lines):
        write_lines(tmp_path / "imgs" / name, lines)
        return build_sets(cfg_for(tmp_path, "data.name=csv", f"data.csv_file=imgs/{name}",
                                  f"data.root={tmp_path}"))  # fmt: skip

    named = sets_of("names.csv", rows)
    assert named.train.classes == ["a", "b"] and named.test.class_counts() == [1, 1]
    assert all(
        "/imgs/a/" in f
        for f, y in zip(named.train.files, named.train.labels, strict=True)
        if y == 0
    )
    numbered = sets_of("ints.csv", [r.replace(",a", ",0").replace(",b", ",1") for r in rows[1:]])
    assert numbered.train.classes == ["a", "b"]  # the folder names become the class names
    with pytest.raises(DataError, match=r"bad\.csv:2: expected 'path,label', found 1 field"):
        sets_of("bad.csv", ["a/img_0.jpg,a", "a/img_1.jpg"])


def test_stratified_split_keeps_a_training_image_per_class():
    labels = np.array([0] * 10 + [1] * 2 + [2])
    train, val, test = stratified_split(labels, (0.2, 0.2), seed=0)
    assert np.bincount(labels[train], minlength=3).min() >= 1
    assert len(train) + len(val) + len(test) == 13 and len(np.intersect1d(train, test)) == 0


def test_draw_sampler_shards_compose_with_class_aware_sampling():
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 2)
    sampler = build_sampler("class", labels, 10, 3)
    full = DrawSampler(len(labels), True, seed=4, sampler=sampler)
    shards = [DrawSampler(len(labels), True, 4, sampler, (r, 2)) for r in range(2)]
    whole = full.indices().tolist()
    parts = [s.indices().tolist() for s in shards]
    assert len(parts[0]) == len(parts[1]) == 14  # 27 draws padded to 28
    assert sorted(parts[0] + parts[1]) == sorted(whole + whole[:1])
    counts = np.bincount(labels[whole].numpy(), minlength=3)
    assert counts.max() - counts.min() <= 1  # still class-balanced
    seeds = [dict(iter(s)) for s in shards]  # index -> augmentation seed
    assert set(seeds[0].values()).isdisjoint(seeds[1].values())
    evals = [DrawSampler(27, False, shard=(r, 2)).indices().tolist() for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(27))  # evaluation: no duplicates


def test_augmentation_does_not_depend_on_workers(tmp_path):
    root = tmp_path / "inet"
    files = imagenet_lt(root, val_foldered=False)
    batches = []
    for workers in (0, 2):
        cfg = split_cfg(tmp_path, root, files, f"train.workers={workers}")
        loader = build_loaders(cfg).train
        loader.set_epoch(1)
        batches.append([x for x, _ in loader])
    assert all(torch.equal(a, b) for a, b in zip(*batches, strict=True))


def test_val_split_selects_best_checkpoint(tmp_path):
    root = tmp_path / "inet"
    files = imagenet_lt(root, val_foldered=True)
    val = write_lines(root / "val.txt", files["test"].read_text().splitlines()[::2])
    # val is half of the test split: a leak, trained through on request and recorded in the run
    extra = (f"data.val_file={val.name}", "train.epochs=2", "data.leaks=warn")
    cfg = split_cfg(tmp_path, root, files, *extra)
    engine.train(cfg, tmp_path / "run")
    found = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert len(found["leaks"]) == 3 and all(" = val " in leak for leak in found["leaks"])
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    best = max(r["val"]["overall"] for r in records)
    assert final["selected_on_val"]["val_overall"] == best
    assert (tmp_path / "run" / "best.pt").is_file()
    chosen = final["selected_on_val"]["epoch"]
    assert records[chosen - 1]["val"]["overall"] == best


@pytest.mark.parametrize(
    "recipe, name, backbone",
    [
        ("imagenet_lt_resnext50", "imagenet_lt", "resnext50_32x4d"),
        ("imagenet_lt_resnet50", "imagenet_lt", "resnet50"),
        ("places_lt_resnet152", "places_lt", "resnet152"),
        ("inat2018_resnet50", "inat2018", "resnet50"),
    ],
)
def test_benchmark_recipes(recipe, name, backbone):
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml")
    assert (cfg.data.name, cfg.model.backbone) == (name, backbone)
    assert cfg.train.schedule == "cosine" and cfg.data.image_size == 224
    if name == "places_lt":
        from camlt.models import build_model

        with pytest.raises(UsageError, match="model.pretrained=.*no such file"):
            build_model(cfg.model, 365, 3, [10] * 365)
