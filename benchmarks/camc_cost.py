"""What the CAMC head costs over GAP + normalized classifier: parameters, FLOPs, training step time.

For ResNet-32 at 32x32 (K=100, CIFAR-100-LT) and ResNet-50 at 224x224 (K=1000, ImageNet-LT),
batch 32, fp32. Both heads sit on the same backbone; timed training steps (forward, loss,
backward, SGD step) alternate between the two heads after a warm-up, and the ratio is the median
of the per-round ratios. Writes benchmarks/results/camc_cost.json and .md.

    python benchmarks/camc_cost.py                 # about 5 minutes on one CPU thread
    python benchmarks/camc_cost.py --rounds 2 6    # fewer timed rounds (ResNet-50, ResNet-32)
    python benchmarks/camc_cost.py --device cuda   # on a GPU (the table names the card)
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from table import RESULTS, machine, update_readme
from torch.utils.flop_counter import FlopCounterMode

from camlt.checkpoint import atomic_write_json, atomic_write_text
from camlt.heads import CAMCHead, NormalizedHead
from camlt.models import LongTailClassifier, create_backbone

BATCH = 32


@dataclass
class Setting:
    backbone: str
    size: int
    num_classes: int
    rounds: int


def head_flops_analytic(c: int, hw: int, k: int, num_classes: int) -> int:
    """FLOPs per image the CAMC head adds over GAP + cosine classifier, elementwise work included.

    Normalising F over channels (3 C HW), the CAM and correlation of the k guide classes
    (2 x 2 k C HW), their q-weighted sums (2 x 2 k HW), the softmax (about 5 HW), g (2 C HW),
    f = f0 + alpha g (2 C) and the second cosine classifier (2 K C + 3 C).
    """
    return (
        3 * c * hw + 4 * k * c * hw + 4 * k * hw + 5 * hw + 2 * c * hw + 5 * c + 2 * num_classes * c
    )


def forward_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Matmul and convolution FLOPs of one forward pass, as torch's FlopCounterMode counts them."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, images, labels) -> float:
    """One training step, timed; the loss adds the auxiliary term as the engine does."""
    sync(images.device)
    start = time.perf_counter()
    out = model(images, labels)
    loss = nnf.cross_entropy(out.logits, labels)
    if out.aux_logits is not None and out.aux_weight:
        loss = loss + out.aux_weight * nnf.cross_entropy(out.aux_logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(images.device)
    return time.perf_counter() - start


def head_time(head: torch.nn.Module, fmap: torch.Tensor, labels: torch.Tensor, reps: int) -> float:
    """Median seconds of the head's own forward + backward on a fixed feature map.

    Much cheaper and less noisy than a whole step on a shared CPU: the step-time ratio is
    about 1 + (CAMC head - normalized head) / step.
    """
    fmap = fmap.detach().requires_grad_(True)
    times = []
    for _ in range(reps + 1):
        sync(fmap.device)
        start = time.perf_counter()
        out = head(fmap, labels)
        loss = nnf.cross_entropy(out.logits, labels)
        if out.aux_logits is not None:
            loss = loss + out.aux_weight * nnf.cross_entropy(out.aux_logits, labels)
        loss.backward()
        sync(fmap.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(setting: Setting, device: torch.device) -> dict:
    """Parameters, FLOPs and step times of both heads on one shared backbone."""
    torch.manual_seed(0)
    backbone = create_backbone(setting.backbone, in_channels=3)
    c, k = backbone.out_channels, setting.num_classes
    models = {
        "normalized": LongTailClassifier(backbone, NormalizedHead(c, k, 16.0)),
        "camc": LongTailClassifier(backbone, CAMCHead(c, k, 16.0)),
    }
    for model in models.values():
        model.to(device, memory_format=torch.channels_last).train()
    images = torch.randn(BATCH, 3, setting.size, setting.size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, k, (BATCH,), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        fmap = backbone(images)
    hw = fmap.shape[2] * fmap.shape[3]
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    buffers = {n: sum(b.numel() for b in m.head.buffers()) for n, m in models.items()}
    flops = {n: forward_flops(m.eval(), images[:1]) for n, m in models.items()}
    head_s = {n: head_time(m.train().head, fmap, labels, 20) for n, m in models.items()}
    optimizers = {n: torch.optim.SGD(m.train().parameters(), lr=0.01) for n, m in models.items()}
    for name in models:  # warm-up
        train_step(models[name], optimizers[name], images, labels)
    times: dict[str, list[float]] = {"normalized": [], "camc": []}
    for i in range(setting.rounds):
        order = ("normalized", "camc") if i % 2 == 0 else ("camc", "normalized")
        for name in order:
            times[name].append(train_step(models[name], optimizers[name], images, labels))
    ratios = [a / b for a, b in zip(times["camc"], times["normalized"], strict=True)]
    step_norm = statistics.median(times["normalized"])
    base_flops = flops["normalized"]
    analytic = head_flops_analytic(c, hw, min(5, k), k)
    return {
        "backbone": setting.backbone,
        "input": f"{setting.size}x{setting.size}",
        "feature_map": f"{c}x{fmap.shape[2]}x{fmap.shape[3]}",
        "num_classes": k,
        "batch": BATCH,
        "params_normalized": params["normalized"],
        "params_added": params["camc"] - params["normalized"],
        "buffer_elements_added": buffers["camc"] - buffers["normalized"],
        "forward_flops_per_image_normalized": base_flops,
        "forward_flops_added_matmul": flops["camc"] - base_flops,
        "forward_flops_added_analytic": analytic,
        "flops_added_pct": 100 * analytic / base_flops,
        "step_s_normalized": step_norm,
        "step_s_camc": statistics.median(times["camc"]),
        "step_time_ratio": statistics.median(ratios),
        "head_s_normalized": head_s["normalized"],
        "head_s_camc": head_s["camc"],
        "step_time_ratio_from_head": 1 + (head_s["camc"] - head_s["normalized"]) / step_norm,
        "rounds": setting.rounds,
    }


def render(rows: list[dict], where: str) -> str:
    """The cost table in markdown."""
    lines = [
        "**CAMC cost over GAP + normalized classifier** (batch 32, fp32, training step = forward"
        " + loss + backward + SGD step)",
        "",
        "| backbone | input | K | params | params added | P buffer | GFLOPs/img | FLOPs added "
        "(matmul / all) | step s (norm / CAMC) | step-time ratio | head ms (norm / CAMC) "
        "| ratio from head time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['input']} | {r['num_classes']} | "
            f"{r['params_normalized'] / 1e6:.2f}M | {r['params_added']} | "
            f"{r['buffer_elements_added']:,} | "
            f"{r['forward_flops_per_image_normalized'] / 1e9:.3f} | "
            f"{r['forward_flops_added_matmul'] / 1e6:.2f}M / "
            f"{r['forward_flops_added_analytic'] / 1e6:.2f}M ({r['flops_added_pct']:.2f}%) | "
            f"{r['step_s_normalized']:.3f} / {r['step_s_camc']:.3f} | "
            f"{r['step_time_ratio']:.3f} | "
            f"{1e3 * r['head_s_normalized']:.2f} / {1e3 * r['head_s_camc']:.2f} | "
            f"{r['step_time_ratio_from_head']:.4f} |"
        )
    lines += [
        "",
        f"Machine: {where}; torch {torch.__version__}; median of the timed rounds "
        f"({', '.join(str(r['rounds']) for r in rows)}) after one warm-up step per head.",
        "The head adds no parameter: W and s are the normalized classifier's; P (K x C) is a "
        "buffer. FLOPs: torch's FlopCounterMode (matmuls) and an analytic count with elementwise "
        "work; the percentage is of the whole forward pass. Head ms: the head's own forward + "
        "backward on the batch's feature map (median of 20); the last column is "
        "1 + (CAMC head - normalized head) / step, an estimate that the CPU's noise hurts less.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, nargs=2, default=(2, 10), help="timed rounds: ResNet-50, ResNet-32"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = [
        Setting("resnet32", 32, 100, args.rounds[1]),
        Setting("resnet50", 224, 1000, args.rounds[0]),
    ]
    rows = []
    for setting in settings:
        print(f"measuring {setting.backbone} at {setting.size}x{setting.size} ...", flush=True)
        rows.append(measure(setting, device))
        print(rows[-1], flush=True)
    on_cpu_beside_gpu = device.type == "cpu" and torch.cuda.is_available()
    where = f"CPU ({torch.get_num_threads()} threads)" if on_cpu_beside_gpu else machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "camc_cost.json", {"machine": where, "rows": rows})
    text = render(rows, where)
    atomic_write_text(RESULTS / "camc_cost.md", text)
    update_readme("camc_cost", text)
    print(text)


if __name__ == "__main__":
    main()
