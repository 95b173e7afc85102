"""The CAMC head (docs/camc.md, steps 1-9) and its class-specific design (``variant=class``).

It replaces GAP + normalized classifier on any CNN feature map. The code follows the spec's
numbered steps and names: ``F`` the feature map, ``W`` the classifier weights (shared with a
:class:`NormalizedClassifier`), ``P`` the class prototypes, ``s`` the output scale, ``q`` the
guide, ``m`` the calibrated CAM, ``r`` the correlation map, ``a`` the importance, ``g`` the
reinforcement feature, ``f0``/``z0`` the base feature/logits and ``f``/``z`` the final ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from omegaconf import DictConfig, OmegaConf
from torch import nn

from camlt.errors import UsageError
from camlt.heads.base import HeadOutput, whole_batch
from camlt.heads.normalized import NormalizedClassifier
from camlt.heads.registry import HEADS

VARIANTS = ("section2", "class")
GUIDES = ("predicted", "target", "balanced")
# variant=class reinforces every class when K is at most this, else only the k guide classes.
CLASS_VARIANT_ALL_K = 64


@dataclass
class CAMCSettings:
    """``model.camc``: the head's own settings, with the design's starting values (docs/camc.md)."""

    variant: str = "section2"  # section2 | class
    alpha: float = 1.0  # strength of the reinforcement, step 6
    tau: float = 0.1  # temperature of the importance softmax, step 5
    k: int = 5  # guide classes, step 2
    mu: float = 0.99  # prototype momentum, step 7
    gamma: float = 0.5  # weight of the auxiliary loss CE(z0, y), step 8
    guide: str = "predicted"  # predicted | target | balanced
    calibrate: bool = True  # cosine CAM (step 3); false: raw <F_u, w_c>
    keep_length: bool = False  # maps over the image's largest feature length, not each location's
    use_cam: bool = True
    use_corr: bool = True
    lam: float = 1.0  # lambda of the class-specific design

    def check(self, section: str = "model.camc") -> None:
        """Refuse values the head cannot run with, naming the key (the one place they are checked)."""
        if self.variant not in VARIANTS:
            raise UsageError(
                f"{section}.variant={self.variant!r}: expected one of {', '.join(VARIANTS)}"
            )
        if self.guide not in GUIDES:
            raise UsageError(f"{section}.guide={self.guide!r}: expected one of {', '.join(GUIDES)}")
        if not (isinstance(self.tau, int | float) and self.tau > 0 and math.isfinite(self.tau)):
            raise UsageError(f"{section}.tau={self.tau}: must be a positive number")
        if not (isinstance(self.k, int) and self.k >= 1):
            raise UsageError(f"{section}.k={self.k}: must be a whole number >= 1")
        if not (isinstance(self.mu, int | float) and 0 <= self.mu < 1):
            raise UsageError(f"{section}.mu={self.mu}: must be in [0, 1)")
        if not (self.use_cam or self.use_corr):
            raise UsageError(
                f"{section}.use_cam and {section}.use_corr are both false: the importance map "
                "needs at least one; for the plain head use model.head=normalized (or alpha=0)"
            )


class CAMCHead(nn.Module):
    """CAM-calibrated head: reinforce the regions the guide classes and the prototypes agree on.

    ``forward(F, targets=None, return_maps=False, map_class=None) -> HeadOutput``:

    - ``F``: (B, C, H, W) feature map of any backbone (cut before global pooling).
    - ``targets``: (B,) int64 labels. In training mode they update the prototypes ``P``
      (step 7) and, with ``guide="target"``, replace the predicted guide. Eval mode never
      changes ``P`` and is deterministic.
    - ``return_maps``: also fill ``maps`` with four detached float32 (B, H, W) tensors:
      ``"raw_cam"`` <F_u, w_c> (uncalibrated), ``"calibrated_cam"`` m (the CAM the head uses:
      cosine <F̂_u, ŵ>, or raw when ``calibrate=False``; with ``keep_length`` both m and r divide
      by the image's largest ||F_u|| instead), ``"correlation"`` r = <F̂_u, P>, and
      ``"importance"`` a (mean 1 over locations).
    - ``map_class``: optional (B,) int64 class per image. Without it the maps are those the
      head used (guide-weighted m, r, a; raw CAM of the top guide class). With it they are
      computed for that class alone (the guide set to a one-hot on it), e.g. the predicted or
      the true class.

    Returns ``HeadOutput(logits=z, aux_logits=z0, aux_weight=gamma, features=f, maps=...)``;
    the loss of step 8 is ``CE(z, y) + gamma * CE(z0, y)``. ``variant="class"`` returns
    ``features=f0`` (it has no single reinforced feature).

    Example in a user's own training loop, on a torchvision ResNet-50::

        import torch, torchvision
        from camlt import CAMCHead

        net = torchvision.models.resnet50(weights=None)
        body = torch.nn.Sequential(*list(net.children())[:-2])  # up to layer4, no pooling
        head = CAMCHead(2048, num_classes=1000, scale=16.0)
        opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
        for images, labels in loader:
            out = head(body(images), labels)  # training mode: also updates the prototypes
            loss = out.loss(labels)  # CE(z, y) + gamma * CE(z0, y), step 8
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        maps = head(body(images), return_maps=True, map_class=labels).maps["importance"]
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        scale: float = 16.0,
        learn_scale: bool = False,
        *,
        class_counts: Sequence[int] | None = None,
        **options,
    ) -> None:
        """``options``: any of ``CAMCSettings``' fields (their defaults are the design's)."""
        super().__init__()
        settings = CAMCSettings(**options)
        settings.check()
        if settings.guide == "balanced" and class_counts is None:
            raise UsageError("model.camc.guide=balanced needs the training class counts")
        if class_counts is not None and len(class_counts) != num_classes:
            raise UsageError(
                f"class_counts has {len(class_counts)} entries for {num_classes} classes"
            )
        self.classifier = NormalizedClassifier(in_features, num_classes, scale, learn_scale)
        self.variant, self.guide, self.calibrate = (
            settings.variant,
            settings.guide,
            settings.calibrate,
        )
        self.keep_length = settings.keep_length
        self.use_cam, self.use_corr = settings.use_cam, settings.use_corr
        self.alpha, self.tau, self.mu = settings.alpha, settings.tau, settings.mu
        self.gamma, self.lam = settings.gamma, settings.lam
        self.k = min(settings.k, num_classes)
        # P: unit class prototypes, copied from Ŵ at the first training step; both are saved.
        self.register_buffer("P", torch.zeros(num_classes, in_features))
        self.register_buffer("P_ready", torch.tensor(False))
        if class_counts is not None:  # log prior for guide=balanced; rebuilt from the data
            counts = torch.as_tensor(list(class_counts), dtype=torch.float32).clamp_min(1)
            self.register_buffer("log_prior", (counts / counts.sum()).log(), persistent=False)
        else:
            self.log_prior = None

    @classmethod
    def from_config(
        cls,
        in_features: int,
        num_classes: int,
        model_cfg: DictConfig,
        class_counts: Sequence[int] | None,
    ) -> CAMCHead:
        """The head of ``model.head=camc``: ``model.scale``/``learn_scale`` and ``model.camc.*``."""
        given = model_cfg.get("camc")
        options = (
            OmegaConf.to_container(given) if isinstance(given, DictConfig) else dict(given or {})
        )
        return cls(
            in_features,
            num_classes,
            model_cfg.scale,
            model_cfg.learn_scale,
            class_counts=class_counts,
            **options,
        )

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant}, guide={self.guide}, alpha={self.alpha}, tau={self.tau}, "
            f"k={self.k}, mu={self.mu}, gamma={self.gamma}, calibrate={self.calibrate}, "
            f"keep_length={self.keep_length}, "
            f"use_cam={self.use_cam}, use_corr={self.use_corr}, lam={self.lam}"
        )

    # ------------------------------------------------------------------------- forward
    def maps(self, fmap: torch.Tensor, classes: torch.Tensor) -> HeadOutput:
        """The maps of ``classes`` (the MapsHead protocol that viz and the report use)."""
        return self(fmap, return_maps=True, map_class=classes)

    def forward(
        self,
        F: torch.Tensor,
        targets: torch.Tensor | None = None,
        return_maps: bool = False,
        map_class: torch.Tensor | None = None,
    ) -> HeadOutput:
        if F.dim() != 4:
            raise ValueError(f"CAMCHead expects a (B, C, H, W) feature map, got {tuple(F.shape)}")
        if targets is not None and targets.dim() != 1:
            raise ValueError(f"CAMCHead targets must be (B,) class indices, got {targets.shape}")
        # The cosine and softmax math stays in float32 even under autocast.
        with torch.autocast(F.device.type, enabled=False):
            P = self._prototypes()
            if self.variant == "class":
                return self._forward_class(F.float(), P, targets, return_maps, map_class)
            return self._forward_section2(F.float(), P, targets, return_maps, map_class)

    def _forward_section2(
        self, F: torch.Tensor, P: torch.Tensor, targets, return_maps: bool, map_class
    ) -> HeadOutput:
        """Steps 1-9 of docs/camc.md."""
        W, s = self.classifier.weight.float(), self.classifier.scale
        W_hat = nnf.normalize(W, dim=1)
        F_u = F.flatten(2)  # (B, C, HW): the C-vector at each location u
        F_norm = self._norms(F_u)  # maps divide by it: <F̂_u, v> without building F̂
        # step 1: base prediction
        f0 = F_u.mean(2)
        z0 = s * _cos(f0, W_hat)
        # step 2: guide, top-k classes renormalised, detached
        idx, q = self._guide(z0, targets)
        # step 3: calibrated CAM (cosine), or raw CAM when calibrate=False
        cam, corr = self._class_maps(F_u, F_norm, W, W_hat, P, idx)
        m = (q.unsqueeze(2) * cam).sum(1)
        # step 4: correlation with what each guide class shares across the data
        r = (q.unsqueeze(2) * corr).sum(1)
        # step 5: importance, mean 1 over locations
        a = F_u.shape[2] * torch.softmax(self._attention_logits(m, r), dim=-1)
        # step 6: reinforce and classify
        g = torch.bmm(F_u, a.unsqueeze(2)).squeeze(2) / F_u.shape[2]  # mean_u a(u) F_u
        f = f0 + self.alpha * g
        z = s * _cos(f, W_hat)
        # step 7: prototype update (training only, no gradient)
        if self.training and targets is not None:
            self._update_prototypes(g, targets)
        # step 8: the loss CE(z, y) + gamma * CE(z0, y) is HeadOutput.loss (aux_logits, aux_weight)
        # step 9: inference runs steps 1-6 on the same path with P frozen
        out = HeadOutput(z, aux_logits=z0, aux_weight=self.gamma, features=f)
        if return_maps:
            used = (W[idx[:, 0]], m, r, a) if map_class is None else None
            out.maps = self._maps(F, F_u, F_norm, W, W_hat, P, map_class, used)
        return out

    def _forward_class(
        self, F: torch.Tensor, P: torch.Tensor, targets, return_maps: bool, map_class
    ) -> HeadOutput:
        """variant=class: each class attends to its own regions and reinforces its own logit."""
        W, s = self.classifier.weight.float(), self.classifier.scale
        W_hat = nnf.normalize(W, dim=1)
        F_u = F.flatten(2)
        F_norm = self._norms(F_u)
        # step 1: base prediction
        f0 = F_u.mean(2)
        cos0 = _cos(f0, W_hat)
        z0 = s * cos0
        # step 2: which classes are reinforced: all when K is small, else the top-k guide classes
        idx = None  # None: all K classes
        if W.shape[0] > CLASS_VARIANT_ALL_K:
            idx = self._guide(z0, targets, ranking_only=True)
        # steps 3-5: per-class attention A_k over locations from CAM and correlation
        cam, corr = self._class_maps(F_u, F_norm, W, W_hat, P, idx)
        A = torch.softmax(self._attention_logits(cam, corr), dim=-1)
        # step 6: z_k = s * (<f̂0, ŵ_k> + lambda * sum_u A_k(u) <F̂_u, ŵ_k>)
        c = cam if self.calibrate else _rows_times(W_hat, idx, F_u) / F_norm.unsqueeze(1)
        boost = self.lam * (A * c).sum(2)
        z = s * (cos0 + boost if idx is None else cos0.scatter_add(1, idx, boost))
        # step 7: prototypes from each image's own-class attention (training only, no gradient)
        if self.training and targets is not None:
            with torch.no_grad():
                cam_y, corr_y = self._class_maps(F_u, F_norm, W, W_hat, P, targets[:, None])
                A_y = torch.softmax(self._attention_logits(cam_y, corr_y), dim=-1)
                self._update_prototypes(torch.bmm(F_u, A_y.transpose(1, 2))[:, :, 0], targets)
        # step 8: HeadOutput.loss adds gamma * CE(z0, y); step 9: the same path at inference
        out = HeadOutput(z, aux_logits=z0, aux_weight=self.gamma, features=f0)
        if return_maps:
            out.maps = self._maps(F, F_u, F_norm, W, W_hat, P, map_class, None, z.argmax(1))
        return out

    # ------------------------------------------------------------------------- the steps' parts
    @torch.compiler.disable
    def _prototypes(self) -> torch.Tensor:
        """P, set to Ŵ at the first training step; before that (eval only) Ŵ stands in for it.

        In training it is a copy: step 7 changes P in place before the backward pass uses it.
        Run outside torch.compile, whose graphs would fold the copy into P (one graph break).
        """
        if not bool(self.P_ready):
            W_hat = nnf.normalize(self.classifier.weight.detach().float(), dim=1)
            if not self.training:
                return W_hat
            with torch.no_grad():
                self.P.copy_(W_hat)
                self.P_ready.fill_(True)
        return self.P.clone() if self.training else self.P

    def _norms(self, F_u: torch.Tensor) -> torch.Tensor:
        """The divisor of every map (B, HW): ||F_u|| per location, or the image's largest one.

        Per location the maps are cosines, blind to how strongly a location responds; on
        cluttered images the feature length is what marks the object (docs/clutter.md).
        ``keep_length`` divides by the image's largest length instead: the maps stay in
        [-1, 1] and scale-free per image, so ``tau`` keeps its meaning, and keep the contrast.
        """
        norms = _location_norms(F_u)
        if self.keep_length:
            return norms.amax(1, keepdim=True).expand_as(norms)
        return norms

    def _guide(self, z0: torch.Tensor, targets, ranking_only: bool = False):
        """Top-k guide classes ``idx`` (B, k) and weights ``q`` (B, k) summing to 1, detached."""
        z0 = z0.detach()
        use_target = self.guide == "target" and self.training and targets is not None
        if self.guide == "balanced":
            if self.log_prior is None:
                raise UsageError("guide='balanced' needs the training class counts (class_counts)")
            z0 = z0 - self.log_prior
        if ranking_only:  # variant=class: the k classes to reinforce, the label among them
            idx = z0.topk(self.k, dim=1).indices
            if use_target:
                missing = (idx != targets[:, None]).all(1)
                idx[missing, -1] = targets[missing]
            return idx
        if use_target:
            return targets[:, None], torch.ones_like(z0[:, :1])
        q, idx = torch.softmax(z0, dim=1).topk(self.k, dim=1)
        return idx, q / q.sum(1, keepdim=True)

    def _class_maps(self, F_u, F_norm, W, W_hat, P, idx):
        """CAM and correlation of the classes ``idx`` (B, n), or all if None: two (B, n, HW)."""
        inv_norm = 1 / F_norm.unsqueeze(1)
        if self.calibrate:
            cam = _rows_times(W_hat, idx, F_u) * inv_norm  # <F̂_u, ŵ_k>
        else:
            cam = _rows_times(W, idx, F_u)  # <F_u, w_k>
        corr = _rows_times(P, idx, F_u) * inv_norm  # <F̂_u, P_k>
        return cam, corr

    def _attention_logits(self, m: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(m + r) / (2 tau); with one term switched off, that term / tau (the same sharpness)."""
        terms = [t for t, on in ((m, self.use_cam), (r, self.use_corr)) if on]
        return sum(terms) / (len(terms) * self.tau)

    @torch.no_grad()
    def _update_prototypes(self, g: torch.Tensor, targets: torch.Tensor) -> None:
        """P_c <- normalize(mu P_c + (1 - mu) mean ĝ_i over the batch's images of class c).

        Fixed shapes (a membership matmul, not ``unique``): deterministic, no host sync, and no
        compile break.
        """
        g_hat, targets = whole_batch(nnf.normalize(g.detach().float(), dim=1), targets)
        classes = torch.arange(self.P.shape[0], device=targets.device)
        member = (classes[:, None] == targets[None, :]).float()  # (K, B)
        count = member.sum(1, keepdim=True)
        mean = (member @ g_hat) / count.clamp_min(1)
        moved = nnf.normalize(self.mu * self.P + (1 - self.mu) * mean, dim=1)
        self.P.copy_(torch.where(count > 0, moved, self.P))

    @torch.no_grad()
    def _maps(self, F, F_u, F_norm, W, W_hat, P, map_class, used, top=None) -> dict:
        """The four maps at feature resolution: those the head used, or those of ``map_class``."""
        B, _, H, Wd = F.shape
        if used is None:
            cls = (top if map_class is None else map_class).to(F.device).long()
            cam, corr = self._class_maps(F_u, F_norm, W, W_hat, P, cls[:, None])
            m, r = cam[:, 0], corr[:, 0]
            a = F_u.shape[2] * torch.softmax(self._attention_logits(m, r), dim=-1)
            w_raw = W[cls]
        else:
            w_raw, m, r, a = used
        raw = torch.einsum("bc,bcu->bu", w_raw, F_u)
        maps = {"raw_cam": raw, "calibrated_cam": m, "correlation": r, "importance": a}
        return {name: t.detach().reshape(B, H, Wd) for name, t in maps.items()}


def _rows_times(M: torch.Tensor, idx: torch.Tensor | None, X: torch.Tensor) -> torch.Tensor:
    """<X_u, M_k> for the rows ``idx`` (B, n) of M (all rows if None): (B, n, HW).

    Gathering only the guide rows keeps the cost independent of K (8,142 on iNaturalist).
    """
    if idx is None:
        return torch.einsum("kc,bcu->bku", M, X)
    return torch.einsum("bkc,bcu->bku", M[idx], X)


def _location_norms(F_u: torch.Tensor) -> torch.Tensor:
    """||F_u|| at each location (B, HW), floored like ``normalize`` so empty locations stay 0."""
    return torch.linalg.vector_norm(F_u, dim=1).clamp_min(1e-12)


def _cos(f: torch.Tensor, W_hat: torch.Tensor) -> torch.Tensor:
    """cos(W, f): each feature row against each unit class weight."""
    return nnf.normalize(f, dim=1) @ W_hat.t()


HEADS.add("camc", CAMCHead.from_config, CAMCSettings)  # its settings under model.camc
