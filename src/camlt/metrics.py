"""Long-tail evaluation: overall and per-class top-1, shot groups by training count, head/middle/tail, ECE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MANY_ABOVE = 100  # many-shot: more than 100 training images
FEW_BELOW = 20  # few-shot: fewer than 20
ECE_BINS = 15


def per_class_accuracy(
    preds: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> list[float | None]:
    """Top-1 accuracy of each class; None for a class absent from the evaluation set."""
    total = torch.bincount(targets, minlength=num_classes)
    right = torch.bincount(targets[preds == targets], minlength=num_classes)
    return [(r / t).item() if t > 0 else None for r, t in zip(right, total, strict=True)]


def shot_groups(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Classes by training count: many > 100, medium 20..100, few < 20 (BENCHMARKS.md)."""
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for cls, n in enumerate(train_counts):
        key = "many" if n > MANY_ABOVE else "few" if n < FEW_BELOW else "medium"
        groups[key].append(cls)
    return groups


def frequency_thirds(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Head = the round(C/3) most frequent classes, tail = the round(C/3) rarest, middle = the rest."""
    order = sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))
    third = round(len(order) / 3)
    return {
        "head": order[:third],
        "middle": order[third : len(order) - third],
        "tail": order[len(order) - third :],
    }


def group_mean(per_class: Sequence[float | None], classes: Sequence[int]) -> float | None:
    """Mean of per-class accuracies over a group (the balanced-test convention); None when empty."""
    values = [per_class[c] for c in classes if per_class[c] is not None]
    return sum(values) / len(values) if values else None


def expected_calibration_error(
    confidences: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| * share."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    conf = confidences.double()
    idx = torch.bucketize(conf, edges[1:-1])  # bin i holds (edge_i, edge_{i+1}]; 0 goes to bin 0
    ece = torch.zeros((), dtype=torch.float64)
    n = len(conf)
    for b in range(bins):
        mask = idx == b
        if mask.any():
            gap = correct[mask].double().mean() - conf[mask].mean()
            ece += gap.abs() * mask.sum() / n
    return ece.item()


def evaluate_predictions(
    logits: torch.Tensor, targets: torch.Tensor, train_counts: Sequence[int]
) -> dict:
    """The full metrics dict for one evaluation (accuracies as fractions in [0, 1])."""
    num_classes = len(train_counts)
    probs = logits.float().softmax(dim=1)
    conf, preds = probs.max(dim=1)
    per_class = per_class_accuracy(preds, targets, num_classes)
    metrics: dict = {
        "overall": (preds == targets).double().mean().item(),
        "num_samples": len(targets),
    }
    for name, members in {**shot_groups(train_counts), **frequency_thirds(train_counts)}.items():
        metrics[name] = group_mean(per_class, members)
        metrics[f"{name}_classes"] = len(members)
    metrics["ece"] = expected_calibration_error(conf, preds == targets)
    metrics["per_class"] = per_class
    return metrics


GROUP_COLUMNS = ("overall", "many", "medium", "few", "head", "middle", "tail", "ece")


def format_table(
    metrics: dict, classes: Sequence[str] | None = None, train_counts: Sequence[int] | None = None
) -> str:
    """A plain-text table of the headline metrics, then per-class accuracy."""
    lines = ["metric    value   classes"]
    for key in GROUP_COLUMNS:
        value = metrics.get(key)
        shown = "-" if value is None else f"{100 * value:6.2f}"
        count = metrics.get(f"{key}_classes", "")
        lines.append(f"{key:<9} {shown:>6}   {count}")
    if classes is not None:
        lines.append("")
        lines.append(f"{'class':<16} {'train':>6} {'acc':>7}")
        for cls, name in enumerate(classes):
            acc = metrics["per_class"][cls]
            n = train_counts[cls] if train_counts else ""
            lines.append(f"{name[:16]:<16} {n:>6} {'-' if acc is None else f'{100 * acc:6.2f}':>7}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- localisation
# Does a map find the object? A map (B, h, w) is upsampled bilinearly to the canvas; its negative
# part says "not this class" and carries no location, so only the positive mass counts. A map
# spread evenly scores the box's share of the canvas (the uniform baseline stated beside every
# figure), a map wholly inside the box 1; a map with no positive mass points nowhere and scores
# the uniform share.
def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) float masks, 1 inside each (x0, y0, x1, y1) box (ends exclusive)."""
    h, w = size
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).float()


def uniform_share(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,): the box's share of the canvas, what a map blind to the object scores."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return area.float() / (size[0] * size[1])


def box_share(maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,): the share of each map's positive mass, on the canvas, inside its box."""
    big = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)
    mass = big[:, 0].clamp_min(0)
    total = mass.flatten(1).sum(1)
    inside = (mass * box_masks(boxes, size)).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), uniform_share(boxes, size))
