"""Training throughput of ResNet-32 on Fashion-MNIST-LT IF100: camlt's engine against a plain
reference loop as most research repos write it (per-image PIL transforms in a DataLoader, fp32,
NCHW), in the same run, same data, same epochs; then test accuracy of both.

    python benchmarks/train_speed.py [--epochs 1] [--workers 2]

Writes benchmarks/results/train_speed.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from camlt.checkpoint import atomic_write_json, atomic_write_text, read_jsonl
from camlt.config import COMPILE_MODES, load_config
from camlt.data.augment import AugmentSettings, policy_transforms
from camlt.engine import build_run, build_scheduler, compute_loss, evaluate, train_one_epoch
from camlt.heads import NormalizedHead
from camlt.models import LongTailClassifier, create_backbone
from camlt.rundir import FINAL_FILE, METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class PILImages(Dataset):
    """The same long-tailed images, served one PIL image at a time as torchvision datasets do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images[:, 0].cpu().numpy()  # stored padded to 32x32 already
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def reference_epoch(model, loader, optimizer, scheduler) -> float:
    """One fp32 NCHW epoch; returns images/s."""
    model.train()
    device = next(model.parameters()).device
    seen, start = 0, time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def bare_step_rate(
    model, batch: int, memory_format, device, dtype=None, steps: int = 10, rounds: int = 3
) -> float:
    """Images/s of training steps on one fixed batch: no loading, no augmentation. The most a
    loop of this model, layout and precision can reach, so it bounds any speed-up; the best of
    ``rounds`` timings, since on a shared CPU a single short timing can read low."""
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 1, 32, 32, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up (and compilation, for a compiled model)
        step()
    best = 0.0
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = max(best, steps * batch / (time.perf_counter() - start))
    return best


def compiled_step_rate(model, batch: int, run, mode: str) -> float | None:
    """The bare channels_last step under torch.compile: whether compiling would lift the bound.
    None (with the reason printed) where the compiler is unavailable, e.g. no C++ toolchain."""
    try:
        return bare_step_rate(
            torch.compile(model, mode=None if mode == "default" else mode),
            batch,
            torch.channels_last,
            run.device,
            run.dtype,
        )
    except Exception as err:  # noqa: BLE001 - a probe: any compiler failure means "not measured"
        print(f"torch.compile probe skipped: {type(err).__name__}: {err}")
        return None


def warm_up_compiled(run) -> float:
    """Compile the engine's step before it is timed (training batches have one shape), leaving
    weights and statistics as they were; returns the seconds compiling took."""
    state = copy.deepcopy(run.model.state_dict())
    images, labels = next(iter(run.train_loader))
    start = time.perf_counter()
    compute_loss(run, images.to(run.device), labels.to(run.device)).backward()
    run.optimizer.zero_grad(set_to_none=True)
    run.model.load_state_dict(state)
    return time.perf_counter() - start


def engine_processes(overrides: list[str], procs: int, run_dir: Path) -> dict:
    """The engine as a user runs it with ``torchrun``: ``procs`` processes sharing the cores,
    each training batch_size / procs images a step (gloo on a CPU); the job's images/s (its
    training loop only, as metrics.jsonl records it) and test top-1."""
    threads = max(1, (os.cpu_count() or 1) // procs)
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *(f"--nproc_per_node={procs}", "-m", "camlt.cli", "train"),
        *(str(ROOT / "configs" / "fmnist_lt.yaml"), *overrides),
        *(f"train.threads={threads}", f"train.run_dir={run_dir}"),
    ]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    rates = [r["images_per_s"] for r in read_jsonl(run_dir / METRICS_FILE)]
    final = json.loads((run_dir / FINAL_FILE).read_text())
    return {
        "images_per_s": float(np.mean(rates)),
        "test_top1": final["metrics"]["overall"],
        "procs": procs,
        "threads": threads,
    }


def procs_row(result: dict) -> str:
    """The multi-process engine's table line; empty when it was not measured."""
    multi = result.get("ours_procs")
    if not multi:
        return ""
    per = result["batch"] // multi["procs"]
    return (
        f"| camlt engine, {multi['procs']} processes x {multi['threads']} thread(s) (torchrun, "
        f"gloo; batch {per} each) | {multi['images_per_s']:.0f} | - | "
        f"{100 * multi['test_top1']:.1f} |\n"
    )


