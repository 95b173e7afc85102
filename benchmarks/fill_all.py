"""Fill every results table from one queue: the runs that matter most first, ``--jobs`` at a time,
none started that the time budget would cut short. Made for a lent GPU's few minutes; the same
code path serves a laptop and a SLURM cluster (submitit's local executor, or a job array).

    python benchmarks/fill_all.py --dry-run              # the queue, in order, and nothing else
    python benchmarks/fill_all.py --jobs 8 --budget-s 500
    python benchmarks/fill_all.py --cluster slurm --partition gpu --gpus-per-node 1 --time 240

A (row, seed) that several tables list is trained once and kept in each of them. Each finished run
is saved as it finishes; at the end of the budget the runs still going are cancelled (a cancelled
run resumes from its last checkpoint when the table is filled again on the same disk). Afterwards
every table's markdown and README block are rebuilt.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import ablation
import baselines
import cloudpickle
import clutter
import foundation_table
import full_recipe
import recipes
import subsets
import table
from table import Row

from camlt import cluster
from camlt.config import COMPILE_MODES, load_config
from camlt.rundir import CHECKPOINT

if TYPE_CHECKING:
    import submitit

TABLES = {
    "foundation": foundation_table.ROWS,
    "ablation": ablation.ROWS,
    "baselines": baselines.ROWS,
    "full_recipe": full_recipe.ROWS,
    "recipes": recipes.ROWS,
    "clutter": clutter.ROWS,
    "subsets": subsets.ROWS,
}
SCRIPTS = {
    "foundation": "foundation_table.py",
    "ablation": "ablation.py",
    "baselines": "baselines.py",
    "full_recipe": "full_recipe.py",
    "recipes": "recipes.py",
    "clutter": "clutter.py",
    "subsets": "subsets.py",
}
# What decides the issues' open questions comes first; long runs early, so they can finish. The
# 200-epoch runs beyond the recipe's default come last: each costs as much as 6 rows of 30 epochs.
FULL = [f"{full_recipe.PREFIX}{name}" for name in full_recipe.NAMES]
FIRST = [
    FULL[0],
    "ceiling: balanced, CE + linear",
    "hard: CAMC + balanced softmax",
    "hard: normalized s=16 + balanced softmax",
    "hard: CE + linear",
    "hard: CE + normalized s=16",
    baselines.BALANCED_SOFTMAX,
    "hard: CAMC full",
    *(row.name for row in baselines.ROWS if row.depends),
    *(f"hard: CE + normalized s={s}" for s in ablation.SCALES),
    *(f"hard: {name}" for name in ablation.CAMC_ROWS),
    "standard: CE + linear",
    "standard: CE + normalized s=16",
    *(f"standard: {name}" for name in ablation.BEST_CAMC),
    *FULL[1:3],
    *recipes.FIRST,
    *clutter.FIRST,
    *(row.name for row in subsets.ROWS),  # the subset's share of the spread (issue 33)
]


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
        and not (table.run_dir_of(t.row.depends, t.seed, runs_dir) / CHECKPOINT).is_file()
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
        cloudpickle.register_pickle_by_value(table)  # the node runs table.machine_of unimported
        run_dir = table.run_dir_of(task.row.name, task.seed, runs_dir)
        after = functools.partial(table.machine_of, run_dir, threads)
    return cluster.CommandJob(
        table.train_command(task.row, task.seed, runs_dir, extra),
        table.log_path(task.row, task.seed, runs_dir),
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
        log = table.log_path(task.row, task.seed, runs_dir)
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
    entry = table.collect(run.task.row, run.task.seed, runs_dir, extra, wall, threads, machine_name)
    for name in run.task.tables:
        table.save_result(table.RESULTS / f"{name}.json", results[name], key, entry)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs at a time (default 1 here, each with cores/jobs threads; on SLURM no limit)",
    )
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="seconds to spend")
    parser.add_argument("--runs-dir", type=Path, default=table.ROOT / "runs/benchmarks/recipe")
    parser.add_argument(
        "--amp",
        choices=("auto", "off", "bf16", "fp16"),
        help="train.amp for every run (off on a GPU: the fp32 of the CPU runs beside them)",
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="train.compile for every run (speed only: the rows stay in their tables)",
    )
    parser.add_argument(
        "--max-cost",
        type=float,
        default=float("inf"),
        help="leave out runs longer than this many Fashion-MNIST-LT epochs (the 200-epoch rows "
        "cost 201, the ceiling 146, a 30-epoch row 31)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the queue and stop")
    parser.add_argument(
        "--cluster",
        choices=cluster.KINDS,
        default="local",
        help="where the runs go: this machine, or a SLURM job array (docs/cluster.md)",
    )
    cluster.add_resource_arguments(parser, tasks=False)
    args = parser.parse_args()
    args.jobs = args.jobs or (1 if args.cluster == "local" else float("inf"))
    results = {name: table.load(table.RESULTS / f"{name}.json") for name in TABLES}
    queue = build_queue(TABLES, FIRST, results)
    too_long = [t.key for t in queue if t.cost > args.max_cost]
    orphans = [t.key for t in without_stage1(queue, args.runs_dir)]
    queue = [t for t in queue if t.cost <= args.max_cost and t.key not in orphans]
    for task in queue:
        print(f"{task.cost:6.0f}  {task.key}  ({', '.join(task.tables)})")
    print(f"{len(queue)} runs, {sum(t.cost for t in queue):.0f} LT epochs in all")
    if too_long:
        print(f"left out (over --max-cost {args.max_cost:g}): {', '.join(too_long)}")
    if orphans:
        print(f"left out (no stage-1 checkpoint in {args.runs_dir}): {', '.join(orphans)}")
    if args.dry_run:
        return
    table.RESULTS.mkdir(parents=True, exist_ok=True)
    for name, kept in results.items():  # copies between tables
        if kept:
            table.atomic_write_json(table.RESULTS / f"{name}.json", kept)
    extra = [f"train.amp={args.amp}"] if args.amp else []
    extra += [f"train.compile={args.compile}"] if args.compile else []
    try:
        ex, threads = executor_of(args)
        outcome = fill_queue(
            queue, results, args.runs_dir, args.jobs, args.budget_s, extra, ex, threads
        )
    except cluster.ClusterError as err:
        raise SystemExit(f"fill_all: {err}") from None
    for kind, keys in outcome.items():
        print(
            f"{kind}: {len(keys)}"
            + (f" ({', '.join(keys)})" if keys and kind != "finished" else "")
        )
    for name in TABLES:
        script = table.ROOT / "benchmarks" / SCRIPTS[name]
        subprocess.run([sys.executable, str(script), "--render-only"], check=False)
    if outcome["failed"]:
        raise SystemExit(f"{len(outcome['failed'])} run(s) failed; the others are kept")


if __name__ == "__main__":
    main()
