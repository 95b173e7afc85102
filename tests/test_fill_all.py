"""The cross-table queue: what it runs, in which order, and what a time budget stops or skips."""

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading

import pytest
from conftest import ROOT

from camlt import cluster
from camlt.checkpoint import RunLock

sys.path.insert(0, str(ROOT / "benchmarks"))
import runner  # noqa: E402
import table  # noqa: E402

CE = table.Row("CE", "configs/fmnist_lt.yaml", ["model.head=linear"])
CRT = table.Row("cRT", "configs/stage2_crt.yaml", depends="CE")
FOCAL = table.Row("focal", "configs/fmnist_lt.yaml", ["loss.name=focal"], seeds=(0,))
FAKE = """
import json, pathlib, sys, time
run_dir = pathlib.Path(sys.argv[1])
time.sleep(float(sys.argv[2]))
run_dir.mkdir(parents=True, exist_ok=True)
final = {"metrics": {"overall": 0.5}, "train_counts": [2, 1], "classes": ["a", "b"], "epochs": 1}
(run_dir / "final_metrics.json").write_text(json.dumps(final))
"""


def test_the_queue_leads_with_first_and_copies_shared_results_instead_of_retraining():
    kept = {"overrides": [], "metrics": {"overall": 0.5}}
    results = {"a": {"CE/seed0": kept}, "b": {}}
    queue = runner.build_queue({"a": [CE, CRT], "b": [CE, FOCAL]}, ["focal"], results, (0, 1))
    assert [t.key for t in queue] == ["focal/seed0", "CE/seed1", "cRT/seed0", "cRT/seed1"]
    assert results["b"]["CE/seed0"] is kept  # the copy, not a run
    assert queue[1].tables == ["a", "b"]
    assert queue[0].cost == 31 and queue[2].cost == 11  # 30 epochs + 1; cRT's 10 + 1


