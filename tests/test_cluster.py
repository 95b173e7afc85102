"""Runs through submitit: the local executor for real, and a real one-node SLURM cluster
(tests/slurm_cluster.py; skipped, with the reason, where it cannot start). Results made on
SLURM must equal the same runs made here: the tiny configs are deterministic."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import slurm_cluster
import submitit
import torch
from conftest import ROOT, tiny_overrides, write_fmnist

from camlt import cli, cluster, engine
from camlt.checkpoint import load_checkpoint, read_jsonl
from camlt.config import load_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import runner  # noqa: E402
import table  # noqa: E402

RECIPE = ROOT / "configs" / "fmnist_lt.yaml"


@pytest.fixture(scope="module")
def data(fmnist_root) -> Path:
    return fmnist_root


def tiny(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_overrides(root, run_dir) + list(extra)


def rows(root: Path) -> tuple[table.Row, table.Row]:
    """A table of two tiny runs (seeds 0 and 1) and a row whose data is missing."""
    overrides = [o for o in tiny_overrides(root, Path()) if not o.startswith("train.run_dir=")]
    ce = table.Row("CE", "configs/fmnist_lt.yaml", overrides, seeds=(0, 1))
    broken = table.Row("broken", "configs/fmnist_lt.yaml", [*overrides, "data.root=/no/such/dir"])
    return ce, broken


def fill(base: Path, table_rows: list[table.Row], **kwargs) -> tuple[dict, dict, str]:
    """Fill table "t" from nothing in ``base``: (outcome, results, what the runner printed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(table, "RESULTS", base / "results")
        results: dict[str, dict] = {"t": {}}
        queue = runner.build_queue({"t": table_rows}, [], results, seeds=(0,))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            outcome = runner.fill_queue(queue, results, base / "runs", budget_s=300, **kwargs)
    return outcome, results, printed.getvalue()


LOCAL_THREADS = max(1, (os.cpu_count() or 1) // 3)


@pytest.fixture(scope="module")
def local_table(data, tmp_path_factory):
    """The table filled by submitit's local executor (the default), its three runs at once."""
    base = tmp_path_factory.mktemp("local-table")
    return (*fill(base, list(rows(data)), jobs=3), base)


def test_the_local_executor_fills_a_table_and_names_a_failed_runs_logs(local_table):
    outcome, results, printed, base = local_table
    assert sorted(outcome["finished"]) == ["CE/seed0", "CE/seed1"]
    assert outcome["failed"] == ["broken/seed0"]
    saved = json.loads((base / "results" / "t.json").read_text())
    assert set(saved) == {"CE/seed0", "CE/seed1"} == set(results["t"])
    assert saved["CE/seed1"]["seed"] == 1 and 0 <= saved["CE/seed1"]["metrics"]["overall"] <= 1
    assert saved["CE/seed0"]["machine"] == table.machine("auto", LOCAL_THREADS)
    failed = next(line for line in printed.splitlines() if line.startswith("FAILED broken/seed0"))
    run_log = base / "runs" / "broken-seed0.log"
    assert f"its output: {run_log}" in failed and "/no/such/dir" in run_log.read_text()
    job_log = Path(re.search(r"see (\S+_log\.err)", failed).group(1))
    assert job_log.is_file() and "RuntimeError: exit 2" in job_log.read_text()


def test_a_job_tells_torch_distributed_where_submitit_placed_it():
    env = SimpleNamespace(
        global_rank=3, local_rank=1, num_tasks=4, num_nodes=2, job_id="77", hostnames=["a", "b"]
    )
    seen = cluster.torch_env(env)
    assert {k: seen[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "a",
    }
    assert seen["LOCAL_WORLD_SIZE"] == "2" and seen["MASTER_PORT"] == str(cluster.master_port("77"))
    one_node = cluster.torch_env(SimpleNamespace(**{**env.__dict__, "num_nodes": 1}))
    assert one_node["MASTER_ADDR"] == "127.0.0.1"  # no name to resolve on one node


def test_one_process_per_gpu_and_a_batch_that_divides(monkeypatch, tiny_cfg):
    args = SimpleNamespace(
        nodes=2,
        tasks_per_node=None,
        gpus_per_node=4,
        **dict.fromkeys(("cpus_per_task", "mem_gb", "timeout_min", "partition")),
        **dict.fromkeys(("account", "qos", "constraint")),
    )
    res = cluster.resources_from(args)
    assert (res.tasks_per_node, res.world) == (4, 8)
    assert cluster.slurm_parameters(res)["gpus_per_node"] == 4
    with pytest.raises(cluster.ClusterError, match="one process per GPU"):
        cluster.resources_from(SimpleNamespace(**{**args.__dict__, "tasks_per_node": 2}))
    with pytest.raises(cluster.ClusterError, match="train.batch_size=16 is the global batch"):
        cluster.check_world(tiny_cfg(), cluster.Resources(tasks_per_node=3))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert cluster.local_gpu_env(1) == {"CUDA_VISIBLE_DEVICES": "2"}
    assert cluster.local_gpu_env(0) == {"CUDA_VISIBLE_DEVICES": "2,5"}  # what camlt train sees


def submit(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["submit", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_without_sbatch_one_line_says_so_and_how_to_run_here(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, _, err = submit(capsys, str(RECIPE), *tiny(data, tmp_path / "run"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no SLURM cluster reachable" in err and "sbatch, srun, squeue not on PATH" in err
    assert "camlt submit --local" in err and "camlt train" in err


# ----------------------------------------------------------------------------- a real SLURM
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node cluster for this module's tests; every job cancelled and every daemon ended
    when they are done."""
    why = slurm_cluster.unavailable()
    if why:
        pytest.skip(why)
    one = slurm_cluster.OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        try:
            one.start()
        except RuntimeError as err:
            if os.environ.get("CI"):  # CI installs it (.ci/run): a failure there is a bug
                raise
            pytest.skip(f"SLURM did not start here: {err}")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(one.conf))
            yield one
    finally:
        one.stop()


def test_a_slurm_job_array_fills_the_table_as_the_local_executor_did(
    slurm, local_table, data, tmp_path
):
    _, local, _, _ = local_table
    res = cluster.Resources(cpus_per_task=1, timeout_min=10, name="camlt-test")
    ex = cluster.executor("slurm", tmp_path / "runs" / "submitit", res)
    ce, _ = rows(data)
    outcome, results, printed = fill(
        tmp_path, [ce], jobs=float("inf"), ex=ex, threads=LOCAL_THREADS
    )
    assert sorted(outcome["finished"]) == ["CE/seed0", "CE/seed1"], printed
    arrays = set(re.findall(r"CE/seed\d: job (\d+)_[01],", printed))
    assert len(arrays) == 1  # both runs went as one job array
    for key in ("CE/seed0", "CE/seed1"):
        assert results["t"][key]["metrics"] == local["t"][key]["metrics"]
        assert results["t"][key]["machine"] == local["t"][key]["machine"]  # told by the node


def test_two_processes_on_slurm_train_as_two_processes_here(slurm, data, tmp_path, capsys):
    on_slurm, here = tmp_path / "slurm", tmp_path / "local"
    with ThreadPoolExecutor(1) as beside:  # the local run meanwhile, through camlt submit too
        local = beside.submit(
            cli.main, ["submit", str(RECIPE), *tiny(data, here), "--tasks-per-node", "2", "--local"]
        )
        code, out, err = submit(
            capsys, str(RECIPE), *tiny(data, on_slurm), "--tasks-per-node", "2", "--wait"
        )
        assert code == 0, err
        assert local.result() == 0
    job_id = re.search(r"submitted job (\d+) \(slurm: 1 node\(s\) x 2", out).group(1)
    assert "global_rank=1(2)" in (on_slurm / "submitit" / f"{job_id}_1_log.out").read_text()
    a, b = (json.loads((d / "final_metrics.json").read_text())["metrics"] for d in (on_slurm, here))
    assert a == b
    w1, w2 = (load_checkpoint(d / "checkpoint.pt")["model"] for d in (on_slurm, here))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def until(ok, what: str, slurm, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while not ok():
        assert time.time() < deadline, f"{what} within {timeout_s} s\n{slurm.logs()}"
        time.sleep(0.05)


def epochs_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(read_jsonl(path)) if path.is_file() else 0


def test_a_preempted_then_killed_job_ends_as_an_uninterrupted_run(slurm, tmp_path, capsys):
    """Preempted (SIGUSR2, as SLURM signals it: submitit calls checkpoint() and requeues the
    job), then killed outright (SIGKILL) and requeued by hand (``scontrol requeue``): it
    resumes twice from its last checkpoint and ends with every metric and weight of a run never
    stopped."""
    root = write_fmnist(tmp_path / "fmnist", per_class_train=60)  # epochs long enough to hit
    overrides = tiny(root, tmp_path / "run", "data.n_max=60", "train.epochs=4")
    run, ref = tmp_path / "run", tmp_path / "ref"
    with ThreadPoolExecutor(1) as beside:  # the uninterrupted run, meanwhile
        reference = beside.submit(engine.train, load_config(RECIPE, overrides), ref)
        code, out, err = submit(capsys, str(RECIPE), *overrides, "--time", "10")
        assert code == 0, err
        job_id = re.search(r"submitted job (\d+)", out).group(1)

        # the first checkpoint, not the first metrics line: engine.fit logs the epoch a moment
        # before it saves it, and a run stopped between the two has nothing to resume from
        until(lambda: (run / "checkpoint.pt").is_file(), "a first checkpoint", slurm)
        slurm.run("scancel", "--signal=USR2", job_id)
        preempted_at = epochs_logged(run)
        slurm.release(job_id)
        until(
            lambda: running(slurm, job_id) and epochs_logged(run) > preempted_at,
            "an epoch more",
            slurm,
        )
        # SIGKILL to the training process, as the OOM killer or a dying node would: scancel
        # sends SIGTERM first, which submitit ignores, and KillWait later SIGKILL
        os.kill(int((run / ".lock").read_text()), signal.SIGKILL)
        until(lambda: slurm.show_job(job_id)["JobState"] == "FAILED", "the kill", slurm)
        slurm.run("scontrol", "requeue", job_id)
        slurm.release(job_id)
        job = submitit.SlurmJob(folder=run / "submitit", job_id=job_id)
        assert cluster.wait(job, poll_s=0.2, say=lambda _: None) == reference.result()

    assert slurm.show_job(job_id)["Restarts"] == "2"
    log = (run / "submitit" / f"{job_id}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in log and log.count("Starting with JobEnvironment") == 3
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]
    w1, w2 = (load_checkpoint(d / "checkpoint.pt")["model"] for d in (run, ref))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def running(slurm, job_id: str) -> bool:
    return slurm.show_job(job_id)["JobState"] == "RUNNING"


def test_an_unreachable_controller_is_named_as_such(slurm, tmp_path, data, monkeypatch, capsys):
    lines = slurm.conf.read_text().splitlines()
    dead = [
        f"SlurmctldPort={slurm_cluster.free_port()}" if line.startswith("SlurmctldPort=") else line
        for line in lines
        if not line.startswith("MessageTimeout=")
    ]
    conf = tmp_path / "slurm.conf"
    conf.write_text("\n".join([*dead, "MessageTimeout=1", ""]))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    code, _, err = submit(capsys, str(RECIPE), *tiny(data, tmp_path / "run"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no SLURM cluster reachable" in err and "Unable to contact slurm controller" in err
    assert "camlt submit --local" in err


def test_slurm_refusals_and_failed_jobs_are_told_with_their_command_and_logs(
    slurm, data, tmp_path, capsys
):
    code, _, err = submit(capsys, str(RECIPE), *tiny(data, tmp_path / "a"), "--partition", "nope")
    assert code == 2 and "Invalid partition name specified" in err
    assert f"the job: camlt train {RECIPE}" in err
    run = tmp_path / "b"
    code, _, err = submit(capsys, str(RECIPE), *tiny(data, run), "data.root=/no/such/dir", "--wait")
    assert code == 2 and re.search(r"job \d+ failed: .*/no/such/dir", err), err
    job_log = Path(re.search(r"see (\S+_log\.err)", err).group(1))
    assert job_log.parent == (run / "submitit").absolute() and "/no/such/dir" in job_log.read_text()
