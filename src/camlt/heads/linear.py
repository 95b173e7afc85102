"""GAP + linear classifier, the plain baseline head."""

from __future__ import annotations

import torch
from torch import nn

from camlt.heads.base import HeadOutput
from camlt.heads.registry import HEADS


class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        f = fmap.mean(dim=(2, 3))
        return HeadOutput(self.classifier(f.float()), features=f)


HEADS.add("linear", lambda c, k, model_cfg, counts: LinearHead(c, k))