def _fake_runs(monkeypatch, tmp_path, seconds: dict[str, float]) -> None:
    """Runs that sleep for a while (by row name) and then leave a final_metrics.json."""
    monkeypatch.setattr(table, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()

    def command(row, seed, runs_dir, extra):
        run_dir = runner.run_dir_of(row.name, seed, runs_dir)
        return [sys.executable, "-c", FAKE, str(run_dir), str(seconds.get(row.name, 0))]

    monkeypatch.setattr(runner, "train_command", command)


def test_stage2_waits_for_its_stage1_and_every_table_keeps_the_result(tmp_path, monkeypatch):
    _fake_runs(monkeypatch, tmp_path, {"CE": 0.3})
    results = {"a": {}, "b": {}}
    queue = runner.build_queue({"a": [CE, CRT], "b": [CE]}, [], results, (0,))
    runs = tmp_path / "runs"
    outcome = runner.fill_queue(queue, results, runs, 2, 60, extra=("train.amp=off",))
    assert outcome["finished"] == ["CE/seed0", "cRT/seed0"]  # cRT did not start beside CE
    saved = json.loads((tmp_path / "results" / "b.json").read_text())
    assert list(saved) == ["CE/seed0"] and saved["CE/seed0"]["wall_s"] >= 0.3
    assert saved["CE/seed0"]["overrides"] == ["model.head=linear", "train.amp=off"]
    assert results["a"]["cRT/seed0"]["overrides"][0] == f"model.init_from={runs / 'CE-seed0'}"
    assert (tmp_path / "runs" / "cRT-seed0.log").is_file()


def test_the_budget_stops_what_runs_and_skips_what_cannot_finish(tmp_path, monkeypatch):
    _fake_runs(monkeypatch, tmp_path, {"short": 1.0, "CE": 30})
    short = table.Row("short", "configs/fmnist_lt.yaml", ["train.epochs=10"], seeds=(0,))
    results = {"a": {}}
    queue = runner.build_queue({"a": [short, CE, CRT]}, [], results, (0, 1))
    outcome = runner.fill_queue(queue, results, tmp_path / "runs", jobs=2, budget_s=3)
    assert outcome["finished"] == ["short/seed0"]
    assert outcome["stopped"] == ["CE/seed0"]  # started before any timing existed, then stopped
    # CE/seed1 would need 31/11 x the short run's time; the cRT rows lost their stage 1
    assert sorted(outcome["skipped"]) == ["CE/seed1", "cRT/seed0", "cRT/seed1"]
    assert list(results["a"]) == ["short/seed0"]


def test_a_stage2_row_whose_stage1_checkpoint_is_elsewhere_is_left_out(tmp_path):
    kept = {"overrides": [], "metrics": {"overall": 0.5}}
    results = {"a": {"CE/seed0": kept, "CE/seed1": kept}}
    queue = runner.build_queue({"a": [CE, CRT]}, [], results, (0, 1, 2))
    runs = tmp_path / "runs"
    (runs / "CE-seed1").mkdir(parents=True)
    (runs / "CE-seed1" / "checkpoint.pt").write_bytes(b"")
    # seed 0: kept, but trained elsewhere; seed 1: here; seed 2: CE is queued first
    assert [t.key for t in runner.without_stage1(queue, runs)] == ["cRT/seed0"]


def test_speed_only_overrides_keep_a_row_in_its_table():
    assert runner.table_and_budget("t", []) == ("t", "recipe")
    assert runner.table_and_budget("t", ["train.compile=reduce-overhead"]) == ("t", "recipe")
    assert runner.table_and_budget("t", ["train.epochs=200", "train.compile=default"]) == (
        "t-train.epochs200",
        "train.epochs200",
    )


def test_a_second_driver_of_the_same_table_keeps_the_first_ones_rows(tmp_path, monkeypatch):
    _fake_runs(monkeypatch, tmp_path, {})
    path = tmp_path / "results" / "a.json"
    other = {"overrides": [], "metrics": {"overall": 0.9}}

    def start_and_meanwhile_another_driver_saves(*args, **kwargs):
        table.atomic_write_json(path, {**table.load(path), "focal/seed0": other})
        return real(*args, **kwargs)

    real = runner.start
    monkeypatch.setattr(runner, "start", start_and_meanwhile_another_driver_saves)
    results = runner.fill_table("a", [CE], (0,), tmp_path / "runs", [])
    saved = json.loads(path.read_text())
    assert set(saved) == {"CE/seed0", "focal/seed0"} and saved["focal/seed0"] == other
    assert set(results) == set(saved)


def test_a_save_waits_for_the_other_drivers_write_instead_of_racing_it(tmp_path):
    path = tmp_path / "a.json"
    other = {"overrides": [], "metrics": {"overall": 0.9}}
    saver = threading.Thread(target=runner.save_result, args=(path, {}, "CE/seed0", {"x": 1}))
    with RunLock(tmp_path, wait=True):  # the other driver, between its read and its write
        saver.start()
        saver.join(timeout=0.5)
        assert saver.is_alive()  # ours waits instead of reading the stale file
        table.atomic_write_json(path, {"focal/seed0": other})
    saver.join(timeout=10)
    assert json.loads(path.read_text()) == {"focal/seed0": other, "CE/seed0": {"x": 1}}


def test_a_row_lists_its_seeds_in_order_whatever_order_they_finished_in(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    entry = {"machine": "cpu", "epochs": 1, "torch": "x", "metrics": {"overall": 0.5}}
    finished = {f"CE/seed{s}": {**entry, "seed": s} for s in (0, 2, 1)}
    table.atomic_write_json(tmp_path / "a.json", finished)
    assert "| CE | 0,1,2 | 50.0 ± 0.0 |" in table.render("a", [CE], "t")


def _rendered(tmp_path, monkeypatch, precisions: dict[str, str | None]) -> str:
    """The table of kept runs keyed "row/seedN", each with its precision (None: a run kept
    before the field existed)."""
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    entry = {"machine": "cpu", "epochs": 1, "torch": "x", "metrics": {"overall": 0.5}}
    kept = {}
    for key, precision in precisions.items():
        kept[key] = {**entry, "seed": int(key.rsplit("seed", 1)[1])}
        if precision:
            kept[key]["precision"] = precision
    table.atomic_write_json(tmp_path / "a.json", kept)
    return table.render("a", [CE, FOCAL], "t")


def test_the_footer_says_which_precision_each_row_was_computed_in(tmp_path, monkeypatch):
    text = _rendered(tmp_path, monkeypatch, {"CE/seed0": None, "focal/seed0": "bf16"})
    assert 'Machine: cpu; fp32; 1 epochs; torch x: "CE".' in text  # kept before the field existed
    assert 'Machine: cpu; bf16; 1 epochs; torch x: "focal".' in text


def test_a_row_whose_seeds_ran_on_two_machines_names_the_seeds_of_each(tmp_path, monkeypatch):
    runs = {"CE/seed0": None, "CE/seed1": "bf16", "CE/seed2": "bf16", "focal/seed0": "bf16"}
    text = _rendered(tmp_path, monkeypatch, runs)
    assert 'Machine: cpu; fp32; 1 epochs; torch x: "CE" (seed 0).' in text
    assert 'Machine: cpu; bf16; 1 epochs; torch x: "CE" (seed 1,2), "focal".' in text


def test_a_balanced_run_has_no_tail_of_its_own(tmp_path, monkeypatch):
    """Equal class counts leave head and tail to a tie-break: the table shows '-' there."""
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    metrics = {"overall": 0.9, "many": 0.9, "head": 0.95, "middle": 0.9, "tail": 0.85}
    entry = {"machine": "cpu", "epochs": 1, "torch": "x", "seed": 0, "metrics": metrics}
    table.atomic_write_json(tmp_path / "a.json", {"CE/seed0": {**entry, "train_counts": [6, 6, 6]}})
    text = table.render("a", [CE], "t")
    assert "| CE | 0 | 90.0 | 90.0 | - | - | - | - | - | - |" in text
    assert "no head, middle, tail or rarest classes" in text


def test_the_command_line_picks_the_executor_and_each_runs_threads(tmp_path):
    options = dict.fromkeys(("timeout_min", "folder", "cpus_per_task", "mem_gb", "partition"))
    options |= dict.fromkeys(("account", "qos", "constraint"))
    args = argparse.Namespace(
        cluster="local", jobs=2, runs_dir=tmp_path, gpus_per_node=0, **options
    )
    ex, threads = runner.executor_of(args)
    assert cluster.kind_of(ex) == "local" and threads == max(1, (os.cpu_count() or 1) // 2)
    assert ex.folder.parent == tmp_path / "submitit"  # a folder per session (local job ids)
    args.cluster, args.gpus_per_node = "slurm", 2
    with pytest.raises(cluster.ClusterError, match="each table run is one process on one GPU"):
        runner.executor_of(args)


def test_a_printed_command_pasted_into_a_shell_runs_the_same_words(tmp_path, monkeypatch, capsys):
    """An override naming ``$(...)`` is printed quoted: pasted back, it is a word, not a command."""
    _fake_runs(monkeypatch, tmp_path, {})
    hostile = f"data.root=$(touch {tmp_path / 'pwned'})"
    one_line = "; ".join(FAKE.strip().splitlines()[1:])  # the fake run as one line

    def command(row, seed, runs_dir, extra):
        run_dir = runner.run_dir_of(row.name, seed, runs_dir)
        return [
            sys.executable,
            "-c",
            f"import json, pathlib, sys, time; {one_line}",
            str(run_dir),
            "0",
            hostile,
            "two words",
        ]

    monkeypatch.setattr(runner, "train_command", command)
    results = {"a": {}}
    queue = runner.build_queue({"a": [FOCAL]}, [], results, (0,))
    runner.fill_queue(queue, results, tmp_path / "runs", 1, 60)
    printed = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    assert len(printed) == 1 and shlex.split(printed[0])[-2:] == [hostile, "two words"]
    subprocess.run(["bash", "-c", printed[0]], check=True)  # the fake run, pasted
    assert not (tmp_path / "pwned").exists()
