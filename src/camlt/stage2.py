"""Decoupled two-stage training (Kang et al., "Decoupling representation and classifier").

Stage 1 is any finished run. Stage 2 starts from its directory (``model.init_from``), keeps
its backbone frozen (eval mode, so BatchNorm statistics stay fixed too; no gradients) and only
changes the classifier, by ``stage2.method``:

- ``crt``: a new classifier (``model.head``) trained from scratch, usually with
  ``data.sampler=class`` (classifier re-training);
- ``taunorm``: no training; the stage-1 linear classifier's weights become
  ``w_k / ||w_k||^tau`` (tau=0 is the original classifier, tau=1 equal-norm weights);
- ``lws``: the stage-1 classifier kept, a learned scale per class multiplies its logits
  (learnable weight scaling);
- ``posthoc``: no training; the stage-1 model as it is, under this config's test-time settings
  (e.g. ``loss.posthoc_tau``), so a post-hoc correction needs no second stage-1 run;
- ``wb``: weight balancing's second stage (Alshammari et al. 2022): the stage-1 classifier kept
  and fine-tuned, usually with a class-balanced loss, a large weight decay and MaxNorm
  (configs/stage2_wb.yaml).

The stage-2 checkpoint holds every weight, so evaluating it does not need the stage-1 run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from camlt.checkpoint import CheckpointError, load_checkpoint, read_json
from camlt.config import from_yaml_file
from camlt.errors import UsageError, UserError
from camlt.heads import HeadOutput, LinearHead
from camlt.metrics import evaluate_predictions
from camlt.registry import Registry
from camlt.rundir import CHECKPOINT, CONFIG_FILE, FINAL_FILE

# Methods whose classifier is the stage-1 classifier (so model.head must match stage 1's).
KEEP_HEAD = ("taunorm", "lws", "posthoc", "wb")


class Stage2Error(UserError, ValueError):
    """A stage-1 run directory that stage 2 cannot start from."""


# ----------------------------------------------------------------------------- modules
class FrozenBackbone(nn.Module):
    """A stage-1 backbone held fixed: always in eval mode (BN statistics frozen), no gradients."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels
        for p in body.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        super().train(mode)
        self.body.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.body(images)


