"""How much of the gap between CE on the long-tailed set and the ceiling each row closes.

The gap measure judges a method by that share: the ceiling is the same model and epochs trained
on the full balanced set, so ``(row - CE) / (ceiling - CE)`` is 0% for plain CE and 100% for a
method that makes the long tail cost nothing. Rows are taken from the kept results of the
baselines, ablation, recipes and families tables (hard order, 30 epochs), means over their seeds; the
standard class order's rows against its own CE (the balanced ceiling has no order), and the
cluttered benchmark's rows against its own CE and ceiling, each in a table of their own.

    python benchmarks/gap.py   # writes results/gap*.json and .md (hard, standard, clutter)
"""

from __future__ import annotations

import statistics

import ablation
import baselines
import clutter
import families
import recipes
from table import RESULTS, load, publish, rarest

CEILING = "ceiling: balanced, CE + linear"
CE = "hard: CE + linear"
COLUMNS = ("overall", "tail", "rarest")
# A row whose head differs from the plain ceiling's, and the ceiling trained with that head: what
# the head gains on the balanced set is not the long tail's, the rest of the row's gain over CE is.
HEAD_CEILINGS = {
    "hard: normalized s=16 + balanced softmax": recipes.CEILING_BEST,
    "hard: CE + normalized s=16": recipes.CEILING_BEST,
}


def class_groups(ce_run: dict) -> dict[str, list[str]]:
    """The tail (the rarest third) and the rarest class of the long-tailed set, by name: the
    balanced ceiling has no rarest classes of its own, so they are looked up there by name."""
    classes = ce_run["classes"]
    return {
        "tail": [classes[c] for c in rarest(ce_run, round(len(classes) / 3))],
        "rarest": [classes[c] for c in rarest(ce_run, 1)],
    }


def value(entry: dict, col: str, groups: dict[str, list[str]]) -> float:
    """A column of one run: overall, or the mean accuracy of a group's classes."""
    if col == "overall":
        return entry["metrics"]["overall"]
    per_class = entry["metrics"]["per_class"]
    return statistics.fmean(per_class[entry["classes"].index(name)] for name in groups[col])


def hard_order_rows() -> list[str]:
    """Every long-tailed hard-order 30-epoch row of the tables, in table order, each once."""
    names = [row.name for row in [*baselines.ROWS, *ablation.ROWS, *recipes.ROWS, *families.ROWS]]
    return [
        n
        for n in dict.fromkeys(names)
        if n not in (CE, *HEAD_CEILINGS.values())
        and not n.startswith(("ceiling:", "standard:", "60 epochs:"))
    ]


def means(results: dict, row: str, groups: dict[str, list[str]]) -> dict | None:
    """Column means over a row's kept seeds; None when the row has none."""
    entries = [e for e in results.values() if e["row"] == row]
    if not entries:
        return None
    cols = {c: statistics.fmean(value(e, c, groups) for e in entries) for c in COLUMNS}
    return {**cols, "seeds": sorted(e["seed"] for e in entries)}


def closed(row: dict, ce: dict, ceiling: dict) -> dict[str, float | None]:
    """Share of the CE-to-ceiling gap a row closes, per column (None where there is no gap)."""
    return {
        col: (row[col] - ce[col]) / (ceiling[col] - ce[col])
        if abs(ceiling[col] - ce[col]) > 1e-9
        else None
        for col in COLUMNS
    }


def compute(
    results: dict, ce_row: str = CE, ceiling_row: str = CEILING, names: list[str] | None = None
) -> dict:
    """CE's and the ceiling's means, and each row's means and shares; no rows without both.

    ``names``: the rows to measure (default: every hard-order row of the Fashion-MNIST-LT tables).
    """
    ce_runs = [e for e in results.values() if e["row"] == ce_row]
    if not ce_runs:
        return {"ce": None, "ceiling": None, "groups": {}, "rows": {}}
    groups = class_groups(ce_runs[0])
    ce, ceiling = means(results, ce_row, groups), means(results, ceiling_row, groups)
    rows = {}
    for name in (hard_order_rows() if names is None else names) if ceiling else []:
        row = means(results, name, groups)
        if row:
            rows[name] = {**row, "closed": closed(row, ce, ceiling)}
    return {
        "ce": ce,
        "ceiling": ceiling,
        "groups": groups,
        "rows": rows,
        "names": [ce_row, ceiling_row],
    }


def head_split(results: dict, gap: dict) -> dict:
    """Each HEAD_CEILINGS row's gain over CE, split into its head's gain on the balanced set (its
    own ceiling against the plain one) and the rest, the long tail's part; rows without both
    runs are left out."""
    if not gap["ce"] or not gap["ceiling"]:
        return {}
    ce, ceiling, groups = gap["ce"], gap["ceiling"], gap["groups"]
    split = {}
    for name, ceiling_name in HEAD_CEILINGS.items():
        row, own = means(results, name, groups), means(results, ceiling_name, groups)
        if row and own:
            gain = {c: row[c] - ce[c] for c in COLUMNS}
            head = {c: own[c] - ceiling[c] for c in COLUMNS}
            split[name] = {
                "ceiling": ceiling_name,
                "seeds": row["seeds"],
                "ceiling_seeds": own["seeds"],
                "gain": gain,
                "balanced_gain": head,
                "tail_part": {c: gain[c] - head[c] for c in COLUMNS},
            }
    return split


