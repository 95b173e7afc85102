"""Shifted test priors (issue 36): one trained model on test sets drawn from Fashion-MNIST-LT's
balanced test set with a forward or backward long-tailed profile (``camlt.priors``), for CE +
linear and the best recipe (normalized s=16 + balanced softmax), as trained, with post-hoc tau and
temperature fitted on a held-out val split (200 images a class from the training images the
subset leaves out), and with the test set's own prior known (post-hoc adjustment).

It reads the finished runs of the subsets table (``benchmarks/subsets.py``: trained on subsets 1
and 2, seed = split seed) and trains nothing; the val split is an eval-free key, so the runs need
not have been trained with one.

    python benchmarks/shifted_priors.py [--runs-dir runs/benchmarks/recipe]

Writes benchmarks/results/shifted_priors.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from runner import run_dir_of
from subsets import SPLITS, subset_row
from table import machine

from camlt import calibration
from camlt.checkpoint import atomic_write_json, atomic_write_text
from camlt.priors import TEST_PRIORS
from camlt.rundir import FINAL_FILE
from camlt.trained import evaluate, open_run, split_logits

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VAL = "data.val_per_class=200"
MODELS = {"CE + linear": "hard: CE + linear", "recipe": "hard: normalized s=16 + balanced softmax"}


def variants(name: str, run_dir: Path) -> dict[str, dict[str, float]]:
    """Top-1 (%) on every shifted test set for each way of using one run."""
    torch.set_num_threads(1)
    loaded = open_run(run_dir, [VAL], "cpu")
    loaded.calibration = None  # as trained, whatever a user fitted since
    test = split_logits(loaded, "test")
    val_logits, val_labels = split_logits(loaded, "val")
    fitted = calibration.fit(val_logits, val_labels, loaded.train_counts, {"split": "val"})
    rows: dict[str, dict[str, float]] = {}
    for label, cal in ((f"{name}, as trained", None), (f"{name}, tau + T fitted on val", fitted)):
        loaded.calibration = cal
        scores = {p: evaluate(loaded, *test, p) for p in TEST_PRIORS}
        rows[label] = {p: 100 * m["overall"] for p, m in scores.items()}
        if cal is not None or name == "recipe":
            rows[f"{label} + known test prior"] = {
                p: 100 * m["overall_known_prior"] for p, m in scores.items()
            }
    rows[f"{name}, as trained"]["tau"] = 0.0
    rows[f"{name}, tau + T fitted on val"]["tau"] = fitted.tau
    return rows


def collect(runs_dir: Path) -> dict:
    per_split: dict[int, dict] = {}
    for k in SPLITS:
        dirs = {m: run_dir_of(subset_row(row, k), k, runs_dir) for m, row in MODELS.items()}
        if all((d / FINAL_FILE).is_file() for d in dirs.values()):
            per_split[k] = {}
            for m, d in dirs.items():
                per_split[k].update(variants(m, d))
    if not per_split:
        raise SystemExit(f"no finished pair of runs under {runs_dir}: run benchmarks/subsets.py")
    return per_split


def render(result: dict) -> str:
    splits = sorted(result["per_split"], key=int)
    first = result["per_split"][splits[0]]
    head = " | ".join(TEST_PRIORS)
    lines = [
        "**Shifted test priors** (Fashion-MNIST-LT IF100, hard order, ResNet-32, 30 epochs; top-1 "
        "% on test sets drawn from the balanced test set, forward = the training order; "
        "`benchmarks/shifted_priors.py`)",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * len(TEST_PRIORS),
    ]
    for row in first:
        means = [
            statistics.mean(result["per_split"][k][row][p] for k in splits) for p in TEST_PRIORS
        ]
        lines.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in means) + " |")
    taus = {k: result["per_split"][k]["CE + linear, tau + T fitted on val"]["tau"] for k in splits}
    lines += [
        "",
        f"Each cell: the mean over subsets (split seed = training seed) {', '.join(map(str, splits))}. "
        f"Runs trained on {result['trained_on']}; evaluated in fp32 on {result['machine']}. tau and "
        f"T fitted on a val split of 200 held-out training images a class (CE's tau by subset: "
        f"{', '.join(f'{k}: {t:g}' for k, t in taus.items())}). Known test prior: the scores "
        "plus the log of the test set's class frequencies (post-hoc adjustment for a known prior); "
        "it needs the prior, which a deployment may not know.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "benchmarks" / "recipe")
    parser.add_argument("--trained-on", default="AMD EPYC, fp32, 1 thread each")
    args = parser.parse_args()
    per_split = collect(args.runs_dir)
    result = {"per_split": per_split, "machine": machine("cpu", 1), "trained_on": args.trained_on}
    atomic_write_json(RESULTS / "shifted_priors.json", result)
    text = render(result)
    atomic_write_text(RESULTS / "shifted_priors.md", text)
    print(text)


if __name__ == "__main__":
    main()
