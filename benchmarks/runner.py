"""The one runner of the results tables: each (row, seed) trained once, as a submitit job (on this
machine, or a SLURM job array), the rows that matter most first, ``--jobs`` at a time, none
started that a time budget would cut short, each result kept as it finishes.

A table script (``python benchmarks/baselines.py --jobs 2``) fills its own table through
``main``; ``benchmarks/fill_all.py`` fills every table from one queue. A killed or cancelled run
resumes from its last checkpoint when the table is filled again on the same disk.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle
import table
import torch
from table import Row, load, machine, render

from camlt import cluster
from camlt.checkpoint import RunLock, atomic_write_json, read_json, read_jsonl
from camlt.config import load_config
from camlt.rundir import CHECKPOINT, FINAL_FILE, METRICS_FILE

if TYPE_CHECKING:
    import submitit

# Overrides that change how fast a run trains, not what it learns: they keep a row in its table.
SPEED_ONLY = ("train.compile=", "train.threads=")  # how fast, not what is learned
# Extra command-line overrides a dependent (stage-2) row does not take: it has its own schedule.
STAGE1_ONLY = ("train.epochs=", "train.milestones=", "train.warmup_epochs=", "train.schedule=")


def run_dir_of(name: str, seed: int, runs_dir: Path) -> Path:
    """Where the run of one (row, seed) lives."""
    return runs_dir / f"{re.sub(r'[^A-Za-z0-9._=-]+', '_', name)}-seed{seed}"


def save_result(path: Path, results: dict, key: str, entry: dict) -> None:
    """Add one result to ``results`` and to the file, keeping what others wrote there meanwhile.

    Two drivers of the same table (e.g. two ``--rows`` launches) each hold their own copy of
    the file: the re-read keeps the other's new rows, and the lock keeps its write from landing
    between our read and our write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with RunLock(path.parent, wait=True):  # the results folder's one lock, camlt's own
        results.update({**load(path), key: entry})
        atomic_write_json(path, results)


def train_seconds(run_dir: Path) -> float | None:
    """Seconds the run spent in training epochs, over all its (resumed) sittings; None if unknown.

    Unlike ``wall_s`` it does not shrink when the run was already finished (a row shared with
    another table) nor grow with evaluation or a busy machine's waits between sittings.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    return round(sum((r.get("epoch_s", 0.0) for r in read_jsonl(path)), 0.0), 1)


def row_extra(row: Row, seed: int, runs_dir: Path, extra: list[str]) -> list[str]:
    """The overrides added to a row's own: a stage-2 row starts from its stage-1 run."""
    if not row.depends:
        return extra
    extra = [o for o in extra if not o.startswith(STAGE1_ONLY)]
    return [f"model.init_from={run_dir_of(row.depends, seed, runs_dir)}", *extra]


def train_command(row: Row, seed: int, runs_dir: Path, extra: list[str]) -> list[str]:
    """The ``camlt train`` command of one (row, seed)."""
    return [
        sys.executable,
        "-m",
        "camlt.cli",
        "train",
        str(table.ROOT / row.config),
        *row.overrides,
        *row_extra(row, seed, runs_dir, extra),
        f"train.seed={seed}",
        f"train.run_dir={run_dir_of(row.name, seed, runs_dir)}",
        "train.progress=false",
        "--resume",
    ]


def machine_of(run_dir: Path, threads: int) -> str:
    """``machine`` for a finished run, where it ran: a cluster job calls it on its node."""
    final = read_json(run_dir / FINAL_FILE, required=("metrics",))
    return machine(final.get("config", {}).get("train", {}).get("device", "auto"), threads)


def collect(
    row: Row,
    seed: int,
    runs_dir: Path,
    extra: list[str],
    wall_s: float,
    threads: int,
    machine_name: str | None = None,
) -> dict:
    """The kept result of a finished (row, seed): its final metrics and where they came from
    (``machine_name``: ``machine_of`` as the job's node told it; default this machine)."""
    run_dir = run_dir_of(row.name, seed, runs_dir)
    final = read_json(run_dir / FINAL_FILE, required=("metrics",))
    return {
        "metrics": final["metrics"],
        "train_counts": final["train_counts"],
        "classes": final["classes"],
        "epochs": final["epochs"],
        "precision": final.get("precision", "fp32"),
        "seed": seed,
        "row": row.name,
        "overrides": row.overrides + row_extra(row, seed, runs_dir, extra),
        "machine": machine_name or machine_of(run_dir, threads or torch.get_num_threads()),
        "torch": torch.__version__,
        "wall_s": round(wall_s, 1),  # this call's time, evaluation included
        "train_s": train_seconds(run_dir),
    }


