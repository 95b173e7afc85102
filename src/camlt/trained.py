"""One way to open a trained run, for every reader of one: eval, calibrate, predict, cam, report,
export and the Python API (``camlt.load``).

The run's own ``config.yaml`` is the config, checked against the one saved inside the checkpoint
(a difference in a key that changes what the model computes is refused, naming the key); only
keys that cannot change the model's answers (where the data now lives, which held-out images a
val split takes) may be given anew. Only the model and the split to evaluate are built: never a
training run. The fitted corrections of ``camlt calibrate`` travel with the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from camlt import __version__, adapt, calibration
from camlt.calibration import Calibration
from camlt.checkpoint import CheckpointError, load_checkpoint
from camlt.compat import EVAL_FREE_KEYS, weight_differences
from camlt.config import ConfigError, diff, from_yaml_file, parse_overrides, validate
from camlt.data.inputs import InputSpec, input_spec, normalise
from camlt.distributed import resolve_device
from camlt.errors import UsageError
from camlt.metrics import evaluate_predictions
from camlt.models import LongTailClassifier, build_model
from camlt.models.experts import ExpertHeads
from camlt.preflight import check_settings
from camlt.priors import adjust_logits, shifted_test_indices
from camlt.registry import Describes
from camlt.rundir import CONFIG_FILE, EXPERT_WEIGHTS_FILE, resolve, run_id, saved_config
from camlt.stage2 import adapt_model

SPLITS = ("test", "val")


@dataclass
class LoadedModel:
    """A trained model ready for inference, with what is needed to read its outputs."""

    model: LongTailClassifier
    cfg: DictConfig
    classes: list[str]
    train_counts: list[int]
    spec: InputSpec
    device: torch.device
    checkpoint: Path
    epoch: int
    warnings: list[str]
    run_dir: Path | None = None
    calibration: Calibration | None = None
    prior: torch.Tensor | None = None  # expected class frequencies where used (None: uniform)
    foreign: str | None = None  # why the checkpoint is not the run directory's own, if it is not
    data_check: dict | None = None  # camlt.data.leaks' findings on the data last evaluated

    def class_index(self, name_or_index: str) -> int:
        """A class given by name or by index, with the valid names in the error."""
        if name_or_index in self.classes:
            return self.classes.index(name_or_index)
        if name_or_index.lstrip("-").isdigit() and 0 <= int(name_or_index) < len(self.classes):
            return int(name_or_index)
        raise UsageError(
            f"unknown class '{name_or_index}'; expected a name or an index 0..{len(self.classes) - 1}"
            f": {', '.join(self.classes)}"
        )

    @property
    def tau(self) -> float:
        """The logit adjustment applied: the fitted one, else the recipe's loss.posthoc_tau."""
        if self.calibration is not None:
            return float(self.calibration.tau)
        return float(OmegaConf.select(self.cfg, "loss.posthoc_tau", default=0.0) or 0.0)

    @property
    def temperature(self) -> float:
        return float(self.calibration.temperature) if self.calibration is not None else 1.0

    def adjust(self, logits: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """The run's decision rule on raw logits (``camlt.priors``): evaluation, prediction and
        export all apply this one, so their answers agree. ``prior`` replaces ``self.prior``."""
        target = self.prior if prior is None else prior
        return adjust_logits(logits, self.train_counts, self.tau, self.temperature, target)

    @torch.no_grad()
    def raw_logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The model's logits (N, K) on the CPU for a uint8 image batch, before any correction."""
        self.model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            batch = normalise(images[start : start + batch_size], self.spec).to(self.device)
            out.append(self.model(batch).logits.float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Adjusted logits (N, K) of a uint8 image batch: the scores decisions are made on."""
        return self.adjust(self.raw_logits(images, batch_size))


# ----------------------------------------------------------------------------- opening a run
def _check_overrides(overrides: Sequence[str]) -> dict:
    """Only keys that cannot change what the trained model computes may be set anew."""
    parsed = parse_overrides(list(overrides))

    def leaves(tree: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in tree.items():
            out += leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
        return out

    refused = [key for key in leaves(parsed) if not key.startswith(EVAL_FREE_KEYS)]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: a trained run's model cannot change; only where its data lives "
            f"and which images a val split takes may be set ({', '.join(EVAL_FREE_KEYS)})"
        )
    return parsed


def run_config(run_dir: Path, ckpt: Path, state: dict, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's config.yaml (the checkpoint's where there is none), checked against the
    checkpoint's, with eval-free overrides laid over it."""
    embedded = saved_config(state, ckpt)
    try:  # the open sections' keys (a part's settings) against this camlt's registries
        check_settings(embedded)
    except ConfigError as err:
        written_by = state.get("camlt_version", "unknown")
        raise CheckpointError(
            f"{ckpt}: {err} (the checkpoint was written by camlt {written_by}; this is camlt "
            f"{__version__})"
        ) from None
    beside = run_dir / CONFIG_FILE
    cfg = embedded
    if beside.is_file():
        cfg = from_yaml_file(beside)
        changed = [d for d in diff(embedded, cfg) if not d.startswith(EVAL_FREE_KEYS)]
        if changed:
            raise CheckpointError(
                f"{beside} differs from the config saved in {ckpt}, under which its weights were "
                f"trained: {'; '.join(changed)} (checkpoint != config.yaml); restore the run's "
                "config.yaml or open the checkpoint file alone"
            )
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(_check_overrides(overrides)))
        validate(cfg)
    return cfg


def open_run(
    path: str | Path, overrides: Sequence[str] = (), device: str | torch.device = "auto"
) -> LoadedModel:
    """Rebuild and load the model of a run directory (or checkpoint file) for inference."""
    run_dir, ckpt = resolve(path)
    state = load_checkpoint(ckpt)
    cfg = run_config(run_dir, ckpt, state, overrides)
    classes = list(state.get("classes") or [])
    counts = list(state.get("train_counts") or [])
    if not classes or len(classes) != len(counts):
        raise CheckpointError(f"{ckpt}: checkpoint lacks its class names or training counts")
    spec = input_spec(cfg)
    # the checkpoint's weights replace any pretrained ones: that file is not needed (nor read) here
    unloaded = OmegaConf.merge(cfg.model, {"pretrained": None})
    model = build_model(unloaded, len(classes), spec.channels, counts)
    model = adapt_model(model, cfg, len(classes))  # stage-2 runs wrap the backbone and head
    problems = weight_differences(state.get("model"), model)
    if problems:
        written_by = state.get("camlt_version", "unknown")
        raise CheckpointError(
            f"{ckpt}: the weights do not fit the model of its config (model.backbone="
            f"{cfg.model.backbone}, model.head={cfg.model.head}; written by camlt {written_by}, "
            f"this is camlt {__version__}): " + "; ".join(problems)
        )
    model.load_state_dict(state["model"])
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    # the memory layout training evaluated in, so eval repeats its numbers to the last digit
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(dev, memory_format=layout).eval()
    epoch = int(state.get("epoch", 0))
    fitted = calibration.load(run_dir)
    foreign = _foreign(run_dir, ckpt, state)
    warnings = [foreign] if foreign else []
    warnings += _adapted(model, run_dir, epoch)
    if fitted is not None and fitted.fitted_on.get("epoch") not in (None, epoch):
        warnings.append(
            f"{run_dir / calibration.CALIBRATION_FILE} was fitted at epoch "
            f"{fitted.fitted_on.get('epoch')}, the checkpoint is of epoch {epoch}: run camlt "
            "calibrate again"
        )
    return LoadedModel(
        model, cfg, classes, counts, spec, dev, ckpt, epoch, warnings, run_dir, fitted,
        foreign=foreign,
    )  # fmt: skip


def _adapted(model: LongTailClassifier, run_dir: Path | None, epoch: int) -> list[str]:
    """Load what ``camlt adapt`` learned into a multi-expert model; a warning if it was learned
    for another epoch's weights."""
    if not isinstance(model.head, ExpertHeads):
        return []
    learned = adapt.load(run_dir, len(model.head))
    if learned is None:
        return []
    model.head.set_weights(torch.tensor(learned.weights))
    if learned.fitted_on.get("epoch") in (None, epoch):
        return []
    return [
        f"{run_dir / EXPERT_WEIGHTS_FILE} was learned at epoch {learned.fitted_on.get('epoch')}, "
        f"the checkpoint is of epoch {epoch}: run camlt adapt again"
    ]


def _foreign(run_dir: Path, ckpt: Path, state: dict) -> str | None:
    """Why ``ckpt`` is another run's than the directory it lies in (the ids of both), or None;
    runs written before ids cannot tell."""
    own, written = run_id(run_dir), state.get("run_id")
    if own is None or written is None or own == written:
        return None
    return (
        f"{ckpt} was written by another run (run id {written}) than the one of {run_dir} "
        f"(run id {own}): the directory's metrics and curves are not this model's"
    )


# ----------------------------------------------------------------------------- evaluating a split
@torch.no_grad()
def loader_logits(
    model: torch.nn.Module, loader, device: torch.device, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits and labels of a whole evaluation loader."""
    model.eval()
    logits, labels = [], []
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    for images, y in loader:
        with ctx:
            logits.append(model(images.to(device)).logits.float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def split_logits(loaded: LoadedModel, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits and labels of the run's ``split`` (test or val), the data checked to be the
    data the run was trained on (the same classes and training counts)."""
    from camlt.data import build_loaders  # the data stack is loaded only to evaluate

    if split not in SPLITS:
        raise UsageError(f"--split {split}: expected one of {', '.join(SPLITS)}")
    data = build_loaders(loaded.cfg, device=loaded.device)
    if data.classes != loaded.classes or data.train_counts != loaded.train_counts:
        raise CheckpointError(
            f"the data of data.root={loaded.cfg.data.root} is not what {loaded.checkpoint} was "
            f"trained on: classes {data.classes} with training counts {data.train_counts}, "
            f"the checkpoint's {loaded.classes} with {loaded.train_counts}"
        )
    loaded.data_check = data.check
    loader = data.test if split == "test" else data.val
    if loader is None:
        raise UsageError(
            "this run's data has no val split: give one with data.val_per_class=N (benchmarks: "
            "N held-out images a class) or train with data.val_fraction / data.val_file (own data)"
        )
    return loader_logits(loaded.model, loader, loaded.device)


def evaluate(
    loaded: LoadedModel, logits: torch.Tensor, labels: torch.Tensor, test_prior: str | None = None
) -> dict:
    """Metrics of raw ``logits`` under the run's decision rule; with ``test_prior`` (forward50 ...
    backward50) on that shifted subset of a balanced split, as-is and with the prior known."""
    if test_prior is None:
        metrics = evaluate_predictions(loaded.adjust(logits), labels, loaded.train_counts)
        if isinstance(loaded.model.head, Describes):  # e.g. tau-norm states its tau
            metrics.update(loaded.model.head.describe())
        return metrics
    keep = torch.from_numpy(shifted_test_indices(test_prior, labels, loaded.train_counts))
    sub_logits, sub_labels = logits[keep], labels[keep]
    metrics = evaluate_predictions(loaded.adjust(sub_logits), sub_labels, loaded.train_counts)
    counts = torch.bincount(sub_labels, minlength=len(loaded.classes)).double()
    known = evaluate_predictions(
        loaded.adjust(sub_logits, counts / counts.sum()), sub_labels, loaded.train_counts
    )
    metrics["test_prior"] = test_prior
    metrics["overall_known_prior"] = known["overall"]
    metrics["ece_known_prior"] = known["ece"]
    return metrics


def evaluate_run(
    path: str | Path, overrides: Sequence[str] = (), split: str = "test", device: str = "auto"
) -> tuple[dict, LoadedModel]:
    """Open a run and evaluate it on one split: ``camlt eval`` in one call."""
    loaded = open_run(path, overrides, device)
    logits, labels = split_logits(loaded, split)
    return evaluate(loaded, logits, labels), loaded
