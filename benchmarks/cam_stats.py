"""Where a trained model looks, measured per class on the whole test set (docs/camc.md:
"measure before believing").

For each class, over its test images and the map of its true class:
- ``on-object lift``: the share of the map's mass on object pixels divided by the object's share
  of the image. Fashion-MNIST objects sit on a black background, so "object" is simply
  pixel > 0.1 of full scale; 1 means the map ignores the object, above 1 it sits on it.
- ``peak``: the largest value of the importance map ``a`` (mean 1 over locations): 1 is flat,
  ``H*W`` (64 at 8x8) puts everything on one location.
- ``guide hit``: how often the true class is among the head's guide classes (top-k of z0),
  and ``top-1 z0``: how often the base prediction is already right.
- ``accuracy``: of the final logits.
Maps without CAMC (linear or normalized heads) use their own CAM, shifted to be non-negative;
the CAMC-only columns are then "-".
- ``in box`` (data sets with object boxes, the cluttered one): the share of each map's positive
  mass inside the object's box (camlt.localisation), beside the box's share of the canvas, which
  a map blind to the object scores.

    python benchmarks/cam_stats.py RUN_DIR [RUN_DIR ...]
    python benchmarks/cam_stats.py --table clutter      # every kept run of a table, by group

Writes benchmarks/results/cam_stats.json (one entry per run, by run directory name) and .md;
``--table`` writes results/localisation.json and .md (each (row, seed) measured once, kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import clutter
import runner
import table
import torch
import torch.nn.functional as F

from camlt.checkpoint import atomic_write_json, atomic_write_text
from camlt.data import build_sets
from camlt.data.inputs import normalise
from camlt.localisation import by_class, by_group, localise_test_set
from camlt.rundir import FINAL_FILE
from camlt.trained import open_run
from camlt.viz import MAP_TITLES, compute_maps, map_head

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLES = {"clutter": (clutter.ROWS, clutter.TITLE)}  # tables whose data sets have boxes
OBJECT_LEVEL = 0.1 * 255  # a Fashion-MNIST pixel brighter than this belongs to the object


def object_share(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w): the fraction of each feature cell's pixels that belong to the object."""
    mask = (images[:, :1].float() > OBJECT_LEVEL).float()
    return F.adaptive_avg_pool2d(mask, size)[:, 0]


def on_object_lift(maps: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """(B,): the map's mass on the object over the object's area; 1 for a map blind to it."""
    mass = maps.clamp_min(0).flatten(1)
    mass = mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
    share = share.flatten(1)
    return (mass * share).sum(1) / share.mean(1).clamp_min(1e-12)


def guide_hits(z0: torch.Tensor | None, k: int, labels: torch.Tensor):
    """(top-1 of z0 right, label among the top-k guide classes), or None for a head without z0."""
    if z0 is None:
        return None
    top = z0.topk(min(k, z0.shape[1]), dim=1).indices
    return z0.argmax(1) == labels, (top == labels[:, None]).any(1)


@torch.no_grad()
def run_stats(run_dir: Path, batch_size: int = 500) -> dict:
    """Per-class map statistics of one trained run on its test set."""
    loaded = open_run(run_dir, device="cpu")
    head = map_head(loaded.model.head)
    test = build_sets(loaded.cfg, verbose=False).test
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("lift", "peak", "z0", "guide", "ok")}
    labels_all = []
    for start in range(0, len(test.labels), batch_size):
        raw = test.images[start : start + batch_size]
        labels = torch.as_tensor(test.labels[start : start + batch_size])
        images = normalise(raw, loaded.spec)
        result = compute_maps(loaded.model, images, labels, loaded.adjust)
        importance = result.maps["importance"]
        cam = importance if importance is not None else result.maps["raw_cam"]
        if importance is None:  # a plain CAM: shift to non-negative per image
            cam = cam - cam.flatten(1).min(1).values[:, None, None]
        columns["lift"].append(on_object_lift(cam, object_share(raw, cam.shape[-2:])))
        if importance is not None:
            columns["peak"].append(importance.flatten(1).max(1).values)
        hits = guide_hits(result.base_logits, getattr(head, "k", 0), labels)
        if hits is not None:
            columns["z0"].append(hits[0].float())
            columns["guide"].append(hits[1].float())
        columns["ok"].append((result.logits.argmax(1) == labels).float())
        labels_all.append(labels)
    labels = torch.cat(labels_all)
    in_box = localise_test_set(loaded, test, batch_size) if test.boxes is not None else {}
    per_class = []
    for c, name in enumerate(loaded.classes):
        sel = labels == c
        row = {"class": name, "train": loaded.train_counts[c]}
        for key, parts in columns.items():
            row[key] = float(torch.cat(parts)[sel].mean()) if parts else None
        row["in_box"] = {m: float(shares[sel].mean()) for m, shares in in_box.items()}
        per_class.append(row)
    return {"run": str(run_dir), "head": loaded.cfg.model.head, "per_class": per_class}