def render_split(split: dict) -> str:
    """The head split as a table: points, overall / tail / rarest in each cell."""
    if not split:
        return ""

    def cell(values: dict) -> str:
        return " / ".join(f"{100 * values[c]:+.1f}" for c in COLUMNS)

    lines = [
        "**How much of a row's gain is the long tail's**: its gain over CE + linear, against what "
        "its head gains on the balanced set (the ceiling trained with that head against the "
        "plain ceiling)",
        "",
        "| row | seeds | gain over CE | the head's gain on the balanced set | the long tail's part "
        "| ceiling with the row's head | its seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in split.items():
        lines.append(
            f"| {name} | {','.join(map(str, s['seeds']))} | {cell(s['gain'])} | "
            f"{cell(s['balanced_gain'])} | {cell(s['tail_part'])} | {s['ceiling']} | "
            f"{','.join(map(str, s['ceiling_seeds']))} |"
        )
    lines += [
        "",
        "Points of accuracy, overall / tail / rarest (the classes of the table above, read by "
        "name in the ceilings); the long tail's part is the gain over CE less the head's gain on "
        "the balanced set.",
    ]
    return "\n".join(lines) + "\n"


def pct(value: float | None) -> str:
    """A share as a whole percentage; '-' where the ceiling and CE tie on that column."""
    return "-" if value is None else f"{100 * value:.0f}%"


TITLE = "Fashion-MNIST-LT IF100, hard order, ResNet-32, 30 epochs"
# The standard order's rows against its own CE; the balanced ceiling has no order
STANDARD_CE = "standard: CE + linear"
STANDARD_TITLE = "Fashion-MNIST-LT IF100, standard order, ResNet-32, 30 epochs"


HEADLINE_ROWS = 6  # the README's table: the best rows with every seed, the rest in docs/results.md
HEADLINE_SEEDS = 3


def headline(gap: dict) -> dict:
    """The same gap with only the best rows that have all their seeds (the README's table)."""
    full = {n: r for n, r in gap["rows"].items() if len(r["seeds"]) >= HEADLINE_SEEDS}
    best = sorted(full, key=lambda n: -full[n]["closed"]["overall"])[:HEADLINE_ROWS]
    return {**gap, "rows": {n: full[n] for n in best}}


def render(gap: dict, title: str = TITLE) -> str:
    if not gap["rows"]:
        return "Not run yet: needs the ceiling and CE rows.\n"
    ce, ceiling = gap["ce"], gap["ceiling"]
    ce_row, ceiling_row = gap.get("names", [CE, CEILING])
    lines = [
        f"**Share of the gap between CE and the ceiling that each row closes** ({title})",
        "",
        "| row | seeds | overall | tail | rarest |",
        "|---|---|---|---|---|",
        f"| {ce_row} (0%) | {','.join(map(str, ce['seeds']))} | "
        + " | ".join(f"{100 * ce[c]:.1f}" for c in COLUMNS)
        + " |",
        f"| {ceiling_row} (100%) | {','.join(map(str, ceiling['seeds']))} | "
        + " | ".join(f"{100 * ceiling[c]:.1f}" for c in COLUMNS)
        + " |",
    ]
    for name, row in sorted(gap["rows"].items(), key=lambda kv: -kv[1]["closed"]["overall"]):
        cells = [f"{pct(row['closed'][c])} ({100 * row[c]:.1f})" for c in COLUMNS]
        lines.append(f"| {name} | {','.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: (row - CE) / (ceiling - CE) on the means over the seeds listed, then the "
        "row's own mean accuracy in %; rows sorted by the overall share. tail: "
        f"{', '.join(gap['groups']['tail'])}; rarest: {gap['groups']['rarest'][0]} (the "
        "classes with the fewest long-tailed training images, taken by name in the balanced "
        f"ceiling). The ceiling's seeds: {','.join(map(str, ceiling['seeds']))}. Machines and "
        "precision as in the tables the rows come from.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = {
        **load(RESULTS / "ablation.json"),
        **load(RESULTS / "baselines.json"),
        **load(RESULTS / "recipes.json"),
        **load(RESULTS / "families.json"),
    }
    gap = compute(results)
    split = head_split(results, gap)
    text = render(gap) + ("\n" + render_split(split) if split else "")
    publish("gap", {**gap, "head_split": split}, text)
    print(text)
    top = headline(gap)
    note = (
        f"The {HEADLINE_ROWS} best rows with {HEADLINE_SEEDS} seeds; every row, one-seed levers "
        "included, is in [docs/results.md](docs/results.md).\n"
    )
    publish("gap_headline", top, render(top) + "\n" + note)
    names = dict.fromkeys(r.name for r in [*ablation.ROWS, *recipes.ROWS])
    standard = [n for n in names if n.startswith("standard:") and n != STANDARD_CE]
    gap = compute(results, STANDARD_CE, CEILING, standard)
    text = render(gap, STANDARD_TITLE)
    publish("gap_standard", gap, text)
    print(text)
    cluttered = load(RESULTS / "clutter.json")
    names = [row.name for row in clutter.ROWS if row.name not in (clutter.CE, clutter.CEILING)]
    gap = compute(cluttered, clutter.CE, clutter.CEILING, names)
    text = render(gap, clutter.TITLE)
    publish("gap_clutter", gap, text)
    print(text)


if __name__ == "__main__":
    main()
