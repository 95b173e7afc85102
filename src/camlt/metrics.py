"""Long-tail evaluation: overall and per-class top-1, shot groups by training count, head/middle/tail, ECE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from camlt.errors import printable

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
    """Classes by training count: many > 100, medium 20..100, few < 20 (the field's shot groups)."""
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


# A class with fewer test images than this has an accuracy of a few coarse steps (0 or 100 with
# one image): it is marked in the table, and its shot group's mean leans on it.
FEW_TEST = 5
CONFUSION_MAX = 100  # classes up to which the confusion matrix is kept (K^2 numbers an epoch)
TOPK = 5  # top-k accuracy beside top-1, where there are more than k classes


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def precision_recall_f1(confusion: torch.Tensor) -> dict[str, list[float | None]]:
    """Per-class precision, recall and F1 from a confusion matrix; None where undefined (a class
    never predicted has no precision, a class absent from the split no recall)."""
    right = confusion.diagonal().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    out: dict[str, list[float | None]] = {"precision": [], "recall": [], "f1": []}
    for r, p, a in zip(right.tolist(), predicted.tolist(), actual.tolist(), strict=True):
        prec = r / p if p > 0 else None
        rec = r / a if a > 0 else None
        f1 = 2 * r / (p + a) if a > 0 else None  # 0 when the class is never predicted
        out["precision"].append(prec)
        out["recall"].append(rec)
        out["f1"].append(f1)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def evaluate_predictions(
    logits: torch.Tensor, targets: torch.Tensor, train_counts: Sequence[int]
) -> dict:
    """The full metrics dict for one evaluation (accuracies as fractions in [0, 1]).

    On a balanced test split plain accuracy is the headline, as the benchmarks report it; on a
    split whose classes have unequal test counts (a user's folder) plain accuracy rewards the
    frequent classes, so balanced accuracy (mean per-class recall) leads instead.
    """
    num_classes = len(train_counts)
    probs = logits.float().softmax(dim=1)
    conf, preds = probs.max(dim=1)
    confusion = confusion_matrix(preds, targets, num_classes)
    test_counts = confusion.sum(1).tolist()
    scores = precision_recall_f1(confusion)
    per_class = scores["recall"]
    tested = [n for n in test_counts if n > 0]
    balanced_split = len(set(tested)) <= 1
    metrics: dict = {
        "overall": (preds == targets).double().mean().item() if len(targets) else None,
        "balanced_accuracy": _mean(per_class),
        "macro_f1": _mean(scores["f1"]),
        "headline": "overall" if balanced_split else "balanced_accuracy",
        "num_samples": len(targets),
    }
    if num_classes > TOPK:
        top = logits.float().topk(TOPK, dim=1).indices
        metrics[f"top{TOPK}"] = (top == targets[:, None]).any(1).double().mean().item()
    for name, members in {**shot_groups(train_counts), **frequency_thirds(train_counts)}.items():
        metrics[name] = group_mean(per_class, members)
        # the classes the mean is over: a class without a test image is in no mean
        metrics[f"{name}_classes"] = sum(per_class[c] is not None for c in members)
    metrics["ece"] = expected_calibration_error(conf, preds == targets)
    metrics["per_class"] = per_class
    metrics["per_class_precision"] = scores["precision"]
    metrics["per_class_f1"] = scores["f1"]
    metrics["test_counts"] = test_counts
    metrics["few_test_classes"] = [c for c, n in enumerate(test_counts) if 0 < n < FEW_TEST]
    if num_classes <= CONFUSION_MAX:
        metrics["confusion"] = confusion.tolist()
    return metrics


GROUP_COLUMNS = (
    "overall", "balanced_accuracy", "macro_f1", f"top{TOPK}",
    "many", "medium", "few", "head", "middle", "tail", "ece",
)  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:6.2f}"


def format_table(
    metrics: dict, classes: Sequence[str] | None = None, train_counts: Sequence[int] | None = None
) -> str:
    """A plain-text table: the headline first (with why it leads), the other summaries, then
    per class its training and test counts, recall, precision and F1."""
    headline = metrics.get("headline", "overall")
    lines = []
    if headline == "balanced_accuracy":
        lines.append(
            "headline: balanced accuracy (mean per-class recall): the test split's classes have "
            "unequal counts, so plain accuracy would reward the frequent ones"
        )
    lines.append("metric             value   classes")
    keys = [headline, *(k for k in GROUP_COLUMNS if k != headline and k in metrics)]
    for key in keys:
        count = metrics.get(f"{key}_classes", "")
        lines.append(f"{key:<18} {_pct(metrics.get(key)):>6}   {count}")
    if classes is None:
        return "\n".join(lines)
    few = set(metrics.get("few_test_classes", []))
    tests = metrics.get("test_counts") or [""] * len(classes)
    precision = metrics.get("per_class_precision") or [None] * len(classes)
    f1 = metrics.get("per_class_f1") or [None] * len(classes)
    lines += ["", f"{'class':<16} {'train':>6} {'test':>5} {'recall':>7} {'prec':>7} {'f1':>7}"]
    for cls, name in enumerate(classes):
        n = train_counts[cls] if train_counts else ""
        mark = "  *" if cls in few else ""
        lines.append(
            f"{printable(name)[:16]:<16} {n:>6} {tests[cls]:>5} {_pct(metrics['per_class'][cls]):>7} "
            f"{_pct(precision[cls]):>7} {_pct(f1[cls]):>7}{mark}"
        )
    if few:
        lines.append(
            f"* fewer than {FEW_TEST} test images: that class's scores move in coarse steps"
        )
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
