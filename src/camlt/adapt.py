"""Test-time aggregation of a multi-expert model (SADE's test-time self-supervised aggregation):
weights for the experts learned from unlabelled test images, no label used.

A test set whose class prior differs from the training one (more head images, or more tail) is
served best by the expert trained for that prior. Its images show which: the weights that make
the joint prediction most stable across two augmented views of each image (the mean cosine
similarity of the two views' class probabilities) favour the experts whose answers hold. The
experts' logits for both views are computed once; the weights ``softmax(theta)`` are then fitted
to convergence on them by L-BFGS (SADE takes an epoch of SGD steps instead), in about a second.

``camlt adapt RUN --test | --images DIR`` keeps the weights in ``RUN/expert_weights.json``;
``camlt.trained.open_run`` loads them into the model, so eval, predict, cam and export use them.
Deleting the file returns to equal weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from camlt.checkpoint import CheckpointError, atomic_write_json
from camlt.data.inputs import InputSpec, load_images, set_images
from camlt.data.tensors import random_crop_flip
from camlt.errors import UsageError
from camlt.models.experts import ExpertHeads
from camlt.rundir import EXPERT_WEIGHTS_FILE


@dataclass
class Aggregation:
    """What ``camlt adapt`` learned, and on what (kept with the run)."""

    weights: list[float]
    fitted_on: dict = field(default_factory=dict)  # images (source, count), checkpoint epoch
    stability_before: float = 0.0  # with equal weights
    stability_after: float = 0.0


def experts_of(model: torch.nn.Module) -> ExpertHeads:
    """The model's experts; a single model is refused, naming what adapt is for."""
    head = getattr(model, "head", None)
    if not isinstance(head, ExpertHeads):
        raise UsageError(
            "camlt adapt learns how to weigh a multi-expert model's experts; this run has one "
            "model (train with model.experts=3 and loss.name=sade or balpoe)"
        )
    return head


@torch.no_grad()
def view_log_probs(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    normalise: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    seed: int = 0,
) -> torch.Tensor:
    """Each expert's log-probabilities on two augmented views (pad-and-crop by an eighth of the
    side, flip) of every uint8 image: (2, experts, N, K) on the CPU."""
    experts = experts_of(model)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    views: list[list[torch.Tensor]] = [[], []]
    for batch in batches:
        pad = max(1, batch.shape[-1] // 8)
        for view in views:
            x = normalise(random_crop_flip(batch, pad, generator)).to(device)
            outputs = experts.expert_outputs(model.features(x))
            view.append(torch.stack([F.log_softmax(o.logits.float(), 1).cpu() for o in outputs]))
    if not views[0]:
        raise UsageError("camlt adapt: no image to learn the experts' weights from")
    return torch.stack([torch.cat(view, dim=1) for view in views])


def stability(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the two views' joint class probabilities under ``weights``."""
    joint = torch.einsum("e,vebk->vbk", weights.to(log_probs.dtype), log_probs).softmax(dim=2)
    return F.cosine_similarity(joint[0], joint[1], dim=1).mean()


def fit_weights(log_probs: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The experts' weights that maximise the views' agreement, from equal ones; with the
    agreement before and after."""
    count, cached = log_probs.shape[1], log_probs.double()
    theta = torch.zeros(count, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [theta], max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -stability(cached, theta.softmax(0))
        loss.backward()
        return loss

    optimizer.step(closure)
    weights = theta.detach().softmax(0).float()
    before = float(stability(log_probs, torch.full((count,), 1.0 / count)))
    return weights, before, float(stability(log_probs, weights))


def save(run_dir: Path, aggregation: Aggregation) -> Path:
    path = run_dir / EXPERT_WEIGHTS_FILE
    atomic_write_json(path, asdict(aggregation))
    return path


def load(run_dir: Path | None, experts: int) -> Aggregation | None:
    """The run's learned expert weights, None when it has none; a damaged file is named."""
    path = None if run_dir is None else run_dir / EXPERT_WEIGHTS_FILE
    if path is None or not path.is_file():
        return None
    try:
        found = Aggregation(**json.loads(path.read_text(encoding="utf-8")))
        weights = [float(w) for w in found.weights]
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path}: not expert weights camlt wrote ({err}); delete it or run camlt adapt again"
        ) from None
    if len(weights) != experts or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise CheckpointError(
            f"{path}: weights {weights}: expected {experts} finite numbers >= 0, one an expert"
        )
    found.weights = weights
    return found


def split_batches(cfg, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """The uint8 images of a run's test split, a batch at a time (their labels are not read)."""
    from camlt.data.loaders import build_sets  # the data stack, only when it is needed

    data = build_sets(cfg, verbose=False).test
    for start in range(0, len(data), batch_size):
        images, _ = set_images(data, range(start, min(start + batch_size, len(data))))
        if len(images):
            yield images


def file_batches(paths: Sequence[Path], spec: InputSpec, batch_size: int = 256) -> Iterator:
    """Image files as the model's uint8 input, a batch at a time; an undecodable one is named
    and left out."""
    for start in range(0, len(paths), batch_size):
        _, images = load_images(paths[start : start + batch_size], spec)
        if images is not None:
            yield images
