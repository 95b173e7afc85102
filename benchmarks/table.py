"""Shared runner for the results tables: train each (row, seed) once, keep it, render markdown.

A table is a list of rows (a recipe plus overrides) and a list of seeds. Each finished
(row, seed) is stored in ``benchmarks/results/<table>.json`` (written atomically) and skipped
when the script runs again, so a long table fills over several sittings or on a lent GPU; a
killed run resumes from its last checkpoint. ``render`` writes ``<table>.md`` and replaces the
block between ``<!-- table:<name> -->`` markers in the README.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camlt.checkpoint import atomic_write_json, atomic_write_text, read_json, read_jsonl
from camlt.rundir import FINAL_FILE, METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
_PRINT = threading.Lock()
COLUMNS = ("overall", "many", "medium", "few", "head", "middle", "tail", "ece")


@dataclass
class Row:
    """One line of a table: a recipe, its overrides, and the seeds it needs."""

    name: str  # no "/" (it names the run directory)
    config: str
    overrides: list[str] = field(default_factory=list)
    seeds: tuple[int, ...] | None = None  # None: the table's seeds
    # A row (by name) whose run of the same seed this one starts from, passed as
    # model.init_from (decoupled stage 2); it is run first when missing.
    depends: str | None = None


# Overrides that change how fast a run trains, not what it learns: they keep a row in its table.
SPEED_ONLY = ("train.compile=",)
# Extra command-line overrides a dependent (stage-2) row does not take: it has its own schedule.
STAGE1_ONLY = ("train.epochs=", "train.milestones=", "train.warmup_epochs=", "train.schedule=")


def run_dir_of(name: str, seed: int, runs_dir: Path) -> Path:
    """Where the run of one (row, seed) lives."""
    return runs_dir / f"{re.sub(r'[^A-Za-z0-9._=-]+', '_', name)}-seed{seed}"


def machine(device: str = "auto", threads: int = 0) -> str:
    """The device a result came from, as a table must state it (``device``: the run's train.device)."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "CPU",
    )
    return f"{cpu} ({threads or torch.get_num_threads()} threads)"


