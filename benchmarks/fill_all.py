"""Fill every results table from one queue: the runs that matter most first, ``--jobs`` at a time,
none started that the time budget would cut short. Made for a lent GPU's few minutes; works on
any machine.

    python benchmarks/fill_all.py --dry-run              # the queue, in order, and nothing else
    python benchmarks/fill_all.py --jobs 8 --budget-s 500

A (row, seed) that several tables list is trained once and kept in each of them. Each finished run
is saved as it finishes; at the end of the budget the runs still going are stopped (a killed run
resumes from its last checkpoint when the table is filled again on the same disk). Afterwards every
table's markdown and README block are rebuilt.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ablation
import baselines
import foundation_table
import full_recipe
import recipes
import table
from table import Row

from camlt.config import COMPILE_MODES, load_config
from camlt.rundir import CHECKPOINT

TABLES = {
    "foundation": foundation_table.ROWS,
    "ablation": ablation.ROWS,
    "baselines": baselines.ROWS,
    "full_recipe": full_recipe.ROWS,
    "recipes": recipes.ROWS,
}
SCRIPTS = {
    "foundation": "foundation_table.py",
    "ablation": "ablation.py",
    "baselines": "baselines.py",
    "full_recipe": "full_recipe.py",
    "recipes": "recipes.py",
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
]


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
    return cfg.train.epochs * (60_000 / 12_406 if cfg.data.balanced else 1) + 1


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
    proc: subprocess.Popen
    start: float


def start(task: Task, runs_dir: Path, extra: list[str], threads: int) -> Running:
    """Launch one run in its own process group (so a deadline stops all of it)."""
    cmd = table.train_command(task.row, task.seed, runs_dir, extra)
    log_path = table.log_path(task.row, task.seed, runs_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "a") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Running(task, proc, time.time())


def stop(run: Running) -> None:
    """End a run that the budget cut short; its last checkpoint stays for a later resume."""
    try:
        os.killpg(run.proc.pid, signal.SIGTERM)
        run.proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()


def blocked(task: Task, lost: set[str]) -> bool:
    """Whether the stage-1 run this task starts from failed, was skipped or was stopped."""
    return bool(task.row.depends) and f"{task.row.depends}/seed{task.seed}" in lost


def ready(task: Task, done: set[str]) -> bool:
    return not task.row.depends or f"{task.row.depends}/seed{task.seed}" in done


def fill_queue(
    queue: list[Task],
    results: dict[str, dict],
    runs_dir: Path,
    jobs: int,
    budget_s: float,
    extra: tuple[str, ...] = (),
) -> dict[str, list[str]]:
    """Run the queue until it is empty or the budget is spent; save each result as it comes.

    A task is skipped when the seconds per LT epoch measured so far say it would not finish.
    ``extra`` overrides go to every run (settings that leave the recipe alone, e.g. train.amp).
    """
    extra = list(extra)
    begin = time.time()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done = {key for kept in results.values() for key in kept}
    outcome: dict[str, list[str]] = {"finished": [], "failed": [], "skipped": [], "stopped": []}
    rates: list[float] = []  # seconds per cost unit of the runs finished here
    running: list[Running] = []
    pending = list(queue)
    while pending or running:
        for run in [r for r in running if r.proc.poll() is not None]:
            running.remove(run)
            key, wall = run.task.key, time.time() - run.start
            if run.proc.returncode:
                outcome["failed"].append(key)
                print(f"FAILED {key} (exit {run.proc.returncode}); see its .log", flush=True)
                continue
            entry = table.collect(run.task.row, run.task.seed, runs_dir, extra, wall, threads)
            for name in run.task.tables:
                table.save_result(table.RESULTS / f"{name}.json", results[name], key, entry)
            done.add(key)
            if run.task.cost >= MIN_PACE_COST:
                rates.append(wall / run.task.cost)
            outcome["finished"].append(key)
            print(f"done {key} in {wall:.0f} s", flush=True)
        left = begin + budget_s - time.time()
        if len(outcome["failed"]) >= 3 and not outcome["finished"]:
            print("the first runs all failed: stopping the queue (see their .log)", flush=True)
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
        for task in [t for t in pending if ready(t, done)]:
            if len(running) >= jobs:
                break
            if rates and statistics.median(rates) * task.cost > left:
                pending.remove(task)
                outcome["skipped"].append(task.key)
                continue
            pending.remove(task)
            running.append(start(task, runs_dir, extra, threads))
        if not running and pending and not any(ready(t, done) for t in pending):
            outcome["skipped"] += [t.key for t in pending]  # waiting on nothing that can come
            break
        time.sleep(0.5)
    outcome["skipped"] += [t.key for t in pending if t.key not in outcome["skipped"]]
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
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
    args = parser.parse_args()
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
    outcome = fill_queue(queue, results, args.runs_dir, args.jobs, args.budget_s, extra)
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
