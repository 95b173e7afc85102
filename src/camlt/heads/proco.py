"""ProCo (Du et al., "Probabilistic Contrastive Learning for Long-Tailed Visual Recognition",
TPAMI 2024): a classifier and a contrastive branch whose loss needs no queue and no large batch.

Each class's projected features are modelled as a von Mises-Fisher distribution on the unit
sphere, estimated from the batches; the supervised contrastive loss's expectation over infinitely
many samples of those distributions then has a closed form. Steps:

1. ``f = GAP(F)``; the classifier's logits ``z`` (linear, or normalized with scale s).
2. ``h = normalize(MLP(f))``, a point of the sphere in ``R^p`` (p = ``model.proco.dim``).
3. Per class, the mean ``m_c`` of ``h`` over the epoch so far; the loss uses the last finished
   epoch's (this epoch's until there is one): ``mu_c = m_c / R_c``, ``R_c = |m_c|``,
   ``kappa_c = R_c (p - R_c^2) / (1 - R_c^2)`` (Banerjee et al.'s estimate).
4. The contrastive logits ``a_c = log C_p(|kappa_c mu_c + h / tau|) - log C_p(kappa_c)`` with
   ``log C_p(k) = (p/2 - 1) log k - (p/2) log 2 pi - log I_{p/2-1}(k)``, the vMF normaliser.
5. The loss: the run's loss on ``z`` plus ``weight`` times it on ``a`` (``HeadOutput.loss``). With
   balanced softmax (the recipe) the second is ProCo's loss, ``-log pi_y e^{a_y} / sum_c pi_c
   e^{a_c}``: the mixture weighted by the training prior, as the derivation has it.

Departures from the paper's recipe: one view per image (the closed form contrasts each image
with the class distributions, not with other views), and no AutoAugment / Cutout unless the
recipe adds them. Under DDP every process adds the whole global batch to the class means, so the
statistics are those of one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from camlt.errors import UsageError
from camlt.heads.base import HeadOutput, whole_batch
from camlt.heads.normalized import NormalizedClassifier
from camlt.heads.registry import HEADS


@dataclass
class ProCoSettings:
    """``model.proco``: the projection's dimension, the contrastive temperature, the branch's
    weight in the loss and the classifier beside it."""

    dim: int = 128
    tau: float = 0.1
    weight: float = 1.0
    classifier: str = "linear"  # linear | normalized (model.scale)

    def check(self, section: str = "model.proco") -> None:
        if not (isinstance(self.dim, int) and self.dim >= 4):
            raise UsageError(f"{section}.dim={self.dim}: a whole number >= 4")
        for key in ("tau", "weight"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise UsageError(f"{section}.{key}={value}: must be a positive number")
        if self.classifier not in ("linear", "normalized"):
            raise UsageError(f"{section}.classifier={self.classifier!r}: linear or normalized")


def log_bessel_i(order: float, x: torch.Tensor) -> torch.Tensor:
    """``log I_order(x)`` for a large order (the projection's p/2 - 1) and x > 0, differentiable.

    Debye's uniform asymptotic expansion with its first three terms: with ``z = x / order``,
    ``log I = -log(2 pi order)/2 + order eta - log(1 + z^2)/4 + log(1 + u1/order + u2/order^2)``,
    ``eta = sqrt(1 + z^2) + log(z / (1 + sqrt(1 + z^2)))``, ``t = 1/sqrt(1 + z^2)``. Uniform in x;
    its error falls as order^-3 (below 1e-5 from order 15, tests/test_proco.py)."""
    v = float(order)
    z = x.double().clamp_min(1e-12) / v
    root = torch.sqrt(1 + z * z)
    eta = root + torch.log(z / (1 + root))
    t = 1 / root
    u1 = (3 * t - 5 * t**3) / 24
    u2 = (81 * t**2 - 462 * t**4 + 385 * t**6) / 1152
    value = -0.5 * math.log(2 * math.pi * v) + v * eta - 0.5 * torch.log(root)
    return (value + torch.log1p(u1 / v + u2 / (v * v))).to(x.dtype)


def log_vmf_normaliser(p: int, kappa: torch.Tensor) -> torch.Tensor:
    """``log C_p(kappa)``: the log density constant of a vMF distribution on the sphere of R^p."""
    order = p / 2 - 1
    kappa = kappa.clamp_min(1e-6)
    return order * kappa.log() - (p / 2) * math.log(2 * math.pi) - log_bessel_i(order, kappa)


class ProCoHead(nn.Module):
    """GAP, a classifier, and ProCo's projection and class statistics (steps 1 to 4)."""

    def __init__(
        self, in_features: int, num_classes: int, st: ProCoSettings, scale: float = 16.0
    ) -> None:
        super().__init__()
        self.st = st
        self.classifier = (
            nn.Linear(in_features, num_classes)
            if st.classifier == "linear"
            else NormalizedClassifier(in_features, num_classes, scale)
        )
        self.projection = nn.Sequential(
            nn.Linear(in_features, in_features),
            nn.BatchNorm1d(in_features),
            nn.ReLU(inplace=True),
            nn.Linear(in_features, st.dim),
        )
        k, p = num_classes, st.dim
        self.register_buffer("sums", torch.zeros(k, p, dtype=torch.float64))  # this epoch's
        self.register_buffer("counts", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(k, p, dtype=torch.float64))  # last epoch's
        self.register_buffer("ready", torch.zeros(k, dtype=torch.bool))
        self.register_buffer("stats_epoch", torch.tensor(0))

    def set_epoch(self, epoch: int) -> None:
        """At an epoch's start the finished epoch's means become the estimate (step 3); a resumed
        run repeats this only for epochs its statistics have not reached."""
        if epoch <= int(self.stats_epoch):
            return
        seen = self.counts > 0
        self.means[seen] = self.sums[seen] / self.counts[seen, None]
        self.ready |= seen
        self.sums.zero_()
        self.counts.zero_()
        self.stats_epoch.fill_(epoch)

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each class's mean direction and concentration (step 3); a class not seen yet is
        uniform on the sphere (kappa 0)."""
        running = self.sums / self.counts.clamp_min(1)[:, None]
        mean = torch.where(self.ready[:, None], self.means, running)
        r = torch.linalg.vector_norm(mean, dim=1).clamp(max=1 - 1e-6)
        p = self.st.dim
        kappa = r * (p - r * r) / (1 - r * r)
        return F.normalize(mean, dim=1).float(), kappa.float()

    def contrastive_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``a_c = log C_p(|kappa_c mu_c + h / tau|) - log C_p(kappa_c)`` (step 4)."""
        mu, kappa = self.estimate()
        shifted = kappa[None, :, None] * mu[None] + h[:, None, :] / self.st.tau
        p = self.st.dim
        return log_vmf_normaliser(p, shifted.norm(dim=2)) - log_vmf_normaliser(p, kappa)[None]

    @torch.no_grad()
    def _accumulate(self, h: torch.Tensor, targets: torch.Tensor) -> None:
        """Add the (global) batch's projections to this epoch's class sums (fixed shapes)."""
        h, targets = whole_batch(h.detach().double(), targets)
        classes = torch.arange(self.sums.shape[0], device=targets.device)
        member = (classes[:, None] == targets[None, :]).double()
        self.sums += member @ h
        self.counts += member.sum(1)

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        f = fmap.mean(dim=(2, 3)).float()
        logits = self.classifier(f)
        if not (self.training and targets is not None):
            return HeadOutput(logits, features=f)
        h = F.normalize(self.projection(f), dim=1)
        aux = self.contrastive_logits(h)
        self._accumulate(h, targets)
        return HeadOutput(logits, aux_logits=aux, aux_weight=self.st.weight, features=f)


def _from_config(c: int, k: int, model_cfg: DictConfig, counts) -> ProCoHead:
    """The head of ``model.head=proco``: ``model.proco.*`` and ``model.scale``."""
    given = model_cfg.get("proco")
    options = OmegaConf.to_container(given) if isinstance(given, DictConfig) else dict(given or {})
    return ProCoHead(c, k, ProCoSettings(**options), model_cfg.scale)


HEADS.add("proco", _from_config, ProCoSettings)  # its settings under model.proco
