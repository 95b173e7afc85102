"""One speed table, a row per machine class and engine setting, from the kept results of
benchmarks/train_speed.py (each measured side by side with the reference loop in one run).

    python benchmarks/speed_summary.py     # writes results/speed_summary.json and .md, and the blocks

Rates move between sittings on shared machines, so the table's figure is the ratio of each run
(engine over reference, measured in the same process); the rates are shown beside it.
"""

from __future__ import annotations

import json

from table import RESULTS, publish

# (results stem, how the engine ran): every train_speed results file there is
SOURCES = {
    "train_speed": "eager",
    "train_speed_2procs": "eager",
    "train_speed_compiled": "train.compile=default",
    "train_speed_epyc_autoaugment": "eager",
    "train_speed_xeon": "eager",
    "train_speed_xeon_compiled": "train.compile=default",
    "gpu_train_speed": "eager",
}


def precision(amp: str) -> str:
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(amp, "fp32")


def machine_class(result: dict) -> str:
    """The machine as the README's reader cares: a GPU, or a CPU with or without native bf16."""
    name = result["machine"]
    if "NVIDIA" in name or "AMD Instinct" in name:
        return name
    return f"{name.split(' (')[0]}, {'native bf16' if precision(result['ours']['amp']) == 'bf16' else 'no native bf16'}"


def rows(results: dict[str, dict]) -> list[dict]:
    out = []
    for stem, mode in SOURCES.items():
        result = results.get(stem)
        if result is None:
            continue
        ours, ref = result["ours"], result["reference"]
        out.append(
            {
                "source": stem,
                "machine": machine_class(result),
                "engine": f"{precision(ours['amp'])}, {mode}",
                "augment": result.get("augment", "crop_flip"),
                "ours": ours["images_per_s"],
                "reference": ref["images_per_s"],
                "speedup": result["speedup"],
                "epochs": result["epochs"],
                "torch": result["torch"],
            }
        )
        if result.get("ours_procs"):
            procs = result["ours_procs"]
            out.append(
                {
                    **out[-1],
                    "engine": f"{out[-1]['engine']}, {procs['procs']} processes",
                    "ours": procs["images_per_s"],
                    "speedup": procs["images_per_s"] / ref["images_per_s"],
                }
            )
    return out


def render(table: list[dict]) -> str:
    lines = [
        "**Training speed: camlt's engine against the reference loop** (ResNet-32, "
        "Fashion-MNIST-LT IF100, batch 128; the reference: per-image PIL transforms in a "
        "DataLoader, fp32, NCHW; both in one run)",
        "",
        "| machine | engine | augmentation | engine images/s | reference images/s | speed-up | epochs | torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['machine']} | {r['engine']} | {r['augment']} | {r['ours']:.0f} | "
            f"{r['reference']:.0f} | {r['speedup']:.2f}x | {r['epochs']} | {r['torch']} |"
        )
    lines += [
        "",
        "A speed-up is measured within one run; rates of different rows come from different "
        "sittings and are not compared. Each row's own file, `benchmarks/results/<source>.md`, "
        "has its bare-step bounds.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = {
        stem: json.loads((RESULTS / f"{stem}.json").read_text())
        for stem in SOURCES
        if (RESULTS / f"{stem}.json").is_file()
    }
    table = rows(results)
    text = render(table)
    publish("speed_summary", table, text)
    print(text)


if __name__ == "__main__":
    main()
