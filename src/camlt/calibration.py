"""Post-hoc corrections fitted on the validation split, never on test: the logit adjustment's
tau (for balanced accuracy) and a temperature (for honest probabilities).

``camlt calibrate RUN`` fits both and keeps them in ``RUN/calibration.json``; evaluation,
prediction, export and ``camlt.load`` apply them (``camlt.priors.adjust_logits``). A balanced
validation split stands in for a uniform test prior; the fitted tau replaces the recipe's
``loss.posthoc_tau``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from camlt.checkpoint import CheckpointError, atomic_write_json
from camlt.metrics import evaluate_predictions
from camlt.priors import adjust_logits
from camlt.rundir import CALIBRATION_FILE

TAU_GRID = tuple(round(0.05 * i, 2) for i in range(41))  # 0 .. 2: 1 is the Bayes-optimal shift


@dataclass
class Calibration:
    """What ``camlt calibrate`` fitted, and on what (kept with the run)."""

    tau: float = 0.0
    temperature: float = 1.0
    fitted_on: dict = field(default_factory=dict)  # split, images, checkpoint epoch
    before: dict = field(default_factory=dict)  # balanced accuracy and ECE on that split
    after: dict = field(default_factory=dict)


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean per-class recall over the classes present."""
    preds = logits.argmax(1)
    right = torch.bincount(labels[preds == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    present = total > 0
    return (right[present] / total[present]).mean().item()


def fit_tau(logits: torch.Tensor, labels: torch.Tensor, train_counts: Sequence[int]) -> float:
    """The tau of TAU_GRID with the best balanced accuracy (the smallest among ties)."""
    k = len(train_counts)
    scores = [
        balanced_accuracy(adjust_logits(logits, train_counts, tau), labels, k) for tau in TAU_GRID
    ]
    return TAU_GRID[scores.index(max(scores))]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood (a convex problem in log T)."""
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    z = logits.double()
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    temperature = float(log_t.exp())
    return temperature if math.isfinite(temperature) and temperature > 0 else 1.0


def summary(logits: torch.Tensor, labels: torch.Tensor, train_counts: Sequence[int]) -> dict:
    """The two numbers a calibration moves: balanced accuracy and ECE."""
    metrics = evaluate_predictions(logits, labels, train_counts)
    return {"balanced_accuracy": metrics["balanced_accuracy"], "ece": metrics["ece"]}


def fit(
    logits: torch.Tensor, labels: torch.Tensor, train_counts: Sequence[int], fitted_on: dict
) -> Calibration:
    """tau first (it moves the decisions), then the temperature on the adjusted logits."""
    tau = fit_tau(logits, labels, train_counts)
    temperature = fit_temperature(adjust_logits(logits, train_counts, tau), labels)
    return Calibration(
        tau=tau,
        temperature=temperature,
        fitted_on=fitted_on,
        before=summary(logits, labels, train_counts),
        after=summary(adjust_logits(logits, train_counts, tau, temperature), labels, train_counts),
    )


def save(run_dir: Path, calibration: Calibration) -> Path:
    path = run_dir / CALIBRATION_FILE
    atomic_write_json(path, asdict(calibration))
    return path


def load(run_dir: Path) -> Calibration | None:
    """The run's calibration, None when it has none; a damaged file is named, not guessed at."""
    path = run_dir / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cal = Calibration(**data)
        tau, temperature = float(cal.tau), float(cal.temperature)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path}: not a calibration camlt wrote ({err}); delete it or run camlt calibrate again"
        ) from None
    if not (math.isfinite(tau) and math.isfinite(temperature) and temperature > 0):
        raise CheckpointError(
            f"{path}: tau={tau}, temperature={temperature}: expected finite, T > 0"
        )
    return cal