class TauNormHead(nn.Module):
    """GAP + a linear classifier whose weight rows are divided by their norm to the power tau."""

    def __init__(self, base: LinearHead, tau: float, sweep_size: int = 0) -> None:
        super().__init__()
        if not isinstance(base, LinearHead):
            raise Stage2Error(
                "stage2.method=taunorm needs model.head=linear: tau-normalisation rescales the "
                f"norms of linear classifier weights, and {type(base).__name__} has none to rescale"
            )
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.register_buffer("tau", torch.tensor(float(tau)))
        # where a swept tau was chosen: 0 fixed (stage2.taunorm.tau), 1 the val split, 2 the TEST split
        self.register_buffer("chosen_on", torch.tensor(0))
        # rows (tau, overall accuracy there) of a sweep; sized by the config so checkpoints load
        self.register_buffer("sweep", torch.zeros(sweep_size, 2))

    def logits_at(self, features: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
        """Logits of pooled features for one tau (the sweep reuses the features)."""
        weight = self.base.classifier.weight.float()
        norms = weight.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return F.linear(features.float(), weight / norms**tau, self.base.classifier.bias.float())

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        f = fmap.mean(dim=(2, 3))
        return HeadOutput(self.logits_at(f, self.tau), features=f)

    def describe(self) -> dict:
        """What the metrics must state: the tau used and where it was chosen."""
        where = ("fixed (stage2.taunorm.tau)", "val", "test")[int(self.chosen_on)]
        info: dict = {"method": "taunorm", "tau": float(self.tau), "tau_chosen_on": where}
        if len(self.sweep):
            info[f"tau_sweep_{where}_overall"] = {f"{t:g}": a for t, a in self.sweep.tolist()}
        return {"stage2": info}


class LWSHead(nn.Module):
    """The stage-1 head, frozen, with a learned scale per class on its logits."""

    def __init__(self, base: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(num_classes))

    def no_weight_decay(self) -> set[str]:
        return {"scales"}

    def train(self, mode: bool = True) -> LWSHead:
        super().train(mode)
        self.base.eval()  # e.g. a CAMC head must not update its prototypes in stage 2
        return self

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        with torch.no_grad():
            out = self.base(fmap, targets)
        aux = None if out.aux_logits is None else out.aux_logits.float() * self.scales
        return dataclasses.replace(out, logits=out.logits.float() * self.scales, aux_logits=aux)


class FrozenHead(nn.Module):
    """The stage-1 head unchanged and untrained (posthoc)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenHead:
        super().train(mode)
        self.base.eval()
        return self

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        return self.base(fmap, targets)


@dataclass
class TauNormSettings:
    """``stage2.taunorm``: the exponent tau, fixed, or the taus a sweep tries (on the val split,
    else on the TEST split, reported as such)."""

    tau: float = 1.0
    tau_sweep: list[float] = field(default_factory=list)

    def check(self, section: str) -> None:
        for tau in [self.tau, *self.tau_sweep]:
            if not (isinstance(tau, int | float) and not isinstance(tau, bool) and tau >= 0):
                raise UsageError(f"{section}: tau={tau!r}: must be a number >= 0")


def taunorm_settings(cfg: DictConfig) -> TauNormSettings:
    """``stage2.taunorm`` of a config, its defaults filled in."""
    given = cfg.stage2.get("taunorm")
    return ADAPTERS.settings(
        "taunorm", OmegaConf.to_container(given) if given is not None else None
    )


# How each method turns a freshly built model into its stage-2 form (the backbone is frozen for
# all): crt trains the fresh head, wb the stage-1 head it keeps, the others wrap it.
ADAPTERS: Registry[Callable[[nn.Module, DictConfig, int], nn.Module]] = Registry(
    "stage2.method",
    {
        "crt": lambda head, cfg, k: head,
        "taunorm": lambda head, cfg, k: TauNormHead(
            head, taunorm_settings(cfg).tau, len(taunorm_settings(cfg).tau_sweep)
        ),
        "lws": lambda head, cfg, k: LWSHead(head, k),
        "posthoc": lambda head, cfg, k: FrozenHead(head),
        "wb": lambda head, cfg, k: head,
    },
    settings={"taunorm": TauNormSettings},
)
METHODS = tuple(ADAPTERS)
TRAINS_NOTHING = ("taunorm", "posthoc")  # evaluation only: they run for train.epochs=0
NO_CLASS_WEIGHTS = ("taunorm", "posthoc", "lws")  # train no class weight vectors


def adapt_model(model: nn.Module, cfg: DictConfig, num_classes: int) -> nn.Module:
    """The stage-2 form of a freshly built model (weights are loaded later by ``load_stage1``)."""
    method = cfg.stage2.method
    if method == "none":
        return model
    adapt = ADAPTERS.factory(method)
    model.backbone = FrozenBackbone(model.backbone)
    model.head = adapt(model.head, cfg, num_classes)
    return model


# ----------------------------------------------------------------------------- the stage-1 run
def check_stage1(cfg: DictConfig) -> DictConfig:
    """The stage-1 run's config, after refusing a directory that is missing, unfinished or
    trained on other data or another backbone; returns its config."""
    where = f"model.init_from={cfg.model.init_from}"
    run_dir = Path(cfg.model.init_from)
    if not run_dir.is_dir():
        raise Stage2Error(f"{where}: no such run directory")
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / CHECKPOINT).is_file():
        raise Stage2Error(
            f"{where}: not a finished run directory (expected {CONFIG_FILE} and {CHECKPOINT})"
        )
    s1 = from_yaml_file(run_dir / CONFIG_FILE)
    if not (run_dir / FINAL_FILE).is_file():
        raise Stage2Error(
            f"{where}: stage 1 has not finished (no {FINAL_FILE}); "
            f"finish it first with: camlt train {run_dir} --resume"
        )
    if s1.stage2.method != "none":
        raise Stage2Error(f"{where}: is itself a stage-2 run ({s1.stage2.method}); give stage 1")
    mismatches = [
        f"{key}: stage 1 has {s1_value!r}, this config {value!r}"
        for key, s1_value, value in (
            ("data.name", s1.data.name, cfg.data.name),
            ("model.backbone", s1.model.backbone, cfg.model.backbone),
        )
        if s1_value != value
    ]
    if cfg.stage2.method in KEEP_HEAD and s1.model.head != cfg.model.head:
        mismatches.append(
            f"model.head: stage 1 has {s1.model.head!r}, this config {cfg.model.head!r} "
            f"(stage2.method={cfg.stage2.method} keeps the stage-1 classifier)"
        )
    if mismatches:
        raise Stage2Error(f"{where}: a different setup: " + "; ".join(mismatches))
    return s1


def _check_data(run_dir: Path, final: dict, classes: list[str], counts: list[int]) -> None:
    """Stage 2 must see the same classes and the same training split as stage 1."""
    where = f"model.init_from={run_dir}"
    if len(final["classes"]) != len(classes):
        raise Stage2Error(
            f"{where}: stage 1 has {len(final['classes'])} classes, this config {len(classes)}"
        )
    if list(final["classes"]) != list(classes) or list(final["train_counts"]) != list(counts):
        raise Stage2Error(
            f"{where}: stage 1 was trained on a different training split "
            f"(class counts {final['train_counts']} against {counts}); match data.* to stage 1"
        )


def load_stage1(run) -> None:
    """Fill a fresh stage-2 run (``engine.Run``) with the stage-1 weights it starts from."""
    cfg = run.cfg
    run_dir = Path(cfg.model.init_from)
    check_stage1(cfg)
    final = read_json(run_dir / FINAL_FILE, required=("classes", "train_counts"))
    _check_data(run_dir, final, run.train_set.classes, run.train_counts)
    state = load_checkpoint(run_dir / CHECKPOINT)["model"]
    model = run.model
    _load_part(model.backbone.body, state, "backbone.", run_dir)
    if cfg.stage2.method in KEEP_HEAD:
        kept = model.head if cfg.stage2.method == "wb" else model.head.base
        _load_part(kept, state, "head.", run_dir)
    if cfg.stage2.method == "taunorm" and len(taunorm_settings(cfg).tau_sweep):
        choose_tau(run)


def _load_part(module: nn.Module, state: dict, prefix: str, run_dir: Path) -> None:
    """Load the ``prefix`` part of a stage-1 state dict, naming the run on a mismatch."""
    part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(part)
    except RuntimeError as err:
        raise CheckpointError(
            f"model.init_from={run_dir}: the stage-1 {prefix.rstrip('.')} weights do not fit "
            f"this config's model: {err}"
        ) from None


@torch.no_grad()
def choose_tau(run) -> float:
    """Evaluate every tau of ``stage2.taunorm.tau_sweep`` and keep the best overall accuracy.

    On the val split when the run has one; else (CIFAR-LT, Fashion-MNIST-LT) on the TEST split,
    recorded as such in the head and so in every metrics file: an optimistic number.
    """
    from camlt.losses import posthoc_adjust

    head: TauNormHead = run.model.head
    val_loader = getattr(run, "val_loader", None)
    loader, where = (val_loader, "val") if val_loader is not None else (run.test_loader, "TEST")
    run.model.eval()
    feats, labels = [], []
    for images, y in loader:
        feats.append(run.model.features(images.to(run.device)).float().mean(dim=(2, 3)).cpu())
        labels.append(y)
    features, targets = torch.cat(feats), torch.cat(labels)
    if getattr(run, "dist", None) is not None:  # under torchrun: every process's shard
        from camlt import distributed

        features = distributed.gather_cat(features, run.dist)
        targets = distributed.gather_cat(targets, run.dist)
    results = []
    features = features.to(head.base.classifier.weight.device)  # gathered on the CPU
    for tau in taunorm_settings(run.cfg).tau_sweep:
        logits = posthoc_adjust(
            head.logits_at(features, tau).cpu(), run.train_counts, run.cfg.loss.posthoc_tau
        )
        overall = evaluate_predictions(logits, targets, run.train_counts)["overall"]
        results.append((float(tau), overall))
    best = max(results, key=lambda r: r[1])[0]  # ties: the first listed
    head.tau.fill_(best)
    head.chosen_on.fill_(1 if where == "val" else 2)
    head.sweep.copy_(torch.tensor(results))
    print(
        f"tau-norm: tau={best:g} chosen on the {where} split from "
        + ", ".join(f"{t:g}: {100 * a:.2f}" for t, a in results),
        flush=True,
    )
    return best
