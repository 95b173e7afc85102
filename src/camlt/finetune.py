"""Which backbone weights train, epoch by epoch (``model.finetune``): a pretrained backbone is
fine-tuned in full, in its last stages, in its batch norms only, not at all (a linear probe), or
probed first and then fine-tuned (LP-FT).

A frozen part keeps its batch-norm statistics too (its BN layers stay in eval mode), so a probe
sees the features the pretrained network computes. The head always trains.

    model.finetune=full        every weight (the default)
    model.finetune=bn_head     the backbone's batch-norm scales and shifts, and the head
    model.finetune=probe       the head alone, on frozen features
    model.finetune=last:N      the last N stages of the backbone (and what follows them)
    model.finetune=lp_ft:K     probe for K epochs, then every weight
"""

from __future__ import annotations

import re

from torch import nn

from camlt.errors import UsageError

PATTERN = re.compile(r"full|bn_head|probe|last:[1-9]\d*|lp_ft:[1-9]\d*")
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


def check(value: str) -> None:
    """Refuse a spelling ``FineTune`` would not understand."""
    if not PATTERN.fullmatch(str(value)):
        raise UsageError(
            f"model.finetune={value!r}: expected full, bn_head, probe, last:N or lp_ft:K "
            "(N stages, K probe epochs: whole numbers from 1)"
        )


def stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages in order, as it declares them (``stages()``)."""
    if not hasattr(backbone, "stages"):
        raise UsageError(
            f"{type(backbone).__name__} declares no stages; model.finetune=last:N needs them"
        )
    return list(backbone.stages())


class FineTune:
    """Sets ``requires_grad`` and the batch-norm mode of the backbone at every epoch's start
    (an EpochAware part: the engine calls ``set_epoch`` after ``model.train()``)."""

    def __init__(self, backbone: nn.Module, setting: str) -> None:
        check(setting)
        self.backbone = backbone
        self.mode, _, count = setting.partition(":")
        self.count = int(count or 0)
        if self.mode == "last" and self.count > len(stages(backbone)):
            raise UsageError(
                f"model.finetune={setting}: the backbone has {len(stages(backbone))} stages"
            )

    @property
    def changes(self) -> bool:
        """Whether the trained set changes during the run (LP-FT)."""
        return self.mode == "lp_ft"

    def frozen_modules(self, epoch: int) -> list[nn.Module]:
        """The backbone's modules whose weights do not train in ``epoch`` (0-based)."""
        if self.mode == "full" or (self.mode == "lp_ft" and epoch >= self.count):
            return []
        if self.mode in ("probe", "lp_ft", "bn_head"):
            return [self.backbone]
        trained = {id(m) for stage in stages(self.backbone)[-self.count :] for m in stage.modules()}
        after = _after_last_stage(self.backbone)
        trained |= {id(m) for module in after for m in module.modules()}
        return [
            m
            for m in self.backbone.modules()
            if id(m) not in trained and not any(True for _ in m.children())
        ]

    def set_epoch(self, epoch: int) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        for module in self.frozen_modules(epoch):
            for m in module.modules():
                bn = isinstance(m, BATCH_NORMS)
                trains = bn and self.mode == "bn_head"
                for p in m.parameters(recurse=False):
                    p.requires_grad_(trains)
                if bn and not trains:
                    m.eval()  # a frozen part keeps its pretrained statistics


def _after_last_stage(backbone: nn.Module) -> list[nn.Module]:
    """What a backbone runs after its last stage (EfficientNet's conv_head and bn2): trained
    with the last stages."""
    return list(backbone.after_stages()) if hasattr(backbone, "after_stages") else []
