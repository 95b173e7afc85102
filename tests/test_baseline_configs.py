"""The baselines' recipes load, and the table runner runs a stage-2 row after its stage-1 row."""

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from camlt.config import load_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import baselines  # noqa: E402
import runner  # noqa: E402
import table  # noqa: E402

RECIPES = sorted((ROOT / "configs" / "baselines").glob("*.yaml")) + sorted(
    (ROOT / "configs").glob("stage2_*.yaml")
)


def _stage2(path: Path) -> bool:
    return path.name.startswith("stage2_") or "method:" in path.read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_baseline_recipe_loads(path):
    extra = ["model.init_from=runs/stage1"] if _stage2(path) else []
    cfg = load_config(path, extra)
    assert cfg.train.epochs in ((0,) if cfg.stage2.method in ("taunorm", "posthoc") else (10, 200))
    if path.name.startswith("cifar"):
        assert cfg.data.name == path.name.split("_lt")[0] + "_lt" and cfg.data.imbalance == 100
    if "ldam_drw" in path.name:
        assert cfg.loss.drw_epoch == 160 and cfg.loss.ldam.scale == cfg.model.scale == 30


def test_every_row_of_the_baselines_table_loads():
    assert len({row.name for row in baselines.ROWS}) == len(baselines.ROWS)
    for row in baselines.ROWS:
        extra = ["model.init_from=runs/stage1"] if row.depends else []
        cfg = load_config(ROOT / row.config, row.overrides + extra)
        assert cfg.data.name == "fmnist_lt" and cfg.data.order == "hard"
        assert cfg.data.imbalance == 100 and cfg.model.backbone == "resnet32"
        if not row.depends:
            assert cfg.train.epochs == 30


def test_rows_shared_with_the_ablation_are_the_same_runs():
    """A name in both tables names one run directory, so both must mean the same training."""
    from test_camc import load_ablation

    ablation = {row.name: row for row in load_ablation().ROWS}
    shared = [row for row in baselines.ROWS if row.name in ablation]
    assert len(shared) >= 4  # CE, CE + normalized, CAMC full, CAMC + balanced softmax
    for row in shared:
        twin = ablation[row.name]
        assert (row.config, sorted(row.overrides), row.depends) == (
            twin.config,
            sorted(twin.overrides),
            twin.depends,
        ), row.name


# A stand-in for ``camlt train``: it logs the real command and its threads, then leaves the
# final_metrics.json a finished run leaves (or fails, for the rows named in argv[2]).
FAKE = """
import json, os, pathlib, sys
cmd, fail, calls = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
with open(calls, "a") as fh:
    fh.write(json.dumps({"cmd": cmd, "threads": os.environ.get("OMP_NUM_THREADS")}) + chr(10))
run_dir = pathlib.Path(next(c for c in cmd if c.startswith("train.run_dir=")).split("=", 1)[1])
if run_dir.name.split("-seed")[0] in fail:
    sys.exit(1)
run_dir.mkdir(parents=True)
final = {"metrics": {"overall": 0.5}, "train_counts": [2, 1], "classes": ["a", "b"], "epochs": 1}
(run_dir / "final_metrics.json").write_text(json.dumps(final))
"""