def log_path(row: Row, seed: int, runs_dir: Path) -> Path:
    run_dir = run_dir_of(row.name, seed, runs_dir)
    return run_dir.with_name(run_dir.name + ".log")


LOCAL_HINT = "fill the tables on this machine with --cluster local"
# A step's cost against a plain one (benchmarks/results/sam_cost.md: 2.01x and 2.74x).
SAM_STEP_COST = {"off": 1.0, "sam": 2.0, "imbsam": 2.7}
# Only runs of at least this cost set the pace: a post-hoc stage 2 (cost 1) is all start-up.
MIN_PACE_COST = 10


@dataclass
class Task:
    """One (row, seed) to train, the tables that keep its result, and its cost in LT epochs."""

    row: Row
    seed: int
    tables: list[str]
    cost: float

    @property
    def key(self) -> str:
        return f"{self.row.name}/seed{self.seed}"


def cost_of(row: Row) -> float:
    """Training epochs, in units of one Fashion-MNIST-LT epoch, plus one for start-up and tests."""
    extra = ["model.init_from=stage1"] if row.depends else []
    cfg = load_config(table.ROOT / row.config, row.overrides + extra)
    balanced = 60_000 / 12_406 if cfg.data.balanced else 1
    return cfg.train.epochs * balanced * SAM_STEP_COST[cfg.train.sam] + 1


def build_queue(
    tables: dict[str, list[Row]], first: list[str], results: dict[str, dict], seeds=(0, 1, 2)
) -> list[Task]:
    """The missing (row, seed) pairs of every table, rows named in ``first`` leading in that order.

    A result that one table has and another lacks is copied into ``results``, not retrained.
    """
    rows: dict[str, Row] = {}
    where: dict[str, list[str]] = {}
    for name, table_rows in tables.items():
        for row in table_rows:
            rows.setdefault(row.name, row)
            where.setdefault(row.name, []).append(name)
    unknown = [name for name in first if name not in rows]
    if unknown:
        raise SystemExit(f"rows {unknown} are in no table; the rows are {sorted(rows)}")
    queue = []
    for name in dict.fromkeys([*first, *rows]):
        row = rows[name]
        for seed in row.seeds or seeds:
            key = f"{name}/seed{seed}"
            have = [results[t][key] for t in where[name] if key in results[t]]
            for t in where[name]:
                if have:
                    results[t].setdefault(key, have[0])
            if not have:
                queue.append(Task(row, seed, where[name], cost_of(row)))
    return queue


def without_stage1(queue: list[Task], runs_dir: Path) -> list[Task]:
    """Stage-2 tasks whose stage-1 result is kept but whose checkpoint is not in ``runs_dir``
    (trained on another machine): they cannot start here, and retraining would be another run."""
    queued = {t.key for t in queue}
    return [
        t
        for t in queue
        if t.row.depends
        and f"{t.row.depends}/seed{t.seed}" not in queued
        and not (run_dir_of(t.row.depends, t.seed, runs_dir) / CHECKPOINT).is_file()
    ]


@dataclass
class Running:
    task: Task
    job: submitit.Job
    start: float


def job_of(
    task: Task, runs_dir: Path, extra: list[str], threads: int, kind: str
) -> cluster.CommandJob:
    """The submitit job of one run: its ``camlt train`` command, output in ``<run dir>.log``.

    A cluster job also names the machine it ran on (the GPU is the node's, not this one's).
    """
    after = None
    if kind != "local":
        cloudpickle.register_pickle_by_value(
            sys.modules[__name__]
        )  # the node runs machine_of unimported
        run_dir = run_dir_of(task.row.name, task.seed, runs_dir)
        after = functools.partial(machine_of, run_dir, threads)
    return cluster.CommandJob(
        train_command(task.row, task.seed, runs_dir, extra),
        log_path(task.row, task.seed, runs_dir),
        threads or None,
        cluster.job_env(kind, cluster.Resources()),
        after,
    )


def start(
    tasks: list[Task], ex: submitit.Executor, runs_dir: Path, extra: list[str], threads: int
) -> list[Running]:
    """Submit runs together: one SLURM job array, or one local job each."""
    kind = cluster.kind_of(ex)
    jobs = [job_of(task, runs_dir, extra, threads, kind) for task in tasks]
    for job in jobs:
        print("+", shlex.join(job.command), flush=True)
    submitted = cluster.submit(ex, jobs, [shlex.join(job.command) for job in jobs], LOCAL_HINT)
    now = time.time()
    for task, job in zip(tasks, submitted, strict=True):
        log = log_path(task.row, task.seed, runs_dir)
        print(f"  {task.key}: job {job.job_id}, output in {log}", flush=True)
    return [Running(task, job, now) for task, job in zip(tasks, submitted, strict=True)]


