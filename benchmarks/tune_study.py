"""A real ``camlt tune`` search (issue 35): the scale s of the normalized classifier, the
logit-adjustment tau, the learning rate and the weight decay of a linear probe of
``configs/own_data.yaml``'s ImageNet EfficientNet-Lite0 (``model.finetune=probe``, cached
features, 64 px, 20 epochs) on the folder of benchmarks/own_data_study.py, chosen on the folder's
balanced val split. The recipe's own values are trial 0 (s=16, tau=1: balanced softmax, lr 0.05,
weight decay 5e-4), so the table says whether the search beat them on the val split, and, for the
reader only, on the test split (one seed each: the test column never chose anything). A probe
trial costs under a minute here, a fine-tuning trial ten; the same command searches either.

    python benchmarks/tune_study.py                 # about 20 minutes on one CPU thread
    python benchmarks/tune_study.py --workers 2     # two submitit processes of 1 thread
    python benchmarks/tune_study.py --render-only

Writes benchmarks/results/tune_study.json and .md; the search itself (tune.db, best.yaml,
search.png, each trial's run) lives in runs/benchmarks/tune_study.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys

from own_data_study import FOLDER, PER_CLASS, RECIPE, SIZE, data_overrides, write_folder
from table import ROOT, load, machine, publish

from camlt.checkpoint import read_json
from camlt.rundir import FINAL_FILE

OUT = ROOT / "runs" / "benchmarks" / "tune_study"
SPACE = ["model.scale=4:64:log", "loss.logit_adjust.tau=0.5:2.5", "train.lr=0.01:0.5:log",
         "train.weight_decay=1e-5:1e-3:log"]  # fmt: skip
NAME = "tune_study"


def search(trials: int, workers: int, threads: int) -> None:
    """Run (or continue) the search with camlt's own command line, as a user would."""
    overrides = [*data_overrides(FOLDER, SIZE), "model.finetune=probe", "loss.name=logit_adjust",
                 f"train.threads={threads}"]  # fmt: skip
    command = [sys.executable, "-m", "camlt.cli", "tune", str(ROOT / RECIPE), *overrides,
               "--space", *SPACE, "--trials", str(trials), "--out", str(OUT),
               "--seed", "0", "--workers", str(workers)]  # fmt: skip
    if workers > 1:
        command += ["--cluster", "local"]
    subprocess.run(command, check=True)


def collect(threads: int) -> dict:
    """Each trial's val score and settings (trials.csv) with its run's test metrics."""
    with open(OUT / "trials.csv", newline="", encoding="utf-8") as fh:
        trials = list(csv.DictReader(fh))
    for trial in trials:
        final = OUT / f"trial-{int(trial['trial']):04d}" / FINAL_FILE
        metrics = read_json(final, required=("metrics",))["metrics"] if final.is_file() else {}
        trial["test_balanced_accuracy"] = metrics.get("balanced_accuracy")
        trial["test_tail"] = metrics.get("tail")
    return {"machine": machine("cpu", threads), "space": SPACE, "per_class": PER_CLASS,
            "trials": trials}  # fmt: skip


def percent(value) -> str:
    return "" if value in (None, "") else f"{100 * float(value):.1f}"


def render(data: dict) -> str:
    keys = [s.split("=")[0] for s in data["space"]]
    done = [t for t in data["trials"] if t["state"] == "complete"]
    best = max(done, key=lambda t: float(t["val_balanced_accuracy"]))
    lines = [
        "**camlt tune on a folder** (a linear probe of configs/own_data.yaml's ImageNet "
        f"EfficientNet-Lite0 on cached features, {SIZE} px, 20 epochs, the Fashion-MNIST folder "
        "of benchmarks/own_data_study.py; searched "
        + ", ".join(data["space"])
        + "; TPE, median pruning, chosen on the balanced val split)",
        "",
        "| trial | state | val balanced acc | "
        + " | ".join(keys)
        + " | test balanced acc | test tail |",
        "|---" * (5 + len(keys)) + "|",
    ]
    for t in data["trials"]:
        label = t["trial"] + (" (the recipe)" if t.get("recipe") else "")
        label += " **best**" if t is best else ""
        values = [f"{float(t[k]):.3g}" if t[k] else "" for k in keys]
        lines.append(
            f"| {label} | {t['state']} | {percent(t['val_balanced_accuracy'])} | "
            + " | ".join(values)
            + f" | {percent(t['test_balanced_accuracy'])} | {percent(t['test_tail'])} |"
        )
    lines += [
        "",
        f"Machine: {data['machine']}, fp32, one training seed (0) per trial. The test columns are "
        "for the reader: the search saw only the val split. A pruned trial stopped when its val "
        "score fell below the median of earlier trials at the same epoch.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, help="per worker (default: 2 cores / workers)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        data = load(ROOT / "benchmarks" / "results" / f"{NAME}.json")
    else:
        write_folder(FOLDER, PER_CLASS)
        threads = args.threads or max(1, 2 // args.workers)
        search(args.trials, args.workers, threads)
        data = collect(threads)
    publish(NAME, data, render(data))
    print(render(data))
