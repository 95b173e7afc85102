"""Does a map find the object? Each map's in-box share (``camlt.metrics.box_share``) over a test
set whose images carry their object's box, per image, then by class and by group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from camlt.errors import UsageError
from camlt.metrics import box_share, frequency_thirds, group_mean, shot_groups, uniform_share
from camlt.viz import MAP_NAMES, compute_maps


def require_boxes(test_set, name: str) -> torch.Tensor:
    """The test set's boxes, or a clear refusal for a data set that has none."""
    boxes = getattr(test_set, "boxes", None)
    if boxes is None:
        raise UsageError(
            f"localisation needs object boxes, and data.name={name} has none: use a data set "
            "that keeps them (fmnist_lt_clutter)"
        )
    return boxes


@torch.no_grad()
def localise_test_set(loaded, test_set, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Per test image: each map's box share (for its true class) and the uniform baseline.

    Keys: the maps the head has (``raw_cam`` for every head; CAMC adds ``calibrated_cam``,
    ``correlation`` and ``importance``), and ``uniform``.
    """
    from camlt.data.inputs import normalise

    boxes = require_boxes(test_set, loaded.cfg.data.name)
    size = tuple(test_set.images.shape[-2:])
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(test_set.labels), batch_size):
        stop = start + batch_size
        images = normalise(test_set.images[start:stop], loaded.spec).to(loaded.device)
        labels = test_set.labels[start:stop]
        result = compute_maps(loaded.model, images, labels, loaded.adjust)
        for name in MAP_NAMES:
            if result.maps[name] is not None:
                share = box_share(result.maps[name], boxes[start:stop], size)
                parts.setdefault(name, []).append(share)
        parts.setdefault("uniform", []).append(uniform_share(boxes[start:stop], size))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def by_class(shares: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Mean share per class (every class of a test set has images)."""
    return [float(shares[labels == c].mean()) for c in range(num_classes)]


def by_group(per_class: Sequence[float], train_counts: Sequence[int]) -> dict[str, float | None]:
    """Class means averaged over the shot groups and frequency thirds, as the accuracy tables."""
    groups = {**shot_groups(train_counts), **frequency_thirds(train_counts)}
    return {name: group_mean(per_class, members) for name, members in groups.items()}
