"""The scaled normalized classifier: ``z_k = s * <f_hat, w_hat_k>``, no bias."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from camlt.heads.base import HeadOutput
from camlt.heads.registry import HEADS


class NormalizedClassifier(nn.Module):
    """Cosine classifier with output scale ``s``, fixed or learned in log space."""

    def __init__(
        self, in_features: int, num_classes: int, scale: float = 16.0, learn_scale: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        log_s = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_s)
        else:
            self.register_buffer("log_scale", log_s)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def no_weight_decay(self) -> set[str]:
        return {"log_scale"} if isinstance(self.log_scale, nn.Parameter) else set()

    def unit_weight(self) -> torch.Tensor:
        return F.normalize(self.weight.float(), dim=1)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each feature row to each class weight, in float32."""
        return F.normalize(features.float(), dim=1) @ self.unit_weight().t()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(features)


class NormalizedHead(nn.Module):
    """GAP + normalized classifier."""

    def __init__(
        self, in_features: int, num_classes: int, scale: float = 16.0, learn_scale: bool = False
    ) -> None:
        super().__init__()
        self.classifier = NormalizedClassifier(in_features, num_classes, scale, learn_scale)

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        f = fmap.mean(dim=(2, 3))
        return HeadOutput(self.classifier(f), features=f)


HEADS.add("normalized", lambda c, k, m, counts: NormalizedHead(c, k, m.scale, m.learn_scale))
