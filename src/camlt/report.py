"""``camlt report``: one self-contained HTML page of a run, with PNG figures beside it.

The run's checkpoint is evaluated once on its test set (rebuilt from the run's config); the raw
logits are cached in the output folder, keyed by the checkpoint (path, size, time) and the test
data (a hash), the run's decision rule applied after, and every figure reads them. The page has no external resources: open it from disk or copy the folder.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from camlt.checkpoint import atomic_write_text, read_jsonl
from camlt.config import to_yaml
from camlt.data.inputs import DATASETS, set_images
from camlt.data.leaks import DataCheck
from camlt.errors import UsageError
from camlt.metrics import ECE_BINS, GROUP_COLUMNS, evaluate_predictions
from camlt.rundir import METRICS_FILE
from camlt.trained import LoadedModel, open_run
from camlt.viz import MAP_SCALE, plain_text

CONFUSION_FULL_MAX = 20  # above this many classes, show the most confused pairs instead
CONFUSED_PAIRS = 20
COLORS = {"run": "#1f77b4", "baseline": "#ff7f0e"}


@dataclass
class RunData:
    """A run's model, test predictions, metrics and training history, as the figures need them."""

    name: str
    run_dir: Path
    loaded: LoadedModel
    logits: torch.Tensor
    labels: torch.Tensor
    metrics: dict
    history: list[dict]

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    @property
    def counts(self) -> list[int]:
        return self.loaded.train_counts


# ----------------------------------------------------------------------------- predictions
@torch.no_grad()
def _test_logits(loaded: LoadedModel, test_set) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits and labels of a whole test set: in-memory tensors or image files."""
    if hasattr(test_set, "images"):
        return loaded.raw_logits(test_set.images), test_set.labels
    from camlt.data.files import FileLoader, LoaderOptions

    train = loaded.cfg.train
    options = LoaderOptions(train.workers, False, train.pin_memory, train.prefetch_factor)
    loader = FileLoader(test_set, 256, False, options=options, device=loaded.device)
    logits, labels = [], []
    loaded.model.eval()
    for images, y in loader:  # undecodable files (data.bad_images=skip) are left out
        logits.append(loaded.model(images).logits.float().cpu())
        labels.append(y.cpu())
    loader.close()
    return torch.cat(logits), torch.cat(labels)


def data_key(test_set) -> str:
    """What the test set is: its pixels and labels (in memory) or its files' names, sizes and
    modification times, hashed; cached predictions of other data are never reused."""
    digest = hashlib.sha256()
    if hasattr(test_set, "images"):
        for part in (test_set.images, test_set.labels):
            digest.update(part.contiguous().cpu().numpy().tobytes())
    else:
        for path, label in zip(test_set.files, test_set.labels.tolist(), strict=True):
            stat = os.stat(path) if os.path.exists(path) else None
            digest.update(
                f"{path}|{label}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def test_predictions(
    loaded: LoadedModel, test_set, cache: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw test-set logits and labels, reused from ``cache`` while the checkpoint and the data
    are unchanged (the decision rule is applied after, so a new calibration needs no new pass)."""
    stat = loaded.checkpoint.stat()
    key = [
        str(loaded.checkpoint.resolve()),
        int(stat.st_size),
        int(stat.st_mtime_ns),
        data_key(test_set),
    ]
    if cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                return saved["logits"], saved["labels"]
        except Exception:  # a stale or torn cache is simply recomputed
            pass
    logits, labels = _test_logits(loaded, test_set)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "logits": logits, "labels": labels}, cache)
    return logits, labels


