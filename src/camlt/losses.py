"""Training losses, built by name; each maps (logits, targets) to a scalar.

Every loss computes in float32 whatever the autocast dtype of the logits. The long-tail
losses use the training class counts: as a prior (balanced softmax, logit adjustment), as
margins (LDAM) or as class weights (class-balanced, deferred re-weighting). Weights that start
at an epoch (DRW) are switched by ``set_epoch``, which the engine calls at each epoch start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from camlt.errors import UsageError
from camlt.registry import Registry


# ----------------------------------------------------------------------------- class statistics
def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """log of the training class frequencies n_c / N, the prior the adjustments remove."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if (counts <= 0).any():
        raise UsageError(
            f"class counts must all be positive to form a prior, got {counts.tolist()}"
        )
    return (counts / counts.sum()).log().float()


def effective_number_weights(class_counts: Sequence[int], beta: float) -> torch.Tensor:
    """Class weights (1 - beta) / (1 - beta^n_c), scaled to sum to the number of classes.

    Cui et al.'s effective number of samples: beta=0 gives equal weights, beta -> 1 inverse
    frequency.
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    raw = (1.0 - beta) / (1.0 - beta**counts) if beta > 0 else torch.ones_like(counts)
    return (raw * len(counts) / raw.sum()).float()


def posthoc_adjust(logits: torch.Tensor, class_counts: Sequence[int], tau: float) -> torch.Tensor:
    """Test-time logit adjustment ``z - tau * log prior``; tau=0 returns the logits unchanged."""
    if tau == 0:
        return logits
    return logits.float() - tau * log_prior(class_counts).to(logits.device)


# ----------------------------------------------------------------------------- targets
@dataclass
class MixedTargets:
    """The labels of a mixed batch (mixup, CutMix, Remix): image i shows ``a[i]`` with label
    weight ``lam[i]`` and ``b[i]`` with ``1 - lam[i]``.

    Kept as two class indices and a weight rather than a soft label vector, so every loss mixes
    its own per-sample value and its class weights exactly, and Remix can move a weight per sample.
    """

    a: torch.Tensor  # (B,) int64
    b: torch.Tensor  # (B,) int64
    lam: torch.Tensor  # (B,) float32 in [0, 1]

    def major(self) -> torch.Tensor:
        """The label with the larger weight: what a head that takes one label per image is given."""
        return torch.where(self.lam >= 0.5, self.a, self.b)

    def to(self, device: torch.device) -> MixedTargets:
        return MixedTargets(self.a.to(device), self.b.to(device), self.lam.to(device))


Targets = torch.Tensor | MixedTargets


# ----------------------------------------------------------------------------- the losses
class WeightedLoss(nn.Module):
    """A per-sample loss with optional class weights that may switch on at an epoch.

    ``mean="weighted"`` averages as ``sum w_y l / sum w_y`` (PyTorch's weighted cross-entropy,
    used by DRW); ``mean="plain"`` as ``mean(w_y l)`` (Cui et al.'s class-balanced loss).
    """

    def __init__(
        self,
        weights: torch.Tensor | None = None,
        start_epoch: int = 0,
        mean: str = "weighted",
    ) -> None:
        super().__init__()
        self.class_weights = weights
        self.start_epoch = start_epoch
        self.mean = mean
        self.weight: torch.Tensor | None = weights if start_epoch <= 0 else None

    def set_epoch(self, epoch: int) -> None:
        """Switch the class weights on from ``start_epoch`` (deferred re-weighting)."""
        self.weight = self.class_weights if epoch >= self.start_epoch else None

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        """The batch loss; mixed targets mix each image's two losses and two class weights."""
        if isinstance(targets, MixedTargets):
            lam = targets.lam.to(logits.device).float()
            losses = lam * self.per_sample(logits.float(), targets.a) + (1 - lam) * (
                self.per_sample(logits.float(), targets.b)
            )
        else:
            losses = self.per_sample(logits.float(), targets)
        if self.weight is None:
            return losses.mean()
        w = self._sample_weights(targets, losses.device)
        if self.mean == "plain":
            return (w * losses).mean()
        return (w * losses).sum() / w.sum()

    def _sample_weights(self, targets: Targets, device: torch.device) -> torch.Tensor:
        weight = self.weight.to(device)
        if isinstance(targets, MixedTargets):
            lam = targets.lam.to(device).float()
            return lam * weight[targets.a] + (1 - lam) * weight[targets.b]
        return weight[targets]


class CrossEntropy(WeightedLoss):
    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none")


class FocalLoss(WeightedLoss):
    """Softmax focal loss ``(1 - p_y)^gamma * -log p_y`` (Lin et al.); gamma=0 is CE."""

    def __init__(self, gamma: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gamma = gamma

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        # 1 - p via expm1: exact near p=1, and clamped so gamma < 1 keeps a finite gradient
        return -((-torch.expm1(log_p)).clamp(min=1e-12) ** self.gamma) * log_p


class PriorShiftedCE(WeightedLoss):
    """CE on ``z + tau * log prior``: logit adjustment (Menon et al.); tau=1 is balanced softmax.

    Training against the prior-shifted logits makes the raw logits estimate the balanced
    (prior-free) posterior, so no correction is needed at test time.
    """

    def __init__(self, class_counts: Sequence[int], tau: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("shift", tau * log_prior(class_counts))

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.shift, targets, reduction="none")


class LDAMLoss(WeightedLoss):
    """Label-distribution-aware margin (Cao et al.): CE on ``z - scale * delta_y`` at the target.

    ``delta_c`` is proportional to ``n_c^(-1/4)``, the largest (rarest class) equal to
    ``max_margin``. ``scale`` converts the margin to logit units: with a normalized head of
    scale s (z = s cos) it is s, so the margin is ``max_margin`` in cosine, as in the paper.
    """

    def __init__(
        self, class_counts: Sequence[int], max_margin: float, scale: float, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        margins = counts**-0.25
        self.register_buffer("margins", (margins * max_margin / margins.max()).float())
        self.scale = scale

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shift = (
            F.one_hot(targets, logits.shape[1]).float()
            * (self.scale * self.margins[targets])[:, None]
        )
        return F.cross_entropy(logits - shift, targets, reduction="none")


class ExpertLosses(nn.Module):
    """A multi-expert model's loss (camlt.models.experts): the sum of each expert's own loss,
    each by its head's rule (``HeadOutput.loss``: CAMC's auxiliary term included), less RIDE's
    diversity reward.

    The diversity term is each expert's KL divergence from the experts' mean prediction at
    temperature T, times T^2 (so its gradient keeps its size as T changes); subtracting it with
    weight ``diversity`` pushes the experts apart (RIDE's CIFAR configs: 0.2, T = 1).
    """

    def __init__(
        self, members: Sequence[nn.Module], diversity: float = 0.0, temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.diversity = diversity
        self.temperature = temperature

    def set_epoch(self, epoch: int) -> None:
        for member in self.members:
            if hasattr(member, "set_epoch"):
                member.set_epoch(epoch)

    def experts_loss(self, outputs, targets, rows: torch.Tensor | None = None) -> torch.Tensor:
        if len(outputs) != len(self.members):
            raise ValueError(f"{len(outputs)} experts' outputs for {len(self.members)} losses")
        total = sum(
            out.loss(targets, member, rows)
            for out, member in zip(outputs, self.members, strict=True)
        )
        if self.diversity:
            logits = [o.logits.float() if rows is None else o.logits.float()[rows] for o in outputs]
            total = total - self.diversity * self.disagreement(logits)
        return total

    def disagreement(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """sum over experts of T^2 KL(mean prediction || expert's prediction), at temperature T."""
        t = self.temperature
        mean = F.softmax(torch.stack(logits).mean(0) / t, dim=1)
        return sum(
            t * t * F.kl_div(F.log_softmax(z / t, dim=1), mean, reduction="batchmean")
            for z in logits
        )

    def forward(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        raise TypeError("the experts' loss takes the experts' outputs: HeadOutput.loss")


# ----------------------------------------------------------------------------- settings
def _number(where: str, value: object, low: float, below: float | None = None) -> None:
    """A setting that must be a number >= ``low`` (and < ``below``, where given)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and low <= value and (below is None or value < below)):
        bound = f"in [{low:g}, {below:g})" if below is not None else f">= {low:g}"
        raise UsageError(f"{where}={value!r}: must be a number {bound}")


@dataclass
class FocalSettings:
    """``loss.focal``: the focal exponent (0 is CE)."""

    gamma: float = 1.0

    def check(self, section: str) -> None:
        _number(f"{section}.gamma", self.gamma, 0)


@dataclass
class ClassBalancedSettings:
    """``loss.cb``: the effective number's beta and the weighted base loss (ce, or focal with
    its gamma)."""

    beta: float = 0.9999
    base: str = "focal"
    gamma: float = 1.0

    def check(self, section: str) -> None:
        _number(f"{section}.beta", self.beta, 0, below=1)
        _number(f"{section}.gamma", self.gamma, 0)
        if self.base not in ("ce", "focal"):
            raise UsageError(f"{section}.base={self.base!r}: expected one of ce, focal")


@dataclass
class LDAMSettings:
    """``loss.ldam``: the rarest class's margin in cosine units, and the logits a unit of margin
    is worth (None: the head's scale s for a normalized or CAMC head, 1 for a linear one)."""

    max_margin: float = 0.5
    scale: float | None = None

    def check(self, section: str) -> None:
        _number(f"{section}.max_margin", self.max_margin, 0)
        if self.scale is not None:
            _number(f"{section}.scale", self.scale, 0)


@dataclass
class LogitAdjustSettings:
    """``loss.logit_adjust``: CE(z + tau log prior); tau 1 is balanced softmax."""

    tau: float = 1.0

    def check(self, section: str) -> None:
        _number(f"{section}.tau", self.tau, 0)


@dataclass
class BalPoESettings:
    """``loss.balpoe``: each expert's logit-adjustment strength tau (CE(z + tau log prior)),
    one an expert; None: evenly spread from 0 (plain CE) to 2 (the inverse prior), as BalPoE.
    Their mean must be 1: the product of the experts is then the balanced prediction."""

    taus: list[float] | None = None

    def check(self, section: str) -> None:
        if self.taus is None:
            return
        for i, tau in enumerate(self.taus):
            _number(f"{section}.taus[{i}]", tau, -10)
        if not self.taus or abs(sum(self.taus) / len(self.taus) - 1) > 1e-6:
            raise UsageError(
                f"{section}.taus={list(self.taus)}: their mean must be 1, so that the experts "
                "together predict the balanced posterior (BalPoE)"
            )


@dataclass
class SADESettings:
    """``loss.sade``: three experts for three test priors (SADE): forward (plain CE), uniform
    (balanced softmax) and backward, CE(z + (1 + lambda) log prior), lambda 2 in the paper."""

    backward_lambda: float = 2.0

    @property
    def taus(self) -> list[float]:
        return [0.0, 1.0, 1.0 + self.backward_lambda]

    def check(self, section: str) -> None:
        _number(f"{section}.backward_lambda", self.backward_lambda, 0)


EXPERT_LOSSES = ("balpoe", "sade")  # losses that train several experts: model.experts > 1


# ----------------------------------------------------------------------------- the registry
def _experts(taus: Sequence[float], cfg: DictConfig, counts: Sequence[int]) -> ExpertLosses:
    """One logit-adjusted CE an expert, of the given strengths (BalPoE, SADE)."""
    return _joined([PriorShiftedCE(counts, tau, **_drw(cfg, counts)) for tau in taus], cfg)


def _joined(members: Sequence[nn.Module], cfg: DictConfig) -> ExpertLosses:
    """The experts' losses joined, with the loss section's diversity term."""
    diversity = OmegaConf.select(cfg, "diversity", default=0.0)
    return ExpertLosses(
        members, diversity, OmegaConf.select(cfg, "diversity_temperature", default=1.0)
    )


def _drw(cfg: DictConfig, counts: Sequence[int]) -> dict:
    """Deferred re-weighting: effective-number weights from ``loss.drw_epoch``, if set."""
    if cfg.drw_epoch is None:
        return {}
    return {"weights": effective_number_weights(counts, cfg.drw_beta), "start_epoch": cfg.drw_epoch}


def _class_balanced(
    st: ClassBalancedSettings, cfg: DictConfig, counts: Sequence[int]
) -> WeightedLoss:
    """Class-balanced loss: the base loss weighted by the effective number, from the start
    (or from ``loss.drw_epoch``, deferred)."""
    weights = effective_number_weights(counts, st.beta)
    kwargs = {"weights": weights, "start_epoch": cfg.drw_epoch or 0, "mean": "plain"}
    return FocalLoss(st.gamma, **kwargs) if st.base == "focal" else CrossEntropy(**kwargs)


# (its settings or None, the loss section, the class counts) -> the loss module
LossFactory = Callable[[object, DictConfig, Sequence[int]], nn.Module]

LOSSES: Registry[LossFactory] = Registry(
    "loss.name",
    {
        "ce": lambda st, cfg, counts: CrossEntropy(**_drw(cfg, counts)),
        "focal": lambda st, cfg, counts: FocalLoss(st.gamma, **_drw(cfg, counts)),
        "cb": _class_balanced,
        "ldam": lambda st, cfg, counts: LDAMLoss(
            counts, st.max_margin, st.scale, **_drw(cfg, counts)
        ),
        "balanced_softmax": lambda st, cfg, counts: PriorShiftedCE(
            counts, 1.0, **_drw(cfg, counts)
        ),
        "logit_adjust": lambda st, cfg, counts: PriorShiftedCE(counts, st.tau, **_drw(cfg, counts)),
        "balpoe": lambda st, cfg, counts: _experts(st.taus, cfg, counts),
        "sade": lambda st, cfg, counts: _experts(st.taus, cfg, counts),
    },
    settings={
        "focal": FocalSettings,
        "cb": ClassBalancedSettings,
        "ldam": LDAMSettings,
        "logit_adjust": LogitAdjustSettings,
        "balpoe": BalPoESettings,
        "sade": SADESettings,
    },
)


def loss_settings(loss_cfg: DictConfig, logit_scale: float = 1.0, experts: int = 1):
    """The named loss's settings, checked, with what depends on the model filled in (LDAM's
    scale: ``logit_scale``, the head's s for a normalized or CAMC head, 1 for a linear one;
    BalPoE's strengths: one for each of ``experts``)."""
    given = loss_cfg.get(loss_cfg.name)
    given = OmegaConf.to_container(given) if isinstance(given, DictConfig) else given
    if given is not None and not isinstance(given, dict):
        raise UsageError(f"loss.{loss_cfg.name}={given!r}: a section of settings, not a value")
    settings = LOSSES.settings(loss_cfg.name, given)
    if isinstance(settings, LDAMSettings) and settings.scale is None:
        settings.scale = float(logit_scale)
    _fit_experts(loss_cfg.name, settings, experts)
    return settings


def _fit_experts(name: str, settings: object, experts: int) -> None:
    """An expert loss needs experts, one strength each; BalPoE's default strengths are spread
    over the number of experts."""
    if name in EXPERT_LOSSES and experts < 2:
        raise UsageError(f"loss.name={name} trains several experts: set model.experts (e.g. 3)")
    if isinstance(settings, BalPoESettings) and settings.taus is None:
        settings.taus = [2 * i / (experts - 1) for i in range(experts)]
    if isinstance(settings, BalPoESettings | SADESettings) and len(settings.taus) != experts:
        raise UsageError(
            f"loss.{name} gives {len(settings.taus)} experts' strengths ({settings.taus}) and "
            f"model.experts={experts}"
        )


def build_loss(
    loss_cfg: DictConfig,
    class_counts: Sequence[int],
    logit_scale: float = 1.0,
    experts: int = 1,
) -> nn.Module:
    """The loss ``loss_cfg.name`` names, with its settings (``loss.<name>``); class counts
    serve the re-weighting losses. With several experts a single loss trains each expert (as
    RIDE's LDAM-DRW), an expert loss (BalPoE, SADE) gives each its own."""
    factory = LOSSES.factory(loss_cfg.name)
    settings = loss_settings(loss_cfg, logit_scale, experts)
    loss = factory(settings, loss_cfg, class_counts)
    if experts > 1 and not isinstance(loss, ExpertLosses):
        members = [loss, *(factory(settings, loss_cfg, class_counts) for _ in range(experts - 1))]
        loss = _joined(members, loss_cfg)
    return loss