@torch.no_grad()
def run_localisation(run_dir: Path) -> dict:
    """Each map's in-box share of one run, by class and by group, with the uniform baseline."""
    loaded = open_run(run_dir, device="cpu")
    test = build_sets(loaded.cfg, verbose=False).test
    shares = localise_test_set(loaded, test)
    per_class = {m: by_class(v, test.labels, len(loaded.classes)) for m, v in shares.items()}
    rarest = min(range(len(loaded.classes)), key=lambda c: (loaded.train_counts[c], c))
    return {
        name: {
            "overall": sum(values) / len(values),
            **by_group(values, loaded.train_counts),
            "rarest": values[rarest],
            "per_class": values,
        }
        for name, values in per_class.items()
    }


def markdown(name: str, stats: dict) -> str:
    """One table per run, classes from most to fewest training images."""

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    def num(v):
        return "-" if v is None else f"{v:.2f}"

    boxed = list(stats["per_class"][0].get("in_box", {}))
    box_header = "".join(f" in box: {MAP_TITLES.get(m, m)} |" for m in boxed)
    lines = [
        f"**{name}** ({stats['head']} head)",
        "",
        "| class | train | accuracy | on-object lift | peak of a | top-1 z0 | guide hit |"
        + box_header,
        "|---|---|---|---|---|---|---|" + "---|" * len(boxed),
    ]
    for row in sorted(stats["per_class"], key=lambda r: -r["train"]):
        lines.append(
            f"| {row['class']} | {row['train']} | {pct(row['ok'])} | {num(row['lift'])} | "
            f"{num(row['peak'])} | {pct(row['z0'])} | {pct(row['guide'])} |"
            + "".join(f" {pct(row['in_box'][m])} |" for m in boxed)
        )
    return "\n".join(lines) + "\n"


LOCALISATION_GROUPS = ("overall", "head", "middle", "tail", "rarest")


def localisation_markdown(rows: list[table.Row], title: str, kept: dict) -> str:
    """Row by map: the mean in-box share (%) by group over the seeds measured, +- their spread."""
    lines = [
        f"**Where the maps look: share of each map's positive mass inside the object's box** "
        f"({title}; test set, map of the true class)",
        "",
        "| row | map | seeds | " + " | ".join(LOCALISATION_GROUPS) + " |",
        "|---|---|---|" + "---|" * len(LOCALISATION_GROUPS),
    ]
    for row in rows:
        mine = sorted((k, v) for k, v in kept.items() if k.split("/seed")[0] == row.name)
        if not mine:
            continue
        seeds = ",".join(k.split("/seed")[1] for k, _ in mine)
        entries = [v for _, v in mine]
        for name in entries[0]:
            values = {g: [e[name][g] for e in entries] for g in LOCALISATION_GROUPS}
            cells = [table.cell(v) for v in values.values()]
            label = "uniform (box share)" if name == "uniform" else MAP_TITLES.get(name, name)
            lines.append(f"| {row.name} | {label} | {seeds} | " + " | ".join(cells) + " |")
    if len(lines) == 4:
        return "Not run yet.\n"
    lines += [
        "",
        "overall: the mean over classes; head / middle / tail: the thirds by training count; "
        "rarest: the class with the fewest training images. A map spread evenly scores the "
        "uniform row (the box's share of the canvas); a map wholly inside the box 100. Raw CAM: "
        "the classifier's own map for every head; CAMC adds its calibrated CAM, correlation "
        "and importance. Maps upsampled bilinearly from the 8 x 8 feature map to 32 x 32.",
    ]
    return "\n".join(lines) + "\n"


def fill_localisation(name: str, runs_dir: Path) -> str:
    """Measure every kept (row, seed) of a table whose run is on disk and not yet measured."""
    rows, title = TABLES[name]
    path = RESULTS / "localisation.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    results = table.load(RESULTS / f"{name}.json")
    for key, entry in sorted(results.items()):
        run_dir = runner.run_dir_of(entry["row"], entry["seed"], runs_dir)
        if key in kept or not (run_dir / FINAL_FILE).is_file():
            continue
        print(f"measuring {key}", flush=True)
        kept[key] = run_localisation(run_dir)
        atomic_write_json(path, kept)
    text = localisation_markdown(rows, title, kept)
    table.publish("localisation", kept, text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="trained run directories")
    parser.add_argument("--table", choices=sorted(TABLES), help="every kept run of a table")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs/benchmarks/recipe")
    args = parser.parse_args()
    if args.table:
        print(fill_localisation(args.table, args.runs_dir))
        return
    if not args.runs:
        parser.error("give run directories, or --table")
    path = RESULTS / "cam_stats.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for run_dir in args.runs:
        results[run_dir.name] = run_stats(run_dir)
        atomic_write_json(path, results)
    text = "\n".join(markdown(name, stats) for name, stats in sorted(results.items()))
    text += (
        "\nOn-object lift: map mass on object pixels / object area (1 = blind to the object). "
        "Peak of a: max of the importance map (1 = flat). Guide hit: true class among the top-k "
        "of z0. In box: the share of the map's positive mass inside the object's box; uniform: "
        "the box's share of the canvas. All on the test set, map of the true class.\n"
    )
    atomic_write_text(RESULTS / "cam_stats.md", text)
    print(text)


if __name__ == "__main__":
    main()