def _fake_trainer(monkeypatch, tmp_path, fail: tuple[str, ...] = ()):
    """Runs through the real queue whose ``camlt train`` is FAKE; returns the calls it logged."""
    monkeypatch.setattr(table, "RESULTS", tmp_path / "results")
    log = tmp_path / "calls.jsonl"
    real = runner.train_command

    def command(row, seed, runs_dir, extra):
        cmd = real(row, seed, runs_dir, extra)
        return [sys.executable, "-c", FAKE, json.dumps(cmd), json.dumps(list(fail)), str(log)]

    monkeypatch.setattr(runner, "train_command", command)
    return lambda: (
        [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    )


STAGES = [
    table.Row("CE", "configs/fmnist_lt.yaml", ["model.head=linear"]),
    table.Row("cRT", "configs/stage2_crt.yaml", depends="CE"),
]


def test_a_dependent_row_runs_after_its_stage1_with_init_from(tmp_path, monkeypatch):
    calls = _fake_trainer(monkeypatch, tmp_path)
    extra = ["train.epochs=5", "train.threads=1"]
    runner.fill_table("t", STAGES, (3,), tmp_path / "runs", extra, ["cRT"])
    assert len(calls()) == 2  # the stage-1 row ran first although --rows named only cRT
    stage1, stage2 = (c["cmd"] for c in calls())
    assert "train.epochs=5" in stage1 and "train.epochs=5" not in stage2
    assert f"model.init_from={tmp_path / 'runs' / 'CE-seed3'}" in stage2
    assert "train.threads=1" in stage2
    runner.fill_table("t", STAGES, (3,), tmp_path / "runs", extra)
    assert len(calls()) == 2  # both kept, nothing rerun


def test_parallel_jobs_split_the_cores_and_log_to_files(tmp_path, monkeypatch):
    calls = _fake_trainer(monkeypatch, tmp_path)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    results = runner.fill_table("t", STAGES, (0, 1), tmp_path / "runs", [], jobs=2)
    assert sorted(results) == ["CE/seed0", "CE/seed1", "cRT/seed0", "cRT/seed1"]
    assert {c["threads"] for c in calls()} == {"2"}
    assert (tmp_path / "runs" / "CE-seed0.log").is_file()
    stage1_first = [c["cmd"][4].endswith("fmnist_lt.yaml") for c in calls()]
    assert stage1_first == [True, True, False, False]
    assert json.loads((tmp_path / "results" / "t.json").read_text()).keys() == results.keys()


def test_a_failed_run_skips_its_dependents_and_keeps_the_rest(tmp_path, monkeypatch):
    rows = [*STAGES, table.Row("focal", "configs/fmnist_lt.yaml", ["loss.name=focal"])]
    calls = _fake_trainer(monkeypatch, tmp_path, fail=("CE",))
    with pytest.raises(SystemExit, match="2 run\\(s\\) failed or were skipped: CE/seed0, cRT"):
        runner.fill_table("t", rows, (0,), tmp_path / "runs", [])
    assert len(calls()) == 2  # CE and focal; cRT never started
    saved = json.loads((tmp_path / "results" / "t.json").read_text())
    assert list(saved) == ["focal/seed0"]


def test_train_seconds_sums_the_epochs_of_every_sitting(tmp_path):
    assert runner.train_seconds(tmp_path) is None  # no run here
    lines = [{"epoch": 1, "epoch_s": 70.25}, {"epoch": 2, "epoch_s": 69.5, "overall": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert runner.train_seconds(tmp_path) == 139.8


def test_a_recipe_names_its_base_and_changes_only_what_differs(tmp_path):
    from camlt.config import ConfigError, to_yaml

    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.5\nmodel:\n  head: linear\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../base.yaml\ntrain:\n  lr: 0.05\n")
    cfg = load_config(child)
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.head) == (7, 0.05, "linear")
    assert "\nbase:" not in to_yaml(cfg) and "epochs: 7" in to_yaml(cfg)  # the whole config
    (tmp_path / "base.yaml").write_text("base: sub/child.yaml\n")
    with pytest.raises(ConfigError, match="form a circle"):
        load_config(child)
    child.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"child.yaml: base recipe nowhere.yaml not found"):
        load_config(child)
    child.write_text("base: [1, 2]\n")
    with pytest.raises(ConfigError, match="expected the path of another recipe"):
        load_config(child)


def test_the_baseline_recipes_are_short():
    """Each states its base and the keys that differ, no more."""
    for path in sorted((ROOT / "configs" / "baselines").glob("*.yaml")):
        keys = [line for line in path.read_text().splitlines() if line and line[0] != "#"]
        assert keys[0].startswith("base: "), path.name
        assert len(keys) <= 5, path.name


# The learning rate each source's code uses in its key epochs (0-based), written out here from the
# sources (LDAM-DRW's cifar_train.py: lr x epoch/5 for 1-based epochs 1..5, x0.01 after 160 and
# x0.0001 after 180; the community recipe: per-step warm-up over 5 epochs, x0.1 at 160 and 180).
LDAM_LR = {
    0: 0.02,
    1: 0.04,
    4: 0.1,
    5: 0.1,
    159: 0.1,
    160: 0.001,
    179: 0.001,
    180: 0.00001,
    199: 0.00001,
}
COMMUNITY_LR = {5: 0.1, 159: 0.1, 160: 0.01, 179: 0.01, 180: 0.001, 199: 0.001}
SCHEDULES = {
    "ce": LDAM_LR,
    "focal": LDAM_LR,
    "cb_focal": LDAM_LR,
    "ldam_drw": LDAM_LR,
    "ceiling": LDAM_LR,
    "balanced_softmax": LDAM_LR,
    "logit_adjust": LDAM_LR,
    "camc": COMMUNITY_LR,
}


@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt"])
@pytest.mark.parametrize("method", sorted(SCHEDULES))
def test_each_baseline_follows_its_sources_schedule(dataset, method):
    from camlt.engine import lr_factor

    path = ROOT / "configs" / "baselines" / f"{dataset}_{method}.yaml"
    text = path.read_text()
    assert "\n# source: " in text and "\n# departs: " in text  # named, with its departures
    cfg = load_config(path)
    steps = 96  # CIFAR-10-LT's 12,406 images in batches of 128, the last partial one dropped
    for epoch, lr in SCHEDULES[method].items():
        first = cfg.train.lr * lr_factor(epoch * steps, steps, cfg.train)
        last = cfg.train.lr * lr_factor(epoch * steps + steps - 1, steps, cfg.train)
        assert first == pytest.approx(lr) and last == pytest.approx(lr), (epoch, first, last)
    assert cfg.train.weight_decay == 2e-4 and cfg.train.batch_size == 128


def test_every_baseline_and_cifar_recipe_names_its_source():
    for path in sorted((ROOT / "configs" / "baselines").glob("*.yaml")):
        assert "\n# source: " in path.read_text(), path.name
    for name in ("cifar10_lt", "cifar100_lt", "cifar10_lt_strong", "cifar100_lt_strong"):
        assert "# source: " in (ROOT / "configs" / f"{name}.yaml").read_text(), name


def test_a_references_init_and_normalisation(tiny_cfg):
    import math

    import torch

    from camlt.data import build_sets
    from camlt.data.sources import DataError
    from camlt.models import build_model

    cfg = tiny_cfg("model.init=fan_in", "model.head=linear", "data.std=[0.5]", "data.mean=[0.25]")
    torch.manual_seed(0)
    model = build_model(cfg.model, 10, 1, [1] * 10)
    conv = model.backbone.layers[0].conv1.weight  # 16 x 16 x 3 x 3: fan_in 144
    assert conv.std().item() == pytest.approx(math.sqrt(2 / 144), rel=0.1)
    linear = model.head.classifier.weight  # 10 x 64: fan_in 64, kaiming's gain sqrt(2)
    assert linear.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.25)
    assert build_sets(cfg).train.std == (0.5,) and build_sets(cfg).train.mean == (0.25,)
    with pytest.raises(DataError, match=r"data.std=\[0.5, 0.5\]: fmnist_lt has 1 channel"):
        build_sets(tiny_cfg("data.std=[0.5,0.5]"))
