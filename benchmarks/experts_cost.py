"""What three experts cost over one model: parameters, FLOPs and training step time.

ResNet-32 at 32x32 (the study's trunk; K=10 as Fashion-MNIST-LT, K=100 as CIFAR-100-LT) and
ResNet-50 at 224x224 (K=1000), normalized heads (s=16), fp32, batch 128 (ResNet-50: 32). The
single model trains with balanced softmax, the experts with BalPoE's three losses. Timed training
steps (forward, loss, backward, SGD step) alternate between the two models after a warm-up; the
ratio is the median of the per-round ratios with a bootstrap 95% interval (camc_cost's). The
issue's bar: three experts at most 2x the single model's step on a CPU.
Writes benchmarks/results/experts_cost.json and .md.

    python benchmarks/experts_cost.py                # about 10 minutes on one CPU thread
    python benchmarks/experts_cost.py --rounds 6 4   # fewer rounds (ResNet-32, ResNet-50)
    python benchmarks/experts_cost.py --device cuda  # on a GPU (the table names the card)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from camc_cost import bootstrap_ci, forward_flops, median_ratio, sync, total_ratio
from omegaconf import OmegaConf
from table import machine, publish

from camlt.heads import logit_scale
from camlt.losses import build_loss
from camlt.models import build_model

EXPERTS = 3
SETTINGS = (  # backbone, input side, classes, batch, which --rounds value
    ("resnet32", 32, 10, 128, 0),
    ("resnet32", 32, 100, 128, 0),
    ("resnet50", 224, 1000, 32, 1),
)


def model_and_loss(backbone: str, classes: int, experts: int):
    """A model of ``experts`` experts (1: the single model) and its loss, as a run builds them."""
    model_cfg = OmegaConf.create(
        {"backbone": backbone, "head": "normalized", "scale": 16.0, "learn_scale": False,
         "pretrained": None, "finetune": "full", "init": "camlt", "experts": experts}
    )  # fmt: skip
    name = "balpoe" if experts > 1 else "balanced_softmax"
    loss_cfg = OmegaConf.create(
        {"name": name, "drw_epoch": None, "drw_beta": 0.9999, "posthoc_tau": 0.0,
         "diversity": 0.0, "diversity_temperature": 1.0}
    )  # fmt: skip
    counts = [max(1, round(500 * 0.01 ** (c / max(1, classes - 1)))) for c in range(classes)]
    model = build_model(model_cfg, classes, 3, counts)
    return model, build_loss(loss_cfg, counts, logit_scale(model_cfg), experts)


def step(model, loss_fn, optimizer, images, labels) -> float:
    sync(images.device)
    start = time.perf_counter()
    loss = model(images, labels).loss(labels, loss_fn)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(images.device)
    return time.perf_counter() - start


def measure(backbone: str, size: int, classes: int, batch: int, rounds: int, device) -> dict:
    torch.manual_seed(0)
    built = {n: model_and_loss(backbone, classes, n) for n in (1, EXPERTS)}
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(0))
    labels = labels.to(device)
    params, flops, optimizers = {}, {}, {}
    for n, (model, loss_fn) in built.items():
        model.to(device)
        loss_fn.to(device)
        params[n] = sum(p.numel() for p in model.parameters())
        flops[n] = forward_flops(model.eval(), images[:1])
        optimizers[n] = torch.optim.SGD(model.train().parameters(), lr=0.01, momentum=0.9)
        step(model, loss_fn, optimizers[n], images, labels)  # warm-up
    times: dict[int, list[float]] = {1: [], EXPERTS: []}
    for i in range(rounds):
        for n in (1, EXPERTS) if i % 2 == 0 else (EXPERTS, 1):
            times[n].append(step(*built[n], optimizers[n], images, labels))
    paired = list(zip(times[1], times[EXPERTS], strict=True))
    return {
        "backbone": backbone,
        "input": f"{size}x{size}",
        "num_classes": classes,
        "batch": batch,
        "params_single": params[1],
        "params_experts": params[EXPERTS],
        "gflops_single": flops[1] / 1e9,
        "gflops_experts": flops[EXPERTS] / 1e9,
        "step_s_single": statistics.median(times[1]),
        "step_s_experts": statistics.median(times[EXPERTS]),
        "step_time_ratio": median_ratio(paired),
        "step_time_ratio_ci95": bootstrap_ci(paired, median_ratio),
        "total_time_ratio": total_ratio(paired),
        "rounds": rounds,
        "step_s": {str(n): t for n, t in times.items()},
    }


def render(rows: list[dict], where: str, threads: int, note: str = "") -> str:
    lines = [
        f"**What {EXPERTS} experts cost over one model** (normalized heads, fp32; experts: the "
        "stem and every stage but the last shared, the last stage and a head each)",
        "",
        "| backbone | input | K | batch | params (one / experts) | GFLOPs/img (one / experts) "
        "| step s (one / experts) | step-time ratio, median [95% CI] | total-time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["step_time_ratio_ci95"]
        lines.append(
            f"| {r['backbone']} | {r['input']} | {r['num_classes']} | {r['batch']} | "
            f"{r['params_single'] / 1e6:.2f}M / {r['params_experts'] / 1e6:.2f}M | "
            f"{r['gflops_single']:.3f} / {r['gflops_experts']:.3f} | "
            f"{r['step_s_single']:.3f} / {r['step_s_experts']:.3f} | "
            f"{r['step_time_ratio']:.2f} [{low:.2f}, {high:.2f}] | {r['total_time_ratio']:.2f} |"
        )
    lines += [
        "",
        f"Machine: {where}; {threads} thread(s); torch {torch.__version__}; one warm-up step "
        "each, then the timed rounds (one step of each model, the order alternating). FLOPs: "
        "torch's FlopCounterMode (convolutions and matmuls) of one image's forward pass. Step: "
        "forward, loss (balanced softmax; BalPoE's three), backward, SGD step."
        + (f" {note}" if note else ""),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, nargs=2, default=(20, 8), help="timed rounds: ResNet-32, ResNet-50"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument(
        "--backbones", nargs="+", default=["resnet32", "resnet50"], help="which rows to measure"
    )
    parser.add_argument("--note", default="", help="what else ran on the machine, for the footer")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for backbone, size, classes, batch, which in SETTINGS:
        if backbone not in args.backbones:
            continue
        print(f"measuring {backbone} at {size}x{size}, K={classes} ...", flush=True)
        rows.append(measure(backbone, size, classes, batch, args.rounds[which], device))
    where = machine()
    text = render(rows, where, args.threads, args.note)
    result = {"machine": where, "threads": args.threads, "note": args.note, "rows": rows}
    publish("experts_cost", result, text)
    print(text)


if __name__ == "__main__":
    main()