def load_run_data(run_dir: str | Path, name: str, out: Path, device: str, test_set=None):
    """Load a run, rebuild its test set (unless given) and evaluate it once (cached)."""
    from camlt.data import build_sets

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run directory")
    loaded = open_run(run_dir, device=device)
    if loaded.foreign:  # the table would be one model's, the curves another's
        raise UsageError(f"{loaded.foreign}; report on the run that wrote it")
    history = read_jsonl(run_dir / METRICS_FILE, required=("epoch", "loss"))
    # a run killed between its two end-of-epoch writes logs one epoch past its checkpoint
    if history and history[-1]["epoch"] not in (loaded.epoch, loaded.epoch + 1):
        raise UsageError(
            f"{run_dir}: {METRICS_FILE} ends at epoch {history[-1]['epoch']} but "
            f"{loaded.checkpoint.name} is of epoch {loaded.epoch}: they are not one run's"
        )
    if test_set is None:
        sets = build_sets(loaded.cfg, verbose=False)
        test_set, loaded.data_check = sets.test, sets.check
    if list(test_set.classes) != loaded.classes:
        raise UsageError(f"{run_dir}: its classes differ from the test set it is compared on")
    raw, labels = test_predictions(loaded, test_set, out / f"predictions_{name}.pt")
    logits = loaded.adjust(raw)
    metrics = evaluate_predictions(logits, labels, loaded.train_counts)
    return RunData(name, run_dir, loaded, logits, labels, metrics, history), test_set


