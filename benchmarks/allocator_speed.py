"""CPU training speed under each malloc: glibc's, and jemalloc / tcmalloc preloaded.

glibc returns large freed blocks to the OS, so every training step faults its activations back in
page by page (the kernel zeroes each page); a caching allocator keeps them. Each round trains
configs/fmnist_lt.yaml (ResNet-32, Fashion-MNIST-LT) for ``--epochs`` epochs once per allocator,
each in a fresh ``camlt train`` process, the order rotating from round to round; images/s is the
engine's own figure (metrics.jsonl, training loop only). Writes
benchmarks/results/allocator_speed.json and .md and the README block.

    python benchmarks/allocator_speed.py                 # 5 rounds of 2 epochs: about 20 minutes
    python benchmarks/allocator_speed.py --render-only   # the table again from the saved results
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from table import RESULTS, ROOT, allocator, machine, publish

from camlt.checkpoint import read_jsonl
from camlt.rundir import FINAL_FILE, METRICS_FILE

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib")
# Preloaded library file (Debian's libjemalloc2 / libtcmalloc-minimal4) and its settings:
# jemalloc keeps freed pages for reuse instead of returning them after 10 s.
ALLOCATORS = {
    "jemalloc": ("libjemalloc.so.2", {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}),
    "tcmalloc": ("libtcmalloc_minimal.so.4", {}),
}


def find_library(filename: str) -> Path | None:
    """The first copy of a shared library in the usual system folders."""
    for folder in (*LIB_DIRS, f"{sys.prefix}/lib"):
        if (path := Path(folder) / filename).is_file():
            return path
    return None


def allocator_envs() -> dict[str, dict[str, str]]:
    """Environment additions per allocator: glibc (none) and each preloadable one installed."""
    envs: dict[str, dict[str, str]] = {"glibc": {}}
    for name, (filename, settings) in ALLOCATORS.items():
        if path := find_library(filename):
            envs[name] = {"LD_PRELOAD": str(path), **settings}
        else:
            print(f"{name}: {filename} not found in {', '.join(LIB_DIRS)}; skipped")
    return envs


def train_once(extra_env: dict[str, str], epochs: int, run_dir: Path) -> dict:
    """One ``camlt train`` process: the engine's mean images/s and the page faults it took."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        *(sys.executable, "-m", "camlt.cli", "train", str(ROOT / "configs" / "fmnist_lt.yaml")),
        *(f"train.epochs={epochs}", "train.progress=false"),
        f"train.run_dir={run_dir}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, env={**os.environ, **extra_env}, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rates = [r["images_per_s"] for r in read_jsonl(run_dir / METRICS_FILE)]
    final = json.loads((run_dir / FINAL_FILE).read_text())
    return {
        "precision": final.get("precision", "fp32"),
        "images_per_s": statistics.mean(rates),
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "sys_s": after.ru_stime - before.ru_stime,
    }


def render(result: dict) -> str:
    """Median images/s per allocator and its ratio to glibc's."""
    base = statistics.median(result["runs"]["glibc"]["images_per_s"])
    lines = [
        "**CPU training speed by malloc** (ResNet-32, Fashion-MNIST-LT IF100, "
        f"{result['epochs']} epoch(s) per process, {result['rounds']} rounds)",
        "",
        "| allocator | images/s (median) | rounds | vs glibc | page faults per run | sys s |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in result["runs"].items():
        rate = statistics.median(runs["images_per_s"])
        lines.append(
            f"| {allocator(result['envs'][name])} | {rate:.0f} | "
            f"{', '.join(f'{r:.0f}' for r in runs['images_per_s'])} | {rate / base:.2f}x | "
            f"{statistics.median(runs['minor_faults']):,.0f} | "
            f"{statistics.median(runs['sys_s']):.1f} |"
        )
    lines += [
        "",
        f"Machine: {result['machine']}; {result['precision']}; each run a fresh "
        "`camlt train` process, the order rotating every round.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the table from the saved results"
    )
    args = parser.parse_args(argv)
    if args.render_only:
        saved = RESULTS / "allocator_speed.json"
        if not saved.is_file():
            sys.exit(f"{saved}: no saved results to render; run without --render-only first")
        result = json.loads(saved.read_text())
        publish("allocator_speed", result, render(result))
        return
    envs = allocator_envs()
    runs = {name: {"images_per_s": [], "minor_faults": [], "sys_s": []} for name in envs}
    names = list(envs)
    precisions: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="camlt-alloc-") as tmp:
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                out = train_once(envs[name], args.epochs, Path(tmp) / name)
                print(f"round {i + 1} {name}: {out['images_per_s']:.0f} images/s", flush=True)
                precisions.add(out.pop("precision"))
                for key, value in out.items():
                    runs[name][key].append(value)
    result = {
        "machine": machine(),
        "precision": "/".join(sorted(precisions)),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "envs": envs,
        "runs": runs,
    }
    text = render(result)
    publish("allocator_speed", result, text)
    print(text)


if __name__ == "__main__":
    main()