@torch.no_grad()
def reference_accuracy(model, test_loader) -> float:
    model.eval()
    right = total = 0
    device = next(model.parameters()).device
    for images, labels in test_loader:
        right += (model(images.to(device)).logits.argmax(1).cpu() == labels).sum().item()
        total += len(labels)
    return right / total


def compiled_row(rate: float | None, mode: str) -> str:
    """The torch.compile probe's table line; empty for results made before it existed."""
    if rate is None:
        return ""
    return (
        f"| bare training step, channels_last, torch.compile ({mode} mode) | {rate:.0f} | - | - |\n"
    )


def render(result: dict, batch: int) -> str:
    """The markdown table of a result, with the ratios the README discusses."""
    ours, ref = result["ours"], result["reference"]
    bound = result["bare_step_images_per_s"]
    epochs = result["epochs"]
    amp = ours["amp"]
    layout = "channels_last alone" if amp == "None" else f"channels_last with {amp} autocast"
    mode = ours.get("compile", "off")
    compiled = f", train.compile={mode}" if mode != "off" else ""
    # a compiled engine is bounded by the compiled bare step, where the probe measured it
    own_bound = bound.get("compiled") if mode != "off" and bound.get("compiled") else bound["ours"]
    return (
        f"| loop | images/s | share of its bare step | test top-1 after {epochs} epoch(s) |\n"
        f"|---|---|---|---|\n"
        f"| camlt engine (batch tensor augmentation, channels_last, amp={ours['amp']}{compiled}) | "
        f"{ours['images_per_s']:.0f} | {100 * ours['images_per_s'] / own_bound:.0f}% | "
        f"{100 * ours['test_top1']:.1f} |\n"
        f"{procs_row(result)}"
        f"| reference (PIL per image, DataLoader x{result['reference_workers']} workers, fp32 "
        f"NCHW) | {ref['images_per_s']:.0f} | "
        f"{100 * ref['images_per_s'] / bound['reference']:.0f}% | {100 * ref['test_top1']:.1f} |\n"
        f"| bare training step, channels_last (no data loading: the bound for ours) | "
        f"{bound['ours']:.0f} | - | - |\n"
        f"| bare training step, NCHW (the bound for the reference) | {bound['reference']:.0f} "
        f"| - | - |\n"
        f"{compiled_row(bound.get('compiled'), result.get('probe_mode', 'default'))}\n"
        f"Speed-up {result['speedup']:.2f}x"
        + (
            f" ({result['ours_procs']['procs']} processes: "
            f"{result['ours_procs']['images_per_s'] / ref['images_per_s']:.2f}x)"
            if result.get("ours_procs")
            else ""
        )
        + f"; the most any loader could give here is "
        f"{own_bound / ref['images_per_s']:.2f}x (bare {'compiled ' if compiled else ''}"
        f"channels_last step / reference); {layout} "
        f"is worth {bound['ours'] / bound['reference']:.2f}x on the bare step. ResNet-32, "
        f"Fashion-MNIST-LT IF100 ({result['train_images']} images), batch {batch}; machine: "
        f"{result['machine']}; torch {result['torch']}."
        + (f" Augmentation {result['augment']} in both loops." if "augment" in result else "")
        + (f" Compiling took {ours['compile_s']:.0f} s, once, before timing." if compiled else "")
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the reference"
    )
    parser.add_argument("--out-name", default="train_speed", help="results file stem")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile probe (its compile time)"
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="train.compile of the engine (compiled before timing; the seconds are reported)",
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=1,
        help="also time the engine as N processes under torchrun, cores/N threads each",
    )
    parser.add_argument(
        "--augment",
        default="crop_flip",
        help="data.augment of both loops, e.g. crop_flip+autoaugment+cutout (the reference runs "
        "the same torchvision policies on each PIL image)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rebuild the markdown from the JSON"
    )
    args = parser.parse_args()
    if args.procs > 1 and args.compile != "off":
        parser.error("--procs times an eager engine: its first epoch would include compiling")
    if args.render_only:
        result = json.loads((RESULTS / f"{args.out_name}.json").read_text())
        md = render(result, result.get("batch", 128))
        atomic_write_text(RESULTS / f"{args.out_name}.md", md)
        print(md)
        return
    overrides = [
        f"train.epochs={args.epochs}",
        "train.progress=false",
        "train.warmup_epochs=1",
        "train.schedule=cosine",
        "model.head=normalized",
        f"train.compile={args.compile}",
        f"data.augment={args.augment}",
    ]
    cfg = load_config(ROOT / "configs" / "fmnist_lt.yaml", overrides)
    augment = AugmentSettings.from_config(cfg.data)

    run = build_run(cfg, Path("/tmp/camlt-speed"))

    def fresh_model():
        head = NormalizedHead(64, 10, cfg.model.scale)
        return LongTailClassifier(create_backbone("resnet32", in_channels=1), head).to(run.device)

    probe_mode = "default" if args.compile == "off" else args.compile
    # timed first, on an idle machine: after half an hour of training a short timing reads low
    bound = {  # the model's own step rate in each loop's layout and precision
        "ours": bare_step_rate(
            fresh_model(), cfg.train.batch_size, torch.channels_last, run.device, run.dtype
        ),
        "reference": bare_step_rate(
            fresh_model(), cfg.train.batch_size, torch.contiguous_format, run.device
        ),
        "compiled": None
        if args.no_compile
        else compiled_step_rate(fresh_model(), cfg.train.batch_size, run, probe_mode),
    }

    compile_s = warm_up_compiled(run) if run.compiled is not None else 0.0
    ours = [train_one_epoch(run, e)["images_per_s"] for e in range(args.epochs)]
    ours_acc = evaluate(run)["overall"]
    multi = (
        engine_processes(overrides, args.procs, Path("/tmp/camlt-speed-procs"))
        if args.procs > 1
        else None
    )

    torch.manual_seed(cfg.train.seed)
    mean, std = run.train_set.mean[0], run.train_set.std[0]
    side = int(run.train_set.images.shape[-1])
    crop = [transforms.RandomCrop(side, padding=4), transforms.RandomHorizontalFlip()]
    train_tf = transforms.Compose(
        [
            *(crop if augment.crop_flip else []),
            transforms.PILToTensor(),  # the strong policies on uint8, as the engine runs them
            *policy_transforms(augment, side),
            transforms.ConvertImageDtype(torch.float32),
            transforms.Normalize((mean,), (std,)),
        ]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    train_loader = DataLoader(
        PILImages(run.train_set.images, run.train_set.labels, train_tf),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    test_loader = DataLoader(
        PILImages(run.test_set.images, run.test_set.labels, test_tf),
        batch_size=256,
        num_workers=args.workers,
    )
    model = fresh_model()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.train.lr, momentum=0.9, weight_decay=cfg.train.weight_decay
    )
    scheduler = build_scheduler(optimizer, cfg.train, len(train_loader))  # the same schedule
    ref = [reference_epoch(model, train_loader, optimizer, scheduler) for _ in range(args.epochs)]
    ref_acc = reference_accuracy(model, test_loader)

    from table import machine

    result = {
        "machine": machine(),
        "torch": torch.__version__,
        "epochs": args.epochs,
        "train_images": len(run.train_set),
        "batch": cfg.train.batch_size,
        "reference_workers": args.workers,
        "probe_mode": probe_mode,
        "augment": args.augment,
        "ours": {
            "images_per_s": float(np.mean(ours)),
            "test_top1": ours_acc,
            "amp": str(run.dtype),
            "channels_last": cfg.train.channels_last,
            "compile": args.compile,
            "compile_s": compile_s,
        },
        "reference": {"images_per_s": float(np.mean(ref)), "test_top1": ref_acc},
        "speedup": float(np.mean(ours) / np.mean(ref)),
        "bare_step_images_per_s": bound,
    }
    if multi:
        result["ours_procs"] = multi
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{args.out_name}.json", result)
    md = render(result, cfg.train.batch_size)
    atomic_write_text(RESULTS / f"{args.out_name}.md", md)
    print(md)


if __name__ == "__main__":
    main()
