"""Paired differences between table rows, seed by seed.

The seed sets a run's initialisation and batch order, and the same seed does so alike in every
row: seed 2 was the best seed of nearly every row of the ablation. So the spread of a row over
seeds partly cancels between two rows, and the difference on each seed says more than two
means and their spreads. This script prints that difference for the comparisons the README
discusses.

    python benchmarks/paired.py                      # writes results/paired.json and .md
    python benchmarks/paired.py --render-only        # rebuild the markdown from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics

import clutter
import recipes
import subsets
from table import RESULTS, load, publish, rarest1

# (table, row A, row B): A minus B; "a+b" reads the rows from both tables
PAIRS = [
    ("ablation", "hard: CE + normalized s=16", "hard: CE + linear"),
    ("ablation", "hard: CAMC full", "hard: CE + normalized s=16"),
    ("ablation", "hard: CAMC variant=class", "hard: CAMC full"),
    ("ablation", "hard: CAMC variant=class", "hard: CE + normalized s=16"),
    ("ablation", "hard: CAMC uncalibrated", "hard: CAMC full"),
    ("ablation", "hard: CAMC + balanced softmax", "hard: normalized s=16 + balanced softmax"),
    ("ablation", "hard: CAMC variant=class + balanced softmax", "hard: CAMC + balanced softmax"),
    (
        "ablation",
        "hard: CAMC variant=class + balanced softmax",
        "hard: normalized s=16 + balanced softmax",
    ),
    (
        "baselines",
        "hard: CAMC + balanced softmax",
        "balanced softmax = logit adjustment loss (tau 1)",
    ),
    ("baselines", "hard: CAMC + balanced softmax", "hard: CE + linear"),
    ("baselines", "cRT (+10 epochs)", "hard: CE + linear"),
    ("baselines", "focal (gamma 1)", "hard: CE + linear"),
    ("baselines", "class-balanced focal (beta 0.9999, gamma 1)", "hard: CE + linear"),
    ("baselines", "LDAM-DRW (normalized s=30, DRW from epoch 24)", "hard: CE + linear"),
    ("ablation", "standard: CE + normalized s=16", "standard: CE + linear"),
    ("ablation", "standard: CAMC variant=class", "standard: CE + normalized s=16"),
    ("ablation", "standard: CAMC + balanced softmax", "standard: CE + normalized s=16"),
    ("ablation+recipes", recipes.STANDARD_BEST, "standard: CE + linear"),
    ("ablation+recipes", "standard: CAMC + balanced softmax", recipes.STANDARD_BEST),
    *(("clutter", camc, twin) for camc, twin in clutter.TWINS),
    ("clutter", clutter.NORMALIZED, clutter.CE),
]
# A minus B on every long-tailed subset (split seed = training seed; subset 0 is seed 0 of the
# main tables): a row beats another only if it does on every subset (issue 33)
SUBSET_PAIRS = [
    ("hard: normalized s=16 + balanced softmax", "hard: CE + linear"),
    ("hard: CE + normalized s=16", "hard: CE + linear"),
    ("hard: CAMC + balanced softmax", "hard: normalized s=16 + balanced softmax"),
]
COLUMNS = {
    "overall": lambda e: e["metrics"]["overall"],
    "tail": lambda e: e["metrics"]["tail"],
    "head": lambda e: e["metrics"]["head"],
    "rarest": rarest1,
    "ece": lambda e: e["metrics"]["ece"],
}


def by_seed(results: dict, row: str) -> dict[int, dict]:
    return {e["seed"]: e for e in results.values() if e["row"] == row}


def compare(table: str, a: str, b: str) -> dict:
    """Per-seed differences A - B (in points) on the seeds both rows have."""
    results = {k: e for name in table.split("+") for k, e in load(RESULTS / f"{name}.json").items()}
    runs_a, runs_b = by_seed(results, a), by_seed(results, b)
    seeds = sorted(set(runs_a) & set(runs_b))
    diffs = {
        col: [round(100 * (fn(runs_a[s]) - fn(runs_b[s])), 2) for s in seeds]
        for col, fn in COLUMNS.items()
    }
    return {"table": table, "a": a, "b": b, "seeds": seeds, "diffs": diffs}


def compare_subsets(a: str, b: str) -> dict:
    """A - B (in points) on each subset both rows have run on."""
    main = {
        k: e
        for name in ("ablation", "baselines")
        for k, e in load(RESULTS / f"{name}.json").items()
    }
    other = load(RESULTS / "subsets.json")
    runs = {0: (by_seed(main, a).get(0), by_seed(main, b).get(0))}
    for k in subsets.SPLITS:
        runs[k] = (
            by_seed(other, subsets.subset_row(a, k)).get(k),
            by_seed(other, subsets.subset_row(b, k)).get(k),
        )
    kept = [k for k, (ra, rb) in runs.items() if ra and rb]
    diffs = {
        col: [round(100 * (fn(runs[k][0]) - fn(runs[k][1])), 2) for k in kept]
        for col, fn in COLUMNS.items()
    }
    return {"kind": "subsets", "a": a, "b": b, "subsets": kept, "diffs": diffs}


def holds(values: list[float]) -> str:
    """Whether A is ahead (or behind) on every subset run so far."""
    if len(values) < 2:
        return "one subset"
    if all(v > 0 for v in values):
        return "ahead on every subset"
    if all(v < 0 for v in values):
        return "behind on every subset"
    return "no: the sign changes"


def cell(values: list[float]) -> str:
    """mean (per-seed values); the sign agreement is what to read."""
    if not values:
        return "-"
    each = ", ".join(f"{v:+.1f}" for v in values)
    return f"{statistics.fmean(values):+.1f} ({each})"


def render(pairs: list[dict]) -> str:
    header = ["A minus B", "seeds", *COLUMNS]
    lines = [
        "**Paired differences, seed by seed** (points; mean, then each seed's difference)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for p in [p for p in pairs if p.get("kind") != "subsets"]:
        cells = [f"{p['a']} minus {p['b']}", ",".join(map(str, p["seeds"])) or "not run yet"]
        cells += [cell(p["diffs"][col]) for col in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    header = ["A minus B", "subsets", *COLUMNS, "overall, every subset"]
    lines += [
        "",
        "**Paired differences, subset by subset** (points; mean, then each subset's difference; "
        "subset k: data.split_seed=k and train.seed=k, subset 0 from the tables above)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for p in [p for p in pairs if p.get("kind") == "subsets"]:
        cells = [f"{p['a']} minus {p['b']}", ",".join(map(str, p["subsets"]))]
        cells += [cell(p["diffs"][col]) for col in COLUMNS]
        cells.append(holds(p["diffs"]["overall"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "rarest: the class with the fewest training images (50), shirt in the hard order, "
        "ankle boot in the standard one. ECE: a positive difference means A is worse "
        "calibrated. Machines and epochs as in the tables the rows come from.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        pairs = json.loads((RESULTS / "paired.json").read_text())
    else:
        pairs = [compare(*p) for p in PAIRS] + [compare_subsets(*p) for p in SUBSET_PAIRS]
    text = render(pairs)
    publish("paired", pairs, text)
    print(text)


if __name__ == "__main__":
    main()
