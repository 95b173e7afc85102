"""Where the network looks: class activation maps of any head, drawn over the input images.

The CAMC head returns its four maps itself (raw CAM, calibrated CAM, cross-data correlation,
final importance). For heads without maps the raw CAM is computed here from the classifier
weights: ``<F_u, w_c>`` for a linear classifier, ``<F_u, w_c/|w_c|>`` for a normalized one. Each
is the map whose mean over locations gives the logit (for the normalized classifier, times
``s / |f0|``, one positive number per image), so it shows what the classifier scored, and the
maps of different heads compare location by location. A figure draws the maps its head has:
four for CAMC, the raw CAM alone for the others. Where the data set knows each object's box (the
cluttered benchmark), the box is drawn on every panel and each map's title says how much of its
positive mass falls inside (camlt.metrics.box_share).
Drawing uses matplotlib's Agg canvas directly, so importing this never touches a GUI backend.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camlt.heads.base import MapsHead, classifier_cam
from camlt.metrics import frequency_thirds

MAP_NAMES = ("raw_cam", "calibrated_cam", "correlation", "importance")
MAP_TITLES = {
    "raw_cam": "raw CAM",
    "calibrated_cam": "calibrated CAM",
    "correlation": "correlation",
    "importance": "importance",
}
PANEL_INCHES = (2.0, 2.3)  # width, height of one panel (the title needs the extra height)
DPI = 100
CMAP = "jet"
ALPHA = 0.5


# ----------------------------------------------------------------------------- maps
@dataclass
class MapResult:
    """Logits of a batch and the maps (B, h, w) for ``classes``; None marks a map the head lacks.

    ``base_logits`` is the map head's z0 (its guide) where it has one, so callers that study the
    guide need not run the backbone again.
    """

    logits: torch.Tensor
    classes: torch.Tensor
    maps: dict[str, torch.Tensor | None]
    base_logits: torch.Tensor | None = None


def map_head(head: nn.Module) -> nn.Module:
    """The head that holds the maps: stage-2 wrappers (tau-norm, LWS, posthoc) keep it as ``base``.

    Their per-class rescaling of a logit rescales that class's map by a positive factor, which
    the display (0 to each map's own maximum) does not show.
    """
    while isinstance(getattr(head, "base", None), nn.Module):
        head = head.base
    return head


@torch.no_grad()
def compute_maps(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | None = None,
    adjust: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> MapResult:
    """Maps of normalised ``images`` for ``classes`` (default: each image's top prediction).

    ``adjust`` is the test-time logit correction evaluation applies (``LoadedModel.adjust``).
    """
    was_training = model.training
    model.eval()
    try:
        fmap = model.features(images)
        logits = model.head(fmap).logits.float()
        logits = adjust(logits) if adjust else logits
        classes = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
        head = map_head(model.head)
        base = None
        if isinstance(head, MapsHead):
            out = head.maps(fmap, classes)
            maps = {name: out.maps.get(name) for name in MAP_NAMES}
            base = out.aux_logits
        else:
            maps = dict.fromkeys(MAP_NAMES)
            maps["raw_cam"] = classifier_cam(head, fmap, classes)
    finally:
        model.train(was_training)
    maps = {k: None if v is None else v.detach().float().cpu() for k, v in maps.items()}
    base = None if base is None else base.float().cpu()
    return MapResult(logits.cpu(), classes.cpu(), maps, base)


def tail_samples(labels: torch.Tensor, counts: list[int], limit: int) -> list[int]:
    """Indices of up to ``limit`` images of the rarest classes, rarest first, spread over classes:
    the images whose maps a long-tailed model most needs looked at."""
    tail = sorted(frequency_thirds(counts)["tail"], key=lambda c: (counts[c], c))
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in tail]
    chosen: list[int] = []
    for rank in range(max((len(p) for p in per_class), default=0)):
        chosen += [p[rank] for p in per_class if rank < len(p)]
    return chosen[:limit]


def upsample(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One (h, w) map bilinearly resized to the image size, on the panels' stated scale: 0 (cold)
    to the map's largest positive value (hot). Negative values say "not this class" and are drawn
    cold, so a map that is negative everywhere shows no evidence, as min-max scaling would."""
    big = F.interpolate(cam[None, None].float(), size=size, mode="bilinear", align_corners=False)
    big = big[0, 0].clamp_min(0)
    hi = big.max()
    return (big / hi if hi > 0 else torch.zeros_like(big)).numpy()


MAP_SCALE = (
    "each map coloured from 0 (cold) to its own largest positive value (hot); negative values "
    "(evidence against the class) cold"
)


def image_rgb(image: torch.Tensor) -> np.ndarray:
    """A uint8 (C, H, W) tensor as an (H, W, 3) float array in [0, 1] for display."""
    arr = image.float().div(255).permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def overlay_rgb(image: torch.Tensor, cam: torch.Tensor | None) -> np.ndarray:
    """The image blended with a colour-mapped map; a dimmed image when there is no map."""
    from matplotlib import colormaps

    base = image_rgb(image)
    if cam is None:
        return base * 0.35 + 0.4
    heat = colormaps[CMAP](upsample(cam, base.shape[:2]))[:, :, :3]
    return (1 - ALPHA) * base + ALPHA * heat


# ----------------------------------------------------------------------------- figures
@dataclass
class CamRow:
    """One row of panels: an image, its maps for one class, and the row's caption."""

    image: torch.Tensor  # uint8 (C, H, W), the model's input before normalisation
    maps: dict[str, torch.Tensor | None]
    caption: str
    box: tuple[int, int, int, int] | None = None  # the object's (x0, y0, x1, y1), ends exclusive


def figure_pixels(rows: int, cols: int = 1 + len(MAP_NAMES)) -> tuple[int, int]:
    """(width, height) in pixels of a CAM figure, so callers and tests know its size."""
    return round(cols * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


def shown_maps(rows: Sequence[CamRow]) -> list[str]:
    """The maps some row has, in MAP_NAMES order: a head without CAMC's maps gets no empty panels."""
    return [name for name in MAP_NAMES if any(row.maps.get(name) is not None for row in rows)]


def cam_figure(rows: Sequence[CamRow]):
    """A matplotlib Figure: per row the image, then each map the head has overlaid on it."""
    from matplotlib.figure import Figure

    names = shown_maps(rows)
    cols = 1 + len(names)
    width, height = figure_pixels(len(rows), cols)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(image_rgb(row.image), interpolation="nearest")
        axes[r, 0].set_title(row.caption, fontsize=8)
        draw_box(axes[r, 0], row.box)
        for c, name in enumerate(names, 1):
            cam = row.maps.get(name)
            ax = axes[r, c]
            ax.imshow(overlay_rgb(row.image, cam), interpolation="bilinear")
            draw_box(ax, row.box)
            if cam is None:  # a map another row of the figure has
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(MAP_TITLES[name], fontsize=8)
            else:
                ax.set_title(f"{MAP_TITLES[name]}\n{map_note(cam, row)}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    title_room = 0.45 / (PANEL_INCHES[1] * len(rows))  # two title lines above the first row
    fig.subplots_adjust(0.01, 0.01, 0.99, 1 - title_room, wspace=0.05, hspace=0.45)
    return fig


def draw_box(ax, box: tuple[int, int, int, int] | None) -> None:
    """The object's box on a panel (pixel edges, so it frames exactly the pixels inside)."""
    if box is None:
        return
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1.2)
    )


def map_note(cam: torch.Tensor, row: CamRow) -> str:
    """A panel's second title line: the map's range, or its in-box share where there is a box."""
    if row.box is None:
        return f"[{cam.min().item():.2g}, {cam.max().item():.2g}]"
    from camlt.metrics import box_share

    size = tuple(row.image.shape[-2:])
    share = box_share(cam[None], torch.tensor([row.box]), size)[0]
    return f"{100 * share:.0f}% in box"


def plain_text(func):
    """Draw every string as it is written: matplotlib would read a class name such as
    ``$\\frac$`` as mathtext and fail the whole figure on it (a report half written)."""

    @functools.wraps(func)
    def drawn_plainly(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return func(*args, **kwargs)

    return drawn_plainly


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG at its own size (no tight cropping, so the size is predictable)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def cam_rows_for(
    loaded, images: torch.Tensor, captions: Sequence[str], classes: torch.Tensor | None
) -> tuple[list[CamRow], MapResult]:
    """Rows for a batch of uint8 images and the class to map in each (None: predicted)."""
    from camlt.data.inputs import normalise

    batch = normalise(images, loaded.spec).to(loaded.device)
    result = compute_maps(loaded.model, batch, classes, loaded.adjust)
    rows = [
        CamRow(images[i], {k: None if v is None else v[i] for k, v in result.maps.items()}, cap)
        for i, cap in enumerate(captions)
    ]
    return rows, result


def cam_pages(
    loaded,
    images: torch.Tensor,
    names: Sequence[str],
    labels: Sequence[int | None],
    boxes: torch.Tensor | None = None,
) -> list[list[CamRow]]:
    """Per image, its rows: the maps of the predicted class and, if labelled, of the true one."""
    pred_rows, pred = cam_rows_for(loaded, images, [""] * len(names), None)
    probs = pred.logits.softmax(dim=1)
    labelled = [i for i, label in enumerate(labels) if label is not None]
    true_rows = {}
    if labelled:
        wanted = torch.tensor([labels[i] for i in labelled])
        rows, _ = cam_rows_for(loaded, images[labelled], [""] * len(labelled), wanted)
        true_rows = dict(zip(labelled, rows, strict=True))
    pages = []
    for i, name in enumerate(names):
        top = int(pred.classes[i])
        row = pred_rows[i]
        row.caption = f"{name}\npredicted {loaded.classes[top]} ({100 * probs[i, top]:.0f}%)"
        rows = [row]
        if i in true_rows:
            label = labels[i]
            true_rows[i].caption = (
                f"true {loaded.classes[label]} ({100 * probs[i, label]:.0f}%)"
                + (" = predicted" if label == top else "")
            )
            rows.append(true_rows[i])
        for r in rows:
            r.box = None if boxes is None else tuple(boxes[i].tolist())
        pages.append(rows)
    return pages


@plain_text
def write_cam_images(
    loaded,
    paths: Sequence[Path],
    out_dir: str | Path,
    labels: Sequence[int | None] | None = None,
    warn=None,
) -> list[Path]:
    """One PNG per decodable image: maps for the predicted class and, if labelled, the true one."""
    from camlt.data.inputs import load_images

    out_dir = Path(out_dir)
    label_of = dict(zip(paths, labels or [None] * len(paths), strict=True))
    kept, images = load_images(paths, loaded.spec, warn)
    if images is None:
        return []
    pages = cam_pages(loaded, images, [p.name for p in kept], [label_of[p] for p in kept])
    written, used = [], set()
    for path, rows in zip(kept, pages, strict=True):
        name = f"{path.stem}_cam.png"
        n = 1
        while name in used:  # same file name in two folders
            n += 1
            name = f"{path.stem}_{n}_cam.png"
        used.add(name)
        written.append(save_figure(cam_figure(rows), out_dir / name))
    return written


@plain_text
def write_test_cams(loaded, test_set, count: int, out_dir: str | Path) -> list[Path]:
    """One PNG per test image of the rarest classes (rarest first, spread over the tail): the
    maps of the predicted and the true class, and the object's box where the data set has one."""
    from camlt.data.inputs import set_images

    images, kept = set_images(test_set, tail_samples(test_set.labels, loaded.train_counts, count))
    if not kept:
        return []
    boxes = getattr(test_set, "boxes", None)
    labels = [int(test_set.labels[i]) for i in kept]
    names = [f"test image {i}" for i in kept]
    pages = cam_pages(loaded, images, names, labels, None if boxes is None else boxes[kept])
    return [
        save_figure(cam_figure(rows), Path(out_dir) / f"test_{i:05d}_cam.png")
        for i, rows in zip(kept, pages, strict=True)
    ]