def stop(run: Running) -> None:
    """End a run that the budget cut short; its last checkpoint stays for a later resume."""
    cluster.cancel(run.job)


def keep(
    run: Running,
    known: dict | None,
    results: dict[str, dict],
    runs_dir: Path,
    extra: list[str],
    threads: int,
) -> bool:
    """Save a finished run's result in every table that lists it; False (and why) if it failed."""
    key, wall = run.task.key, time.time() - run.start
    try:
        machine_name = cluster.outcome(run.job, known)
    except cluster.JobFailed as err:
        print(f"FAILED {key}: {err}", flush=True)
        return False
    entry = collect(run.task.row, run.task.seed, runs_dir, extra, wall, threads, machine_name)
    for name in run.task.tables:
        save_result(table.RESULTS / f"{name}.json", results[name], key, entry)
    return True


def blocked(task: Task, lost: set[str]) -> bool:
    """Whether the stage-1 run this task starts from failed, was skipped or was stopped."""
    return bool(task.row.depends) and f"{task.row.depends}/seed{task.seed}" in lost


def ready(task: Task, done: set[str]) -> bool:
    return not task.row.depends or f"{task.row.depends}/seed{task.seed}" in done


def fill_queue(
    queue: list[Task],
    results: dict[str, dict],
    runs_dir: Path,
    jobs: float,
    budget_s: float,
    extra: tuple[str, ...] = (),
    ex: submitit.Executor | None = None,
    threads: int | None = None,
    poll_s: float = 0.5,
) -> dict[str, list[str]]:
    """Run the queue until it is empty or the budget is spent; save each result as it comes.

    ``jobs`` runs are in flight at a time, through ``ex`` (default: submitit's local executor,
    with cores/jobs ``threads`` each). A task is skipped when the seconds per LT epoch measured
    so far say it would not finish. ``extra`` overrides go to every run (settings that leave the
    recipe alone, e.g. train.amp).
    """
    extra = list(extra)
    begin = time.time()
    if threads is None:  # local runs share this machine's cores
        threads = int(max(1, (os.cpu_count() or 1) // jobs))
    given = [o for o in extra if o.startswith("train.threads=")]
    if given and int(given[-1].split("=", 1)[1]) > 0:  # an override the runs train with
        threads = int(given[-1].split("=", 1)[1])
    ex = ex or cluster.executor("local", runs_dir / "submitit", cluster.Resources())
    done = {key for kept in results.values() for key in kept}
    outcome: dict[str, list[str]] = {"finished": [], "failed": [], "skipped": [], "stopped": []}
    rates: list[float] = []  # seconds per cost unit of the runs finished here
    running: list[Running] = []
    pending = list(queue)
    try:
        while pending or running:
            known = cluster.states([r.job for r in running])
            for run in [r for r in running if cluster.finished(r.job, known)]:
                running.remove(run)
                key, wall = run.task.key, time.time() - run.start
                if not keep(run, known, results, runs_dir, extra, threads):
                    outcome["failed"].append(key)
                    continue
                done.add(key)
                if run.task.cost >= MIN_PACE_COST:
                    rates.append(wall / run.task.cost)
                outcome["finished"].append(key)
                print(f"done {key} in {wall:.0f} s", flush=True)
            left = begin + budget_s - time.time()
            if len(outcome["failed"]) >= 3 and not outcome["finished"]:
                print("the first runs all failed: stopping the queue (see their logs)", flush=True)
                left = 0
            if left <= 0:
                for run in running:
                    stop(run)
                    outcome["stopped"].append(run.task.key)
                running.clear()
                break
            lost = {k for kind in ("failed", "skipped", "stopped") for k in outcome[kind]}
            for task in [t for t in pending if blocked(t, lost)]:
                pending.remove(task)
                outcome["skipped"].append(task.key)
            batch: list[Task] = []
            for task in [t for t in pending if ready(t, done)]:
                if len(running) + len(batch) >= jobs:
                    break
                pending.remove(task)
                if rates and statistics.median(rates) * task.cost > left:
                    outcome["skipped"].append(task.key)
                    continue
                batch.append(task)
            if batch:
                running += start(batch, ex, runs_dir, extra, threads)
            if not running and pending and not any(ready(t, done) for t in pending):
                outcome["skipped"] += [t.key for t in pending]  # waiting on nothing that can come
                break
            time.sleep(poll_s)
    except BaseException:  # Ctrl-C or an error: local runs end with the driver, cluster jobs go on
        for run in running:
            if not cluster.is_slurm(run.job):
                stop(run)
        raise
    outcome["skipped"] += [t.key for t in pending if t.key not in outcome["skipped"]]
    return outcome


def executor_of(args: argparse.Namespace) -> tuple[submitit.Executor, int]:
    """The executor of ``--cluster`` and the threads each run gets (0: SLURM's cores, untold)."""
    if args.cluster == "local":
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        res = cluster.Resources(name="camlt-table", timeout_min=args.timeout_min)
    else:
        if args.gpus_per_node > 1:
            raise cluster.ClusterError(
                f"--gpus-per-node {args.gpus_per_node}: each table run is one process on one GPU"
            )
        threads = args.cpus_per_task or 0
        res = replace(cluster.resources_from(args), tasks_per_node=1, name="camlt-table")
    folder = args.folder or args.runs_dir / "submitit"
    return cluster.executor(args.cluster, folder, res, LOCAL_HINT), threads


def fill_table(
    name: str,
    rows: list[Row],
    seeds: tuple[int, ...],
    runs_dir: Path,
    extra: list[str],
    only: list[str] | None = None,
    jobs: int = 1,
) -> dict:
    """Run one table's missing (row, seed) pairs through the queue, ``jobs`` at a time, saving
    the results file after each. ``only``: these rows (and the stage-1 rows they start from).

    A failed run is reported and skipped (with the rows that start from it); the others go on.
    """
    by_name = {row.name: row for row in rows}
    wanted = [r for r in rows if not only or r.name in only]
    for row in wanted:
        if row.depends and row.depends not in by_name:
            raise SystemExit(f"row '{row.name}' depends on unknown row '{row.depends}'")
        if row.depends and by_name[row.depends].depends:
            raise SystemExit(
                f"row '{row.depends}' is a stage-2 row; '{row.name}' cannot start from it"
            )
    names = {r.name for r in wanted}
    parents = {
        r.depends: by_name[r.depends] for r in wanted if r.depends and r.depends not in names
    }
    results = {name: load(table.RESULTS / f"{name}.json")}
    queue = build_queue({name: [*parents.values(), *wanted]}, [], results, seeds)
    outcome = fill_queue(queue, results, runs_dir, jobs, float("inf"), tuple(extra))
    lost = [*outcome["failed"], *outcome["skipped"]]
    if lost:
        raise SystemExit(
            f"{len(lost)} run(s) failed or were skipped: {', '.join(lost)}; the others are kept"
        )
    return results[name]


def table_and_budget(name: str, overrides: list[str]) -> tuple[str, str]:
    """The results table and runs folder of a sitting: overrides that change what is learned make
    a different budget, a different table, never mixed with the recipe's; speed-only ones do not."""
    changing = [o for o in overrides if not o.startswith(SPEED_ONLY)]
    if not changing:
        return name, "recipe"
    budget = "-".join(o.replace("/", "_").replace("=", "") for o in changing)
    return f"{name}-{budget}", budget


def main(
    name: str,
    rows: list[Row],
    title: str,
    default_seeds: tuple[int, ...] = (0, 1, 2),
    extra_columns: dict | None = None,
    argv: list[str] | None = None,
) -> None:
    """The command line every table script shares."""
    parser = argparse.ArgumentParser(description=f"Fill and render the '{name}' table.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds))
    parser.add_argument("--rows", nargs="+", help="only these rows")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        help="where the runs live (default runs/benchmarks/<budget>: shared by every table, so "
        "a row that two tables both list, e.g. 'hard: CE + linear', is trained once)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each with cores/jobs threads and its output in <run dir>.log (on "
        "2 cores, 2 jobs of 1 thread trained 1.14x to 1.45x the images/s of 1 job of 2 threads)",
    )
    parser.add_argument("--render-only", action="store_true", help="only rebuild the markdown")
    parser.add_argument(
        "overrides", nargs="*", help="extra overrides for every row, e.g. train.epochs=200"
    )
    args = parser.parse_args(argv)
    name, budget = table_and_budget(name, args.overrides)
    runs_dir = args.runs_dir or table.ROOT / "runs" / "benchmarks" / budget
    if args.rows:
        unknown = set(args.rows) - {r.name for r in rows}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; the rows are {[r.name for r in rows]}")
    if not args.render_only:
        fill_table(name, rows, tuple(args.seeds), runs_dir, args.overrides, args.rows, args.jobs)
    print(render(name, rows, title, extra_columns))
