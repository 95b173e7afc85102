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
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import ablation
import baselines
import clutter
import families
import foundation_table
import full_recipe
import recipes
import subsets
import table
from runner import build_queue, executor_of, fill_queue, without_stage1

from camlt import cluster
from camlt.checkpoint import atomic_write_json
from camlt.config import COMPILE_MODES

if TYPE_CHECKING:
    pass

TABLES = {
    "foundation": foundation_table.ROWS,
    "ablation": ablation.ROWS,
    "baselines": baselines.ROWS,
    "full_recipe": full_recipe.ROWS,
    "recipes": recipes.ROWS,
    "clutter": clutter.ROWS,
    "subsets": subsets.ROWS,
    "families": families.ROWS,
}
SCRIPTS = {
    "foundation": "foundation_table.py",
    "ablation": "ablation.py",
    "baselines": "baselines.py",
    "full_recipe": "full_recipe.py",
    "recipes": "recipes.py",
    "clutter": "clutter.py",
    "subsets": "subsets.py",
    "families": "families.py",
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
    *(row.name for row in families.ROWS),  # experts and contrastive learning (issue 34)
]


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
            atomic_write_json(table.RESULTS / f"{name}.json", kept)
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
