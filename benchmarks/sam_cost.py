"""What sharpness-aware minimisation costs per training step: the engine's own step
(``camlt.engine.train_step``) with ``train.sam=off``, ``sam`` and ``imbsam``, on real
Fashion-MNIST-LT batches (ResNet-32, batch 128, the recipe's head), in alternating rounds so a
shared machine's drift falls on every setting alike. The ratio to ``off`` is the median of the
per-round ratios. Writes benchmarks/results/sam_cost.json and .md.

    python benchmarks/sam_cost.py                  # 8 rounds of 10 steps, one thread
    python benchmarks/sam_cost.py --device cuda    # on a GPU (the table names the card)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from table import ROOT, machine, publish

from camlt import engine
from camlt.config import load_config

SETTINGS = {
    "off": [],
    "sam": ["train.sam=sam"],
    "imbsam": ["train.sam=imbsam"],  # tail: classes of at most 100 images (shirt, coat)
}


def build(name: str, device: str, tmp: Path, head: str) -> engine.Run:
    overrides = [
        f"model.head={head}",
        f"train.device={device}",
        "train.amp=off",
        f"train.run_dir={tmp / name}",
        *SETTINGS[name],
    ]
    cfg = load_config(ROOT / "configs" / "fmnist_lt.yaml", overrides)
    return engine.build_run(cfg, tmp / name)


def time_steps(run: engine.Run, batches: list, device: str) -> float:
    """Seconds per step over ``batches``."""
    start = time.perf_counter()
    for step, (images, labels) in enumerate(batches):
        engine.train_step(run, images, labels, 0, step)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(batches)


def measure(rounds: int, steps: int, device: str, head: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: build(name, device, Path(tmp), head) for name in SETTINGS}
        loader = iter(runs["off"].train_loader)
        batches = [next(loader) for _ in range(steps)]
        for run in runs.values():  # warm-up: first-step allocations, CAMC's prototype start
            time_steps(run, batches[:2], device)
        times: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for r in range(rounds):
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for name in order:
                times[name].append(time_steps(runs[name], batches, device))
    ratios = {
        name: statistics.median(t / o for t, o in zip(times[name], times["off"], strict=True))
        for name in SETTINGS
    }
    return {
        "ms_per_step": {n: 1000 * statistics.median(t) for n, t in times.items()},
        "ratio": ratios,
        "rounds": rounds,
        "steps": steps,
        "head": head,
    }


def render(result: dict, where: str) -> str:
    note = f" {result['note']}" if result.get("note") else ""
    lines = [
        "**SAM's cost per training step** (ResNet-32, Fashion-MNIST-LT, batch 128, fp32, "
        f"{result['head']} head; `benchmarks/sam_cost.py`)",
        "",
        "| train.sam | ms / step (median) | step-time ratio to off |",
        "|---|---|---|",
    ]
    for name in SETTINGS:
        lines.append(
            f"| {name} | {result['ms_per_step'][name]:.0f} | {result['ratio'][name]:.2f}x |"
        )
    lines += [
        "",
        f"Machine: {where}; {result['rounds']} alternating rounds of {result['steps']} steps "
        "each, the ratio the median of the per-round ratios. SAM: a second forward and backward "
        "at the perturbed weights; ImbSAM: one forward, the head's and the tail's gradients "
        f"from it, then a forward and backward of the tail's loss at the perturbed weights.{note}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head", default="normalized", help="model.head of the timed model")
    parser.add_argument(
        "--note", default="", help="what else the machine was doing, for the footer"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {**measure(args.rounds, args.steps, args.device, args.head), "note": args.note}
    where = machine(args.device, args.threads)
    text = render(result, where)
    publish("sam_cost", {**result, "machine": where}, text)
    print(text)


if __name__ == "__main__":
    main()
