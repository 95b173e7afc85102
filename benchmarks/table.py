"""The results tables: their rows, and their markdown rendered from the results files.

A table is a list of rows (a recipe plus overrides) and a list of seeds. Each finished
(row, seed) is stored in ``benchmarks/results/<table>.json`` (written atomically) and skipped
when the script runs again, so a long table fills over several sittings or on a lent GPU; a
killed run resumes from its last checkpoint. ``render`` writes ``<table>.md`` and replaces the
block between ``<!-- table:<name> -->`` markers in the README.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from camlt.checkpoint import atomic_write_json, atomic_write_text
from camlt.distributed import machine_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
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


machine = machine_name  # camlt's own: the device a result came from, as a table states it


def load(path: Path) -> dict:
    """A results file's entries ({} before its first result)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def allocator(env: Mapping[str, str]) -> str:
    """The malloc a process with this environment uses: a preloaded jemalloc or tcmalloc (with
    its MALLOC_CONF), else glibc's. Timings on a CPU depend on it (page faults)."""
    preload = env.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc"):
        if name in preload:
            conf = env.get("MALLOC_CONF", "") if name == "jemalloc" else ""
            return f"{name} ({conf})" if conf else name
    return "glibc"


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
    for (where, prec, epochs, torch_version), names in sorted(meta.items(), key=str):
        which = "every row" if len(meta) == 1 else ", ".join(names)
        lines.append(f"Machine: {where}; {prec}; {epochs} epochs; torch {torch_version}: {which}.")
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
