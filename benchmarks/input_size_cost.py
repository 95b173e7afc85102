"""What a pretrained backbone's input size costs (``model.input_size``): EfficientNet-Lite0 (timm,
grey stem as camlt builds it for Fashion-MNIST) on 32-pixel images resized inside the model to
each side, training step (forward, loss, backward, SGD) and inference, images per second.

The sizes are timed in alternating rounds after a warm-up, so a loaded machine slows them alike;
the ratios to 224 are what to read. Writes benchmarks/results/input_size_cost.json and .md.

    python benchmarks/input_size_cost.py               # about 3 minutes on one CPU thread
    python benchmarks/input_size_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from table import machine, publish

from camlt.heads import NormalizedHead
from camlt.models import LongTailClassifier, create_backbone

SIZES = (32, 64, 112, 160, 224)
BATCH = 16


def build(size: int) -> LongTailClassifier:
    torch.manual_seed(0)
    backbone = create_backbone("timm/efficientnet_lite0", in_channels=1)
    return LongTailClassifier(backbone, NormalizedHead(backbone.out_channels, 10), size)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="what else ran on the machine, for the footer")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = torch.randn(BATCH, 1, 32, 32)
    labels = torch.arange(BATCH) % 10
    models = {s: build(s) for s in SIZES}
    optimizers = {s: torch.optim.SGD(m.parameters(), lr=0.01) for s, m in models.items()}

    def step(size: int) -> None:
        model = models[size].train()
        loss = model(images, labels).loss(labels)
        optimizers[size].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[size].step()

    def infer(size: int) -> None:
        with torch.no_grad():
            models[size].eval()(images)

    train_s: dict[int, list[float]] = {s: [] for s in SIZES}
    eval_s: dict[int, list[float]] = {s: [] for s in SIZES}
    for s in SIZES:  # warm-up
        step(s)
        infer(s)
    for r in range(args.rounds):
        for s in SIZES if r % 2 == 0 else SIZES[::-1]:
            train_s[s].append(timed(lambda s=s: step(s)))
            eval_s[s].append(timed(lambda s=s: infer(s)))
    rows = [
        {
            "size": s,
            "train_img_s": BATCH / statistics.median(train_s[s]),
            "eval_img_s": BATCH / statistics.median(eval_s[s]),
            "train_s": train_s[s],
            "eval_s": eval_s[s],
        }
        for s in SIZES
    ]
    full = rows[-1]
    where = machine()
    lines = [
        "**Input size of a pretrained backbone** (EfficientNet-Lite0, grey stem, 32-pixel inputs "
        f"resized inside the model, batch {BATCH}, fp32)",
        "",
        "| model.input_size | train img/s | x 224's | eval img/s | x 224's |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['train_img_s']:.1f} | {r['train_img_s'] / full['train_img_s']:.1f} "
            f"| {r['eval_img_s']:.1f} | {r['eval_img_s'] / full['eval_img_s']:.1f} |"
        )
    lines += [
        "",
        f"Machine: {where}; {args.threads} thread(s); torch {torch.__version__}; medians of "
        f"{args.rounds} alternating rounds after a warm-up. Train: forward, loss, backward, SGD "
        "step; eval: forward without gradients." + (f" {args.note}" if args.note else ""),
    ]
    text = "\n".join(lines) + "\n"
    publish("input_size_cost", {"machine": where, "threads": args.threads, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