def allocator(env: Mapping[str, str]) -> str:
    """The malloc a process with this environment uses: a preloaded jemalloc or tcmalloc (with
    its MALLOC_CONF), else glibc's. Timings on a CPU depend on it (page faults)."""
    preload = env.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc"):
        if name in preload:
            conf = env.get("MALLOC_CONF", "") if name == "jemalloc" else ""
            return f"{name} ({conf})" if conf else name
    return "glibc"


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s sidecar ``.<name>.lock`` (waits for other holders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def save_result(path: Path, results: dict, key: str, entry: dict) -> None:
    """Add one result to ``results`` and to the file, keeping what others wrote there meanwhile.

    Two drivers of the same table (e.g. two ``--rows`` launches) each hold their own copy of
    the file: the re-read keeps the other's new rows, and the lock keeps its write from landing
    between our read and our write.
    """
    with locked(path):
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
        str(ROOT / row.config),
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


def run_one(row: Row, seed: int, runs_dir: Path, extra: list[str], threads: int = 0) -> dict:
    """Train (or resume) one (row, seed) in a subprocess; return its kept result.

    ``threads`` > 0 runs it with that many CPU threads and its output in ``<run dir>.log`` (the
    parallel mode of ``--jobs``); 0 inherits the threads and the terminal.
    """
    cmd = train_command(row, seed, runs_dir, extra)
    with _PRINT:  # whole lines, whatever the other jobs print
        print("+", shlex.join(cmd), flush=True)
    start = time.time()
    if threads:
        log = log_path(row, seed, runs_dir)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(log, "a") as out:
            subprocess.run(cmd, check=True, env=env, stdout=out, stderr=subprocess.STDOUT)
    else:
        subprocess.run(cmd, check=True)
    return collect(row, seed, runs_dir, extra, time.time() - start, threads)


def plan(
    rows: list[Row], seeds: tuple[int, ...], results: dict, only: list[str] | None
) -> tuple[list[tuple[Row, int]], list[tuple[Row, int]]]:
    """The missing (row, seed) pairs in two waves: stage-1 runs, then the rows that start from them."""
    by_name = {row.name: row for row in rows}
    first: list[tuple[Row, int]] = []
    second: list[tuple[Row, int]] = []

    def add(row: Row, seed: int) -> None:
        wave = second if row.depends else first
        if f"{row.name}/seed{seed}" not in results and (row, seed) not in wave:
            wave.append((row, seed))

    for row in rows:
        if only and row.name not in only:
            continue
        for seed in row.seeds or seeds:
            if row.depends:  # its stage-1 run first, whatever --rows says
                parent = by_name.get(row.depends)
                if parent is None:
                    raise SystemExit(f"row '{row.name}' depends on unknown row '{row.depends}'")
                if parent.depends:
                    raise SystemExit(
                        f"row '{row.depends}' is a stage-2 row; '{row.name}' cannot start from it"
                    )
                add(parent, seed)
            add(row, seed)
    return first, second


def fill(
    table: str,
    rows: list[Row],
    seeds: tuple[int, ...],
    runs_dir: Path,
    extra: list[str],
    only: list[str] | None = None,
    jobs: int = 1,
) -> dict:
    """Run every missing (row, seed), ``jobs`` at a time, saving the results file after each one.

    A failed run is reported and skipped (with the rows that start from it); the others go on.
    """
    path = RESULTS / f"{table}.json"
    results = load(path)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    failed: dict[str, str] = {}
    for wave in plan(rows, seeds, results, only):
        wave = [(r, s) for r, s in wave if f"{r.depends}/seed{s}" not in failed]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {
                pool.submit(run_one, r, s, runs_dir, extra, threads): (r, s) for r, s in wave
            }
            for future in as_completed(futures):
                row, seed = futures[future]
                key = f"{row.name}/seed{seed}"
                try:
                    entry = future.result()
                except (subprocess.CalledProcessError, OSError, KeyError, ValueError) as err:
                    failed[key] = str(err)
                    with _PRINT:
                        print(f"FAILED {key}: {err}", flush=True)
                    continue
                save_result(path, results, key, entry)  # this driver's one writer thread
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}; the others are kept")
    return results


# Groups of classes by their rank in training count: undefined when every count is the same.
BY_RANK = ("head", "middle", "tail")


def balanced(entry: dict) -> bool:
    """Whether a run trained on equal class counts (the ceiling)."""
    return len(set(entry.get("train_counts", []))) == 1


def precision(entry: dict) -> str:
    """How a result was computed. Entries kept before the field existed are all fp32: the AVX2
    CPUs have no fast bf16 (``train.amp=auto`` stays fp32) and the GPU runs passed train.amp=off."""
    return entry.get("precision", "fp32")


def cell(values: list[float]) -> str:
    """mean ± spread (population std over seeds), in percent."""
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.pstdev(values):.1f}"


def rarest(entry: dict, n: int = 3) -> list[int]:
    counts = entry["train_counts"]
    return sorted(range(len(counts)), key=lambda c: (counts[c], c))[:n]


def rarest3(entry: dict) -> float:
    """Mean test accuracy of the three classes with the fewest training images."""
    return statistics.fmean(entry["metrics"]["per_class"][c] for c in rarest(entry, 3))


def rarest1(entry: dict) -> float:
    """Test accuracy of the class with the fewest training images (shirt, in the hard order)."""
    return entry["metrics"]["per_class"][rarest(entry, 1)[0]]


# The columns the first CAMC probe reported, beside the groups of COLUMNS.
RAREST_COLUMNS = {"3 rarest": rarest3, "rarest": rarest1}


