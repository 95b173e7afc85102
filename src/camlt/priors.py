"""Class priors where a model is used, and the decision rule that takes them into account.

A long-tailed model is trained under one class prior (the training counts) and used under
another: balanced benchmarks test under a uniform prior, a deployment under whatever its stream
holds. The rule here is Bayes' with the run's fitted corrections (``camlt calibrate``)::

    score = (z - tau * log p_train) / T + log p_target

``tau`` removes the training prior from the logits (post-hoc logit adjustment), ``T`` is the
temperature that makes the probabilities honest, and ``p_target`` is the prior expected where
the model is used (omitted: uniform). The scores after ``tau`` are taken to be for a uniform
prior: true after ``camlt calibrate`` (tau is fitted for balanced accuracy) and for runs trained
with a re-balancing loss.

Shifted test priors (test-agnostic evaluation, after LADE and SADE): one trained model is
evaluated on test sets drawn from the balanced test set with an exponential profile, forward
(most images for the classes with most training images) or backward (the order reversed), at
imbalance ratios 50, 25, 10, 5 and 2, beside the uniform set itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from camlt.data.longtail import profile_counts, select_indices
from camlt.errors import UsageError
from camlt.losses import posthoc_adjust

SHIFT_RATIOS = (50, 25, 10, 5, 2)
TEST_PRIORS = (
    *(f"forward{r}" for r in SHIFT_RATIOS),
    "uniform",
    *(f"backward{r}" for r in reversed(SHIFT_RATIOS)),
)
NAMED_PRIORS = ("train", "uniform")


# ----------------------------------------------------------------------------- the decision rule
def adjust_logits(
    logits: torch.Tensor,
    train_counts: Sequence[int],
    tau: float = 0.0,
    temperature: float = 1.0,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(z - tau log p_train) / T + log p_target`` (see the module docstring)."""
    out = posthoc_adjust(logits.float(), train_counts, tau)
    if temperature != 1.0:
        out = out / temperature
    if prior is not None:
        out = out + torch.log(prior.to(out.device, torch.float32))
    return out


# ----------------------------------------------------------------------------- priors
def normalised(values: Sequence[float], source: str, num_classes: int) -> torch.Tensor:
    """Non-negative numbers, one a class, as probabilities; anything else refused by ``source``."""
    if len(values) != num_classes:
        raise UsageError(f"{source}: {len(values)} values, but the model has {num_classes} classes")
    bad = [v for v in values if not isinstance(v, int | float) or not math.isfinite(v) or v < 0]
    if bad:
        raise UsageError(f"{source}: {bad[0]!r} is not a non-negative number (class frequencies)")
    total = float(sum(values))
    if total <= 0:
        raise UsageError(f"{source}: every class frequency is zero; at least one must be above 0")
    return torch.tensor([v / total for v in values], dtype=torch.float64)


def read_prior_file(path: Path, classes: Sequence[str]) -> torch.Tensor:
    """A prior file: JSON (a list, one number a class, or an object {class name: number}) or
    text with one number a class (whitespace- or comma-separated)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"prior file {path}: cannot read it ({err})") from None
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UsageError(
                f"prior file {path}: line {err.lineno}: invalid JSON ({err.msg})"
            ) from None
        if isinstance(data, dict):
            unknown = [k for k in data if k not in classes]
            missing = [c for c in classes if c not in data]
            if unknown or missing:
                raise UsageError(
                    f"prior file {path}: " + "; ".join(
                        [f"unknown classes {unknown[:5]}"] * bool(unknown)
                        + [f"classes without a value {missing[:5]}"] * bool(missing)
                    ) + f" (the model's classes: {', '.join(classes)})"
                )  # fmt: skip
            data = [data[c] for c in classes]
        return normalised(data, f"prior file {path}", len(classes))
    values = []
    for number, line in enumerate(text.splitlines(), 1):
        for item in line.replace(",", " ").split():
            try:
                values.append(float(item))
            except ValueError:
                raise UsageError(
                    f"prior file {path}: line {number}: {item!r} is not a number"
                ) from None
    return normalised(values, f"prior file {path}", len(classes))


def parse_prior(
    spec: str, classes: Sequence[str], train_counts: Sequence[int]
) -> torch.Tensor | None:
    """``train``, ``uniform`` (None: no correction) or a prior file, as probabilities."""
    if spec == "uniform":
        return None
    if spec == "train":
        return normalised(list(train_counts), "the training counts", len(classes))
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"--prior {spec}: expected {' or '.join(NAMED_PRIORS)} or a prior file (no such file)"
        )
    return read_prior_file(path, classes)


# ----------------------------------------------------------------------------- shifted test sets
def shifted_counts(name: str, train_counts: Sequence[int], per_class: int) -> list[int]:
    """Per-class test counts of a shifted test set (``forward50`` ... ``backward50``), in class
    index order; ``per_class`` is what every class has in the balanced test set."""
    if name not in TEST_PRIORS:
        raise UsageError(f"--test-prior {name}: expected one of {', '.join(TEST_PRIORS)} or all")
    num_classes = len(train_counts)
    if name == "uniform":
        return [per_class] * num_classes
    ratio = float(name.removeprefix("forward").removeprefix("backward"))
    by_rank = profile_counts(num_classes, per_class, ratio, "exp")
    order = sorted(range(num_classes), key=lambda c: (-train_counts[c], c))  # the training order
    if name.startswith("backward"):
        order = order[::-1]
    counts = [0] * num_classes
    for rank, cls in enumerate(order):
        counts[cls] = by_rank[rank]
    return counts


def shifted_test_indices(
    name: str, labels: torch.Tensor, train_counts: Sequence[int], seed: int = 0
) -> np.ndarray:
    """Which images of a balanced test set make the shifted test set ``name`` (seeded: the same
    images on every machine), drawn as the long-tailed training subsets are."""
    labels_np = labels.cpu().numpy()
    have = np.bincount(labels_np, minlength=len(train_counts))
    if have.min() != have.max():
        raise UsageError(
            f"--test-prior {name}: the test split is not balanced ({have.min()} to {have.max()} "
            "images a class); shifted priors are drawn from a balanced test set"
        )
    counts = shifted_counts(name, train_counts, int(have[0]))
    return select_indices(labels_np, counts, seed)
