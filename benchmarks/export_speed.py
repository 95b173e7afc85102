"""Serving throughput on the CPU: the exported ONNX file under onnxruntime against PyTorch eager,
the same model and decision rule (``camlt.export.Deployable``), at batch 1 and 64.

The model is the recipe's (ResNet-32 with each head, Fashion-MNIST-LT input) at its random
initialisation: throughput does not depend on the weights. Rounds alternate between the two
engines, so a busy machine slows both alike; the ratio is the median of the per-round ratios.

    python benchmarks/export_speed.py [--threads 1] [--rounds 5]

Writes benchmarks/results/export_speed.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from table import machine

from camlt.checkpoint import atomic_write_json, atomic_write_text
from camlt.config import load_config
from camlt.data.inputs import input_spec
from camlt.export import Deployable, export
from camlt.models import build_model
from camlt.trained import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADS = ("linear", "normalized", "camc")
BATCHES = (1, 64)


def untrained(head: str) -> LoadedModel:
    """The recipe's model with ``head``, as ``camlt.trained.open_run`` would return it."""
    cfg = load_config(ROOT / "configs" / "fmnist_lt.yaml", [f"model.head={head}"])
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    spec = input_spec(cfg)
    model = build_model(cfg.model, 10, spec.channels, counts).eval()
    classes = [f"c{i}" for i in range(10)]
    return LoadedModel(model, cfg, classes, counts, spec, torch.device("cpu"), Path("-"), 0, [])


def images_per_s(run, batch: torch.Tensor, seconds: float) -> float:
    """Calls of ``run`` on ``batch`` for about ``seconds``; images per second."""
    run(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def measure(head: str, threads: int, rounds: int, seconds: float) -> list[dict]:
    loaded = untrained(head)
    module = Deployable(loaded).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export(loaded, path, "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for size in BATCHES:
        x = torch.randn(size, *loaded.spec.shape)
        with torch.no_grad():
            drift = module(x)[0] - torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

        def eager(b: torch.Tensor) -> None:
            with torch.no_grad():
                module(b)

        def onnx(b: torch.Tensor) -> None:
            session.run(["probabilities"], {"images": b.numpy()})

        pairs = [
            (images_per_s(eager, x, seconds), images_per_s(onnx, x, seconds)) for _ in range(rounds)
        ]
        rows.append(
            {
                "head": head,
                "batch": size,
                "eager_img_s": statistics.median(p[0] for p in pairs),
                "onnx_img_s": statistics.median(p[1] for p in pairs),
                "ratio": statistics.median(p[1] / p[0] for p in pairs),
                "max_prob_difference": float(drift.abs().max()),
            }
        )
    return rows


def render(result: dict) -> str:
    lines = [
        "**Serving throughput: onnxruntime against PyTorch eager** (ResNet-32, 1 x 32 x 32 "
        "input, fp32, the decision rule in the graph; `benchmarks/export_speed.py`)",
        "",
        "| head | batch | eager img/s | onnxruntime img/s | onnxruntime / eager | max prob. diff. |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['head']} | {r['batch']} | {r['eager_img_s']:.0f} | {r['onnx_img_s']:.0f} | "
            f"{r['ratio']:.2f}x | {r['max_prob_difference']:.1e} |"
        )
    lines += [
        "",
        f"Machine: {result['machine']}; torch {result['torch']}, onnxruntime {result['onnxruntime']}; "
        f"{result['rounds']} alternating rounds of {result['seconds']:g} s per engine, medians. "
        + result.get("note", ""),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--note", default="", help="a sentence on the conditions, for the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for head in HEADS for row in measure(head, args.threads, args.rounds, args.seconds)]
    result = {
        "rows": rows,
        "machine": machine("cpu", args.threads),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "note": args.note,
    }
    atomic_write_json(RESULTS / "export_speed.json", result)
    text = render(result)
    atomic_write_text(RESULTS / "export_speed.md", text)
    print(text)


if __name__ == "__main__":
    main()