# ----------------------------------------------------------------------------- figures
def _figure(cols: int = 1, width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def learning_curves(runs: Sequence[RunData]):
    """Training loss, learning rate and test accuracy (overall, tail) per epoch."""
    fig, (ax_loss, ax_lr, ax_acc) = _figure(3, 13, 3.6)
    for run in runs:
        color, style = COLORS[run.name], "-" if run.name == "run" else "--"
        epochs = [r["epoch"] for r in run.history]
        ax_loss.plot(epochs, [r["loss"] for r in run.history], style, color=color, label=run.name)
        ax_lr.plot(epochs, [r["lr"] for r in run.history], style, color=color, label=run.name)
        tested = [r for r in run.history if "test" in r]
        for key, marker, alpha in (("overall", "o", 1.0), ("tail", "s", 0.5)):
            pts = [(r["epoch"], r["test"].get(key)) for r in tested]
            pts = [(e, 100 * v) for e, v in pts if v is not None]
            if pts:
                ax_acc.plot(
                    *zip(*pts, strict=True),
                    style,
                    marker=marker,
                    ms=3,
                    color=color,
                    alpha=alpha,
                    label=f"{run.name} {key}",
                )
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_lr.set(title="learning rate (epoch start)", xlabel="epoch")
    ax_acc.set(title="test top-1 (%)", xlabel="epoch")
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def per_class_vs_count(runs: Sequence[RunData]):
    """Per-class test accuracy against the class's training count, log x."""
    fig, (ax,) = _figure(1, 7, 4.5)
    for run in runs:
        acc = [np.nan if a is None else 100 * a for a in run.metrics["per_class"]]
        ax.scatter(run.counts, acc, color=COLORS[run.name], label=run.name, s=18, alpha=0.8)
    base = runs[0]
    if len(base.classes) <= CONFUSION_FULL_MAX:
        placed: list[tuple[float, float]] = []
        for name, n, a in zip(base.classes, base.counts, base.metrics["per_class"], strict=True):
            if a is None:
                continue
            # a label near one already placed goes a line lower, so names never overprint
            near = sum(abs(np.log10(n) - x) < 0.25 and abs(100 * a - y) < 6 for x, y in placed)
            placed.append((np.log10(n), 100 * a))
            ax.annotate(
                name, (n, 100 * a), fontsize=7, xytext=(3, 3 - 9 * near), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.set(xlabel="training images of the class (log)", ylabel="test accuracy (%)", ylim=(-3, 103))
    ax.set_title("per-class accuracy against training count")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def group_bars(runs: Sequence[RunData]):
    """Mean per-class accuracy of many/medium/few and head/middle/tail, side by side per run."""
    groups = ("many", "medium", "few", "head", "middle", "tail")
    fig, (ax,) = _figure(1, 8, 4)
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        xs = np.arange(len(groups)) + (i - (len(runs) - 1) / 2) * width
        for x, group in zip(xs, groups, strict=True):
            value = run.metrics.get(group)
            if value is None:  # no class in this group (e.g. no few-shot class at IF 100)
                ax.text(x, 1, "n/a", ha="center", fontsize=7, rotation=90)
                continue
            ax.bar(x, 100 * value, width, color=COLORS[run.name], label=run.name)
            ax.text(x, 100 * value + 1, f"{100 * value:.1f}", ha="center", fontsize=7)
    labels = [f"{g}\n({runs[0].metrics.get(f'{g}_classes', 0)} cl.)" for g in groups]
    ax.set_xticks(np.arange(len(groups)), labels)
    ax.axvline(2.5, color="grey", lw=0.8)
    ax.set(ylabel="mean per-class accuracy (%)", ylim=(0, 105))
    ax.set_title("shot groups (by training count) and frequency thirds")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    ax.legend(unique.values(), unique.keys())
    return fig


def reliability(runs: Sequence[RunData]):
    """Accuracy against confidence in the ECE bins, one panel per run."""
    fig, axes = _figure(len(runs), 4.5 * len(runs), 4.2)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for ax, run in zip(axes, runs, strict=True):
        conf, pred = run.logits.softmax(1).max(1)
        correct = (pred == run.labels).numpy()
        idx = np.clip(np.searchsorted(edges[1:-1], conf.numpy(), side="left"), 0, ECE_BINS - 1)
        acc = [correct[idx == b].mean() if (idx == b).any() else np.nan for b in range(ECE_BINS)]
        ax.bar(
            edges[:-1],
            acc,
            width=1 / ECE_BINS,
            align="edge",
            color=COLORS[run.name],
            edgecolor="k",
            lw=0.5,
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.set_title(f"{run.name}: ECE {100 * run.metrics['ece']:.2f}%")
    return fig


def confusion(run: RunData):
    """Row-normalised confusion matrix, or the most confused (true, predicted) pairs."""
    k = len(run.classes)
    pred = run.logits.argmax(1)
    matrix = torch.bincount(run.labels * k + pred, minlength=k * k).view(k, k).double()
    rates = (matrix / matrix.sum(1, keepdim=True).clamp_min(1)).numpy()
    if k <= CONFUSION_FULL_MAX:
        order = table_order(run.counts)  # the class table's order: most training images first
        matrix, rates = matrix[order][:, order], rates[order][:, order]
        fig, (ax,) = _figure(1, 7, 6)
        im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(
            range(k), [run.classes[c] for c in order], rotation=60, ha="right", fontsize=8
        )
        ax.set_yticks(
            range(k), [f"{run.classes[c]} (train {run.counts[c]})" for c in order], fontsize=8
        )
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if matrix[i, j] > 0:
                        ax.text(
                            j,
                            i,
                            f"{rates[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="white" if rates[i, j] > 0.5 else "black",
                        )
        ax.set(xlabel="predicted", ylabel="true (training images)")
        ax.set_title("confusion matrix (rows sum to 1)")
        fig.colorbar(im, ax=ax, shrink=0.8)
        return fig
    off = rates.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:CONFUSED_PAIRS]
    pairs = [(i // k, i % k) for i in flat if off.flat[i] > 0]
    fig, (ax,) = _figure(1, 8, 0.3 * max(len(pairs), 4) + 1.2)
    names = [f"{run.classes[t]} (train {run.counts[t]}) -> {run.classes[p]}" for t, p in pairs]
    ax.barh(range(len(pairs)), [100 * off[t, p] for t, p in pairs], color=COLORS[run.name])
    ax.set_yticks(range(len(pairs)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="share of the true class's test images (%)")
    ax.set_title(f"the {len(pairs)} most confused pairs: true (training count) -> predicted")
    return fig


def tail_cam_grid(run: RunData, test_set, limit: int):
    """CAM overlays of test images of the rarest classes, for the predicted class, with the
    object's box where the data set has one; None if none."""
    from camlt.viz import cam_figure, cam_rows_for, tail_samples

    images, kept = set_images(test_set, tail_samples(test_set.labels, run.counts, limit))
    if not kept:
        return None
    rows, result = cam_rows_for(run.loaded, images, [""] * len(kept), None)
    boxes = getattr(test_set, "boxes", None)
    for row, i, pred in zip(rows, kept, result.classes.tolist(), strict=True):
        true = int(test_set.labels[i])
        mark = "" if pred == true else " (wrong)"
        row.caption = (
            f"true {run.classes[true]} ({run.counts[true]})\npred {run.classes[pred]}{mark}"
        )
        row.box = None if boxes is None else tuple(boxes[i].tolist())
    return cam_figure(rows)


def localisation_vs_count(runs: Sequence[RunData], test_set):
    """Each map's in-box share per class against the class's training count, beside the box's
    share of the canvas (a map blind to the object); None for a data set without boxes."""
    from camlt.localisation import by_class, localise_test_set
    from camlt.viz import MAP_TITLES

    if getattr(test_set, "boxes", None) is None:
        return None
    fig, (ax,) = _figure(1, 7, 4.5)
    markers = dict(zip(MAP_TITLES, "osD^", strict=True))
    k = len(runs[0].classes)
    for run in runs:
        shares = localise_test_set(run.loaded, test_set)
        uniform = by_class(shares.pop("uniform"), test_set.labels, k)
        for name, values in shares.items():
            per_class = [100 * v for v in by_class(values, test_set.labels, k)]
            ax.scatter(
                run.counts, per_class, marker=markers[name], color=COLORS[run.name], s=20,
                alpha=0.8, label=f"{run.name}: {MAP_TITLES[name]}",
            )  # fmt: skip
    order = sorted(range(k), key=lambda c: runs[0].counts[c])
    ax.plot(
        [runs[0].counts[c] for c in order], [100 * uniform[c] for c in order], color="grey",
        ls="--", label="uniform map (box share)",
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set(xlabel="training images of the class (log)", ylabel="map mass inside the box (%)")
    ax.set_ylim(0, 100)
    ax.set_title("where the maps look: share inside the object's box, map of the true class")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------- the page
PAGE_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } else { imgs[i].classList.add('missing'); }
  }
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded', ok);
});
"""

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; } figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #eee; } img.missing { outline: 3px solid red; min-height: 2em; }
figcaption { color: #555; font-size: 0.9em; } pre { background: #f6f6f6; padding: 1em; overflow: auto; }
.warn { border: 2px solid #c00; background: #fff4f4; padding: 0.5em 1em; }
"""


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _metrics_table(runs: Sequence[RunData]) -> str:
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    rows = "".join(
        f"<tr><td>{key}</td>"
        + "".join(f"<td>{_pct(r.metrics.get(key))}</td>" for r in runs)
        + "</tr>"
        for key in GROUP_COLUMNS
    )
    return f"<table><tr><th>metric (%)</th>{head}</tr>{rows}</table>"


def table_order(counts: Sequence[int]) -> list[int]:
    """Classes by training count, most first: the order of every per-class table and figure."""
    return sorted(range(len(counts)), key=lambda c: (-counts[c], c))


def _class_table(runs: Sequence[RunData]) -> str:
    base = runs[0]
    tests = base.metrics.get("test_counts") or [""] * len(base.classes)
    head = "".join(
        f"<th>{html.escape(r.name)} recall</th><th>{html.escape(r.name)} F1</th>" for r in runs
    )
    rows = "".join(
        f"<tr><td>{html.escape(base.classes[c])}</td><td>{base.counts[c]}</td><td>{tests[c]}</td>"
        + "".join(
            f"<td>{_pct(r.metrics['per_class'][c])}</td>"
            f"<td>{_pct((r.metrics.get('per_class_f1') or [None] * len(base.classes))[c])}</td>"
            for r in runs
        )
        + "</tr>"
        for c in table_order(base.counts)
    )
    return (
        f"<table><tr><th>class</th><th>training images</th><th>test images</th>{head}</tr>"
        f"{rows}</table>"
    )


def _describe(run: RunData) -> str:
    cfg = run.loaded.cfg
    data = html.escape(cfg.data.name)
    if cfg.data.name in DATASETS:  # a benchmark cut to a profile: its order and imbalance
        data += f" order={cfg.data.order} IF={cfg.data.imbalance:g}"
    else:  # files: where they are (and the profile only where the run cut one)
        data += f" {html.escape(str(cfg.data.root or cfg.data.image_root or cfg.data.csv_file))}"
        data += f" IF={cfg.data.imbalance:g}" if cfg.data.subsample else ""
    return (
        f"<b>{html.escape(run.name)}</b>: <code>{html.escape(str(run.run_dir))}</code> "
        f"(epoch {run.loaded.epoch}/{cfg.train.epochs}): {data}, backbone "
        f"{html.escape(cfg.model.backbone)}, head {html.escape(cfg.model.head)}, loss "
        f"{html.escape(cfg.loss.name)}"
    )


def _data_check(found: dict | None) -> str:
    """The data check's verdict (camlt.data.leaks), loud when it found something."""
    if found is None:
        return ""
    lines = DataCheck(**found).lines()
    if not lines:
        return (
            "<p>Data check: no image in two splits, under two labels or twice in a class; "
            "no look-alike class names.</p>"
        )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<div class='warn'><b>Data check: these results may be wrong.</b><ul>{items}</ul></div>"


def render_page(runs: Sequence[RunData], figures: dict[str, tuple[str, str]]) -> str:
    """The HTML page: metrics, figures (relative PNG links) and the run's config."""
    title = f"camlt report: {runs[0].run_dir.name}"
    figs = "".join(
        f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for file, caption in figures.values()
    )
    config = html.escape(to_yaml(runs[0].loaded.cfg))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{'<br>'.join(_describe(r) for r in runs)}</p>"
        f"{_data_check(runs[0].loaded.data_check)}"
        f"<h2>Test metrics</h2>{_metrics_table(runs)}<h2>Figures</h2>{figs}"
        f"<h2>Per-class accuracy</h2>{_class_table(runs)}"
        f"<h2>Configuration</h2><details><summary>config.yaml of the run</summary><pre>{config}</pre></details>"
        f"<script>{PAGE_SCRIPT}</script></body></html>\n"
    )


@plain_text
def build_report(
    run_dir: str | Path,
    baseline: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    cam_images: int = 8,
) -> Path:
    """Write ``index.html`` and its PNG figures to ``out`` (default RUN_DIR/report); returns the page."""
    from camlt.viz import save_figure

    out = Path(out) if out else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    run, test_set = load_run_data(run_dir, "run", out, device)
    runs = [run]
    if baseline:
        base, _ = load_run_data(baseline, "baseline", out, device, test_set)
        if base.loaded.cfg.data != run.loaded.cfg.data:
            from camlt.config import diff

            raise UsageError(
                f"--baseline {baseline}: trained on other data than {run_dir}: "
                + "; ".join(diff(run.loaded.cfg.data, base.loaded.cfg.data, "data."))
            )
        runs.append(base)
    both = ": the run and the baseline." if baseline else "."
    run_only = ": the run only." if baseline else "."
    makers = {
        "learning_curves": (
            lambda: learning_curves(runs),
            "Learning curves: loss, learning rate and test accuracy per epoch" + both,
        ),
        "per_class_accuracy": (
            lambda: per_class_vs_count(runs),
            "Per-class test accuracy against the class's training count (log scale)" + both,
        ),
        "groups": (
            lambda: group_bars(runs),
            "Many (>100) / medium (20..100) / few (<20) shot groups and head / middle / tail thirds"
            + both,
        ),
        "reliability": (
            lambda: reliability(runs),
            f"Reliability diagram: accuracy per confidence bin ({ECE_BINS} bins)" + both,
        ),
        "confusion": (
            lambda: confusion(run),
            "Confusion on the test set (the most confused pairs when there are many classes), "
            "classes in the class table's order" + run_only,
        ),
        "tail_cams": (
            lambda: tail_cam_grid(run, test_set, cam_images),
            "CAM overlays of tail-class test images, for the predicted class (with the object's "
            f"box, and each map's share inside it, where the data set has boxes); {MAP_SCALE}"
            + run_only,
        ),
        "localisation": (  # only a data set with boxes (the cluttered benchmark) has this one
            lambda: localisation_vs_count(runs, test_set),
            "Localisation: each map's positive mass inside the object's box, per class, against "
            "the class's training count; the dashed line is a map spread evenly (the box's share)"
            + both,
        ),
    }
    figures: dict[str, tuple[str, str]] = {}
    for key, (make, caption) in makers.items():
        fig = make()
        if fig is not None:
            save_figure(fig, out / f"{key}.png")
            figures[key] = (f"{key}.png", caption)
    summary = {r.name: {"run_dir": str(r.run_dir), "metrics": r.metrics} for r in runs}
    if run.loaded.data_check is not None:
        summary["data_check"] = run.loaded.data_check
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    page = out / "index.html"
    atomic_write_text(page, render_page(runs, figures))
    for path in (page, out / "metrics.json"):  # atomic writes leave 0600; a page is for sharing
        path.chmod(0o644)
    return page
