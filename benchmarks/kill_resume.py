"""Kill -9 a training run at random moments, resume it, and check that nothing was lost.

Each trial starts a short CPU run (`camlt train ... --resume`) on a generated Fashion-MNIST
(IDX files written to a temp dir), sends SIGKILL at a seeded random moment one to three times,
checks after every kill that checkpoint.pt, metrics.jsonl, config.yaml (and final_metrics.json)
are readable, then resumes until the run ends. The finished run must equal an uninterrupted
reference run bit for bit: final metrics, every weight, and each epoch's loss, lr and metrics.

    python benchmarks/kill_resume.py                # 20 trials, a few minutes on 2 CPU cores
    python benchmarks/kill_resume.py --trials 50 --seed 1

Writes benchmarks/results/kill_resume.json and kill_resume.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the generated-dataset writer of the test suite

from conftest import write_fmnist  # noqa: E402
from table import machine  # noqa: E402

from camlt.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, read_jsonl  # noqa: E402
from camlt.config import from_yaml_file  # noqa: E402
from camlt.rundir import CHECKPOINT, CONFIG_FILE, FINAL_FILE, METRICS_FILE  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "configs" / "fmnist_lt.yaml"


def overrides(data_root: Path, run_dir: Path, epochs: int) -> list[str]:
    """A run of a few seconds: resnet8, ~90 images, one thread."""
    return [
        f"data.root={data_root}",
        "data.n_max=20",
        "data.imbalance=10",
        "model.backbone=resnet8",
        f"train.epochs={epochs}",
        "train.batch_size=16",
        "train.warmup_epochs=1",
        "train.milestones=[2]",
        "train.threads=1",
        "train.progress=false",
        f"train.run_dir={run_dir}",
    ]


def start(data_root: Path, run_dir: Path, epochs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "camlt.cli", "train", str(RECIPE)]
    cmd += [*overrides(data_root, run_dir, epochs), "--resume"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def check_files(run_dir: Path) -> tuple[int, list[str]]:
    """How many run files exist, and those that cannot be read back (must always be none)."""
    checks = {
        CHECKPOINT: load_checkpoint,
        METRICS_FILE: read_jsonl,
        CONFIG_FILE: from_yaml_file,
        FINAL_FILE: lambda p: json.loads(p.read_text()),
    }
    bad, present = [], 0
    for name, read in checks.items():
        if (run_dir / name).exists():
            present += 1
            try:
                read(run_dir / name)
            except Exception as err:  # noqa: BLE001 - any failure to read counts
                bad.append(f"{name}: {type(err).__name__}: {err}")
    return present, bad


def fingerprint(run_dir: Path) -> dict:
    """What must equal the reference: final metrics, weights, per-epoch loss/lr/metrics."""
    final = json.loads((run_dir / FINAL_FILE).read_text())
    epochs = [
        {k: r.get(k) for k in ("epoch", "loss", "lr", "test")}
        for r in read_jsonl(run_dir / METRICS_FILE)
    ]
    return {
        "metrics": final["metrics"],
        "classes": final["classes"],
        "train_counts": final["train_counts"],
        "epochs": epochs,
        "weights": load_checkpoint(run_dir / CHECKPOINT)["model"],
    }


def differences(a: dict, b: dict) -> list[str]:
    out = [k for k in ("metrics", "classes", "train_counts", "epochs") if a[k] != b[k]]
    wa, wb = a["weights"], b["weights"]
    if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
        out.append("weights")
    return out


def trial(index: int, rng: random.Random, data_root: Path, work: Path, args, window: list) -> dict:
    """One run killed 1-3 times at random moments, then resumed to the end.

    A run that ends before its first kill (the machine got faster than the reference run) is
    started again from scratch with the kill window shrunk to what that run took.
    """
    run_dir = work / f"trial{index:03d}"
    planned = rng.randint(1, 3)
    kills, events, bad, checked = 0, [], [], 0
    while True:
        began = time.perf_counter()
        proc = start(data_root, run_dir, args.epochs)
        if kills < planned:
            delay = rng.uniform(*window)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                present, problems = check_files(run_dir)
                checked, bad = checked + present, bad + problems
                ckpt = run_dir / CHECKPOINT
                epoch = load_checkpoint(ckpt)["epoch"] if ckpt.exists() and not problems else 0
                temps = sorted(p.name for p in run_dir.glob(".*.tmp")) if run_dir.exists() else []
                events.append(
                    {"after_s": round(delay, 2), "checkpoint_epoch": epoch, "temps": temps}
                )
                continue
            if proc.returncode == 0 and kills == 0:
                took = time.perf_counter() - began  # both ends shrink: never an endless retry
                window[:] = [min(window[0], 0.6 * took), 0.95 * took]
                shutil.rmtree(run_dir)
                continue
        else:
            proc.wait()
        if proc.returncode != 0:
            raise SystemExit(
                f"trial {index}: camlt exited {proc.returncode}:\n{proc.stderr.read()}"
            )
        break
    present, problems = check_files(run_dir)
    return {
        "trial": index,
        "kills": kills,
        "events": events,
        "files_checked": checked + present,
        "unreadable": bad + problems,
        "temp_files_at_end": sorted(p.name for p in run_dir.glob(".*.tmp")),
        "run_dir": run_dir,
    }


def render(summary: dict) -> str:
    rows = [
        ("trials", summary["trials"]),
        ("kill -9 sent", summary["kills"]),
        ("kills after the first checkpoint", summary["kills_after_a_checkpoint"]),
        ("kills that left a temp file (mid-write)", summary["kills_mid_write"]),
        ("files read back after a kill", summary["files_checked"]),
        ("unreadable files", summary["unreadable_files"]),
        ("temp files left after resume", summary["temp_files_left"]),
        ("runs differing from the uninterrupted one", summary["mismatches"]),
    ]
    lines = [
        "# Kill -9 and resume",
        "",
        f"{summary['epochs']}-epoch resnet8 run on generated Fashion-MNIST-LT, seed {summary['seed']},"
        f" {summary['machine']}; reference run {summary['reference_s']:.1f} s"
        f" ({summary['startup_s']:.1f} s of start-up); kills at uniform random moments"
        " between 90% of the start-up and the reference run's length.",
        "",
        "| measure | count |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "kill_resume.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="camlt-kill-") as tmp:
        work = Path(tmp)
        data_root = write_fmnist(work / "fmnist", per_class_train=20, per_class_test=5)
        began, wall = time.perf_counter(), time.time()
        ref = start(data_root, work / "reference", args.epochs)
        if ref.wait() != 0:
            raise SystemExit(f"reference run failed:\n{ref.stderr.read()}")
        span = time.perf_counter() - began
        # kill between ~90% of the start-up (imports, until config.yaml) and the end of a run
        startup = (work / "reference" / CONFIG_FILE).stat().st_mtime - wall
        window = [0.9 * startup, span]
        reference = fingerprint(work / "reference")
        results = []
        for index in range(args.trials):
            result = trial(index, rng, data_root, work, args, window)
            result["differences"] = differences(reference, fingerprint(result.pop("run_dir")))
            results.append(result)
            print(
                f"trial {index}: {result['kills']} kills, "
                f"{'OK' if not result['differences'] and not result['unreadable'] else 'FAIL'}",
                flush=True,
            )
    events = [e for r in results for e in r["events"]]
    summary = {
        "trials": len(results),
        "epochs": args.epochs,
        "seed": args.seed,
        "machine": machine(),
        "reference_s": round(span, 2),
        "startup_s": round(startup, 2),
        "kills": len(events),
        "kills_after_a_checkpoint": sum(e["checkpoint_epoch"] > 0 for e in events),
        "kills_mid_write": sum(bool(e["temps"]) for e in events),
        "files_checked": sum(r["files_checked"] for r in results),
        "unreadable_files": sum(len(r["unreadable"]) for r in results),
        "temp_files_left": sum(len(r["temp_files_at_end"]) for r in results),
        "mismatches": sum(bool(r["differences"]) for r in results),
        "per_trial": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, summary)
    atomic_write_text(out.with_suffix(".md"), render(summary))
    print(render(summary))
    return 1 if summary["mismatches"] or summary["unreadable_files"] else 0


if __name__ == "__main__":
    sys.exit(main())
