"""What the CAMC head costs over GAP + normalized classifier: parameters, FLOPs, training step time.

For ResNet-32 at 32x32 (K=100, CIFAR-100-LT) and ResNet-50 at 224x224 (K=1000, ImageNet-LT),
batch 32, fp32. Both heads sit on the same backbone; timed training steps (forward, loss,
backward, SGD step) alternate between the two heads after a warm-up. Two ratios, each with a
bootstrap 95% interval over the rounds: the median of the per-round ratios, and total CAMC time
over total normalized time; on a shared CPU one step's time moves by 10% or more, so the
intervals say what the rounds can resolve. Each step's minor page faults are
counted too: large activations come fresh from the OS each step under glibc malloc, and that cost
depends on the allocator, not on the head. The table keeps one row per backbone and allocator.
Writes benchmarks/results/camc_cost.json and .md.

    python benchmarks/camc_cost.py                 # about 12 minutes on one CPU thread
    python benchmarks/camc_cost.py --rounds 4 6    # fewer rounds (ResNet-50, ResNet-32), wider CIs
    python benchmarks/camc_cost.py --device cuda   # on a GPU (the table names the card)
    python benchmarks/camc_cost.py --render-only   # the tables again from the saved results
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
    MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 \
        python benchmarks/camc_cost.py             # the same under jemalloc (rows of its own)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from table import RESULTS, allocator, machine, publish
from torch.utils.flop_counter import FlopCounterMode

from camlt.heads import CAMCHead, NormalizedHead
from camlt.models import LongTailClassifier, create_backbone

BATCH = 32
BOOTSTRAP_RESAMPLES = 2000


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


def minor_faults() -> int:
    """Pages this process has faulted in so far (each one zeroed by the kernel)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bootstrap_ci(
    rounds: list, statistic: Callable[[list], float], level: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic`` over the rounds (seeded: a rerun agrees)."""
    rng = random.Random(0)
    values = sorted(
        statistic(rng.choices(rounds, k=len(rounds))) for _ in range(BOOTSTRAP_RESAMPLES)
    )
    tail = (1 - level) / 2
    return values[int(tail * len(values))], values[int((1 - tail) * len(values)) - 1]


def median_ratio(rounds: list[tuple[float, float]]) -> float:
    """Median over rounds of CAMC step / normalized step: robust to a slow round."""
    return statistics.median(camc / norm for norm, camc in rounds)


def total_ratio(rounds: list[tuple[float, float]]) -> float:
    """All CAMC steps' time over all normalized steps': what a training run pays."""
    return sum(camc for _, camc in rounds) / sum(norm for norm, _ in rounds)


def train_step(model, optimizer, images, labels) -> tuple[float, int]:
    """One training step: seconds and minor page faults. The loss adds the auxiliary term."""
    sync(images.device)
    faults = minor_faults()
    start = time.perf_counter()
    out = model(images, labels)
    loss = out.loss(labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(images.device)
    return time.perf_counter() - start, minor_faults() - faults


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
        out.loss(labels).backward()
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
    faults: dict[str, list[int]] = {"normalized": [], "camc": []}
    for i in range(setting.rounds):
        order = ("normalized", "camc") if i % 2 == 0 else ("camc", "normalized")
        for name in order:
            seconds, pages = train_step(models[name], optimizers[name], images, labels)
            times[name].append(seconds)
            faults[name].append(pages)
    rounds = list(zip(times["normalized"], times["camc"], strict=True))
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
        "step_time_ratio": median_ratio(rounds),
        "step_time_ratio_ci95": bootstrap_ci(rounds, median_ratio),
        "total_time_ratio": total_ratio(rounds),
        "total_time_ratio_ci95": bootstrap_ci(rounds, total_ratio),
        "step_s": times,
        "faults_per_step": faults,
        "allocator": allocator(os.environ),
        "head_s_normalized": head_s["normalized"],
        "head_s_camc": head_s["camc"],
        "step_time_ratio_from_head": 1 + (head_s["camc"] - head_s["normalized"]) / step_norm,
        "rounds": setting.rounds,
    }


def render(rows: list[dict], where: str) -> str:
    """Two markdown tables: what the head adds (per backbone), and step times (per allocator)."""
    lines = [
        "**CAMC cost over GAP + normalized classifier** (batch 32, fp32, training step = forward"
        " + loss + backward + SGD step)",
        "",
        "| backbone | input | K | params | params added | P buffer | GFLOPs/img | FLOPs added "
        "(matmul / all) | head ms (norm / CAMC) | ratio from head time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _first_per_backbone(rows):
        lines.append(
            f"| {r['backbone']} | {r['input']} | {r['num_classes']} | "
            f"{r['params_normalized'] / 1e6:.2f}M | {r['params_added']} | "
            f"{r['buffer_elements_added']:,} | "
            f"{r['forward_flops_per_image_normalized'] / 1e9:.3f} | "
            f"{r['forward_flops_added_matmul'] / 1e6:.2f}M / "
            f"{r['forward_flops_added_analytic'] / 1e6:.2f}M ({r['flops_added_pct']:.2f}%) | "
            f"{1e3 * r['head_s_normalized']:.2f} / {1e3 * r['head_s_camc']:.2f} | "
            f"{r['step_time_ratio_from_head']:.4f} |"
        )
    lines += [
        "",
        "| backbone | allocator | rounds | step s (norm / CAMC) | step-time ratio, median "
        "[95% CI] | total-time ratio [95% CI] | page faults per step (norm / CAMC) "
        "| fault cost; CAMC's extra faults |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r.get('allocator', 'glibc')} | {r['rounds']} | "
            f"{r['step_s_normalized']:.3f} / {r['step_s_camc']:.3f} | "
            f"{_with_interval(r, 'step_time_ratio')} | {_with_interval(r, 'total_time_ratio')} | "
            f"{_faults(r)} | {_fault_cost(r)} |"
        )
    lines += [
        "",
        f"Machine: {where}; torch {torch.__version__}; one warm-up step per head, then the "
        "timed rounds (each: one step per head, the order alternating).",
        "The head adds no parameter: W and s are the normalized classifier's; P (K x C) is a "
        "buffer. FLOPs: torch's FlopCounterMode (matmuls) and an analytic count with elementwise "
        "work; the percentage is of the whole forward pass. Head ms: the head's own forward + "
        "backward on the batch's feature map (median of 20); the ratio from head time is "
        "1 + (CAMC head - normalized head) / step, an estimate that the CPU's noise hurts less. "
        "Step-time ratio: the median of the per-round ratios CAMC / normalized; total-time "
        "ratio: all CAMC steps over all normalized steps (what a run pays); bootstrap 95% "
        "intervals over the rounds. "
        "Page faults: minor faults per step (mean), pages the kernel zeroed for the allocator; "
        "their cost is the least-squares slope of step time on faults over every timed step, "
        "and CAMC's extra faults are that cost times its extra faults per step, as a share of "
        "the normalized step.",
    ]
    return "\n".join(lines) + "\n"


def _first_per_backbone(rows: list[dict]) -> list[dict]:
    """One row per backbone: parameters and FLOPs do not depend on the allocator."""
    seen: dict[str, dict] = {}
    for r in rows:
        seen.setdefault(r["backbone"], r)
    return list(seen.values())


def _with_interval(row: dict, key: str) -> str:
    """``1.011 [0.971, 1.054]``; '-' for a figure older rows did not record."""
    if key not in row:
        return "-"
    low_high = row.get(f"{key}_ci95")
    interval = f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""
    return f"{row[key]:.3f}{interval}"


def _faults(row: dict) -> str:
    """Mean page faults per step of each head; '-' where older rows did not count them."""
    if "faults_per_step" not in row:
        return "-"
    norm, camc = (statistics.mean(row["faults_per_step"][h]) for h in ("normalized", "camc"))
    return f"{norm:,.0f} / {camc:,.0f}"


def fault_cost(row: dict) -> tuple[float, float] | None:
    """Seconds one page fault adds to a step (least squares over every timed step), and the
    share of a normalized step that CAMC's extra faults cost; None where a typical step takes no
    fault (a caching allocator): a slope through a few stray faults would be noise."""
    faults = row.get("faults_per_step")
    if not faults or statistics.median(faults["normalized"] + faults["camc"]) == 0:
        return None
    slope, _ = statistics.linear_regression(
        faults["normalized"] + faults["camc"], row["step_s"]["normalized"] + row["step_s"]["camc"]
    )
    extra = statistics.mean(faults["camc"]) - statistics.mean(faults["normalized"])
    return slope, slope * extra / statistics.mean(row["step_s"]["normalized"])


def _fault_cost(row: dict) -> str:
    cost = fault_cost(row)
    return "-" if cost is None else f"{1e6 * cost[0]:.1f} us each; {100 * cost[1]:+.1f}%"


def merge_rows(old: dict, new_rows: list[dict], where: str) -> list[dict]:
    """The new rows, plus earlier ones for another allocator measured on the same machine."""
    if old.get("machine") != where:
        return new_rows
    fresh = {(r["backbone"], r["allocator"]) for r in new_rows}
    kept = [r for r in old["rows"] if (r["backbone"], r.get("allocator", "glibc")) not in fresh]
    return kept + new_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, nargs=2, default=(24, 16), help="timed rounds: ResNet-50, ResNet-32"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)"
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the tables from the saved results"
    )
    args = parser.parse_args(argv)
    out = RESULTS / "camc_cost.json"
    if args.render_only:
        if not out.is_file():
            sys.exit(f"{out}: no saved results to render; run without --render-only first")
        saved = json.loads(out.read_text())
        _publish(saved["rows"], saved["machine"])
        return
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
    old = json.loads(out.read_text()) if out.exists() else {}
    _publish(merge_rows(old, rows, where), where)


def _publish(rows: list[dict], where: str) -> None:
    text = render(rows, where)
    publish("camc_cost", {"machine": where, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