def render(table: str, rows: list[Row], title: str, extra_columns: dict | None = None) -> str:
    """Markdown of the finished results, rows in table order; missing rows are listed as such."""
    results = load(RESULTS / f"{table}.json")
    extra_columns = extra_columns or {}
    header = ["row", "seeds", *COLUMNS, *extra_columns]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    meta: dict[tuple, list[str]] = {}  # (machine, precision, epochs, torch) -> the rows it produced
    for row in rows:
        entries = [v for k, v in results.items() if k.split("/seed")[0] == row.name]
        entries.sort(key=lambda e: e["seed"])  # the file keeps finishing order
        if not entries:
            lines.append(f"| {row.name} | not run yet |" + " |" * (len(header) - 2))
            continue
        meta_key = {id(e): (e["machine"], precision(e), e["epochs"], e["torch"]) for e in entries}
        for key in dict.fromkeys(meta_key.values()):
            seeds = [str(e["seed"]) for e in entries if meta_key[id(e)] == key]
            split = len(seeds) < len(entries)  # the row's seeds ran on more than one machine
            label = f'"{row.name}"' + (f" (seed {','.join(seeds)})" if split else "")
            meta.setdefault(key, []).append(label)
        cells = [row.name, ",".join(str(e["seed"]) for e in entries)]
        ranked = [e for e in entries if not balanced(e)]  # only these have a head and a tail
        for col in COLUMNS:
            kept = ranked if col in BY_RANK else entries
            cells.append(
                cell([e["metrics"][col] for e in kept if e["metrics"].get(col) is not None])
            )
        for fn in extra_columns.values():
            cells.append(cell([fn(e) for e in ranked]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if any(balanced(e) for e in results.values()):
        lines.append(
            "A row trained on the balanced set has no head, middle, tail or rarest classes of its "
            "own (every class has the same count): those cells are '-'; `benchmarks/gap.py` reads "
            "its accuracy on the long-tailed set's rarest classes by name."
        )
    for (machine_name, prec, epochs, torch_version), names in sorted(meta.items(), key=str):
        which = "every row" if len(meta) == 1 else ", ".join(names)
        lines.append(
            f"Machine: {machine_name}; {prec}; {epochs} epochs; torch {torch_version}: {which}."
        )
    if any(row.depends for row in rows):
        lines.append("A stage-2 row's epochs are its own, on top of its stage-1 run's.")
    lines.append("Accuracy in %, mean ± population std over the seeds listed; ECE (15 bins) in %.")
    text = "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / f"{table}.md", text)
    update_readme(table, text)
    return text


def documents() -> list[Path]:
    """The pages that may hold results blocks: the README and every guide in docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def update_readme(table: str, text: str) -> None:
    """Replace this table's block, between its markers, in every page that has them."""
    start, end = f"<!-- table:{table} -->", f"<!-- /table:{table} -->"
    for page in documents():
        content = page.read_text()
        if start in content and end in content:
            head, rest = content.split(start, 1)
            _, tail = rest.split(end, 1)
            atomic_write_text(page, f"{head}{start}\n{text}{end}{tail}")


def publish(name: str, data: object, text: str) -> None:
    """Keep a results file's JSON, its markdown and its README block in step."""
    atomic_write_json(RESULTS / f"{name}.json", data)
    atomic_write_text(RESULTS / f"{name}.md", text)
    update_readme(name, text)


def table_and_budget(table: str, overrides: list[str]) -> tuple[str, str]:
    """The results table and runs folder of a sitting: overrides that change what is learned make
    a different budget, a different table, never mixed with the recipe's; speed-only ones do not."""
    changing = [o for o in overrides if not o.startswith(SPEED_ONLY)]
    if not changing:
        return table, "recipe"
    budget = "-".join(o.replace("/", "_").replace("=", "") for o in changing)
    return f"{table}-{budget}", budget


def main(
    table: str,
    rows: list[Row],
    title: str,
    default_seeds: tuple[int, ...] = (0, 1, 2),
    extra_columns: dict | None = None,
    argv: list[str] | None = None,
) -> None:
    """The command line every table script shares."""
    parser = argparse.ArgumentParser(description=f"Fill and render the '{table}' table.")
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
    table, budget = table_and_budget(table, args.overrides)
    runs_dir = args.runs_dir or ROOT / "runs" / "benchmarks" / budget
    if args.rows:
        unknown = set(args.rows) - {r.name for r in rows}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; the rows are {[r.name for r in rows]}")
    if not args.render_only:
        fill(table, rows, tuple(args.seeds), runs_dir, args.overrides, args.rows, args.jobs)
    print(render(table, rows, title, extra_columns))
