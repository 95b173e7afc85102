"""Training augmentation by name (``data.augment``): crop + flip and the strong policies.

``data.augment`` is a ``+``-separated list applied in order, e.g. ``crop_flip+autoaugment+cutout``:

- ``crop_flip``: pad-4 random crop + horizontal flip for in-memory sets, random-resized crop +
  flip for image files (the default);
- ``autoaugment``: AutoAugment's CIFAR-10 policy; ``randaugment``: RandAugment with
  ``data.randaugment_ops`` ops of magnitude ``data.randaugment_magnitude``; ``trivialaugment``:
  TrivialAugmentWide;
- ``cutout``: one square of side ``data.cutout_size`` (default half the image side) set to 0,
  wholly inside the image; ``erasing``: random erasing (probability ``data.erasing_prob``);
- ``none``: no augmentation.

The strong policies are torchvision.transforms.v2's (a dependency already, the reference
implementations of these policies, uint8 tensors in and out), run per image so every image of a
batch draws its own parameters. kornia.augmentation would run them batched, which should pay on
a GPU (not measured); on a 2-core CPU in fp32 the engine still trained at 88% of its bare
ResNet-32 step with AutoAugment + Cutout on (benchmarks/results/train_speed_epyc_autoaugment.md),
and kornia would be one more dependency. The draws of a batch are seeded from the loader's generator,
itself a function of (seed, epoch), so a resumed run augments bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from camlt.config import ConfigError
from camlt.registry import Registry

BASIC = "crop_flip"  # the pad-and-crop + flip every recipe starts from (on the batch)


@dataclass(frozen=True)
class AugmentSettings:
    """The parsed ``data.augment`` with the parameters of its policies."""

    steps: tuple[str, ...]
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    cutout_size: int | None = None
    erasing_prob: float = 0.5

    @classmethod
    def from_config(cls, data: Any) -> AugmentSettings:
        """The settings of a config's ``data`` section."""
        return cls(
            parse_augment(data.augment),
            data.randaugment_ops,
            data.randaugment_magnitude,
            data.cutout_size,
            data.erasing_prob,
        )

    @property
    def crop_flip(self) -> bool:
        return BASIC in self.steps

    @property
    def strong(self) -> tuple[str, ...]:
        return tuple(s for s in self.steps if s in STRONG)


def _cutout(v2, settings: AugmentSettings, side: int):
    """One square of ``data.cutout_size`` (default half the side) set to 0, wholly inside."""
    edge = settings.cutout_size or max(1, side // 2)
    share = min(1.0, edge * edge / (side * side))
    return v2.RandomErasing(p=1.0, scale=(share, share), ratio=(1.0, 1.0), value=0)


# The strong steps: name -> (torchvision.transforms.v2, settings, image side) -> transform
POLICIES: Registry[Callable] = Registry(
    "data.augment",
    {
        "autoaugment": lambda v2, st, side: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
        "randaugment": lambda v2, st, side: v2.RandAugment(
            st.randaugment_ops, st.randaugment_magnitude
        ),
        "trivialaugment": lambda v2, st, side: v2.TrivialAugmentWide(),
        "cutout": _cutout,
        "erasing": lambda v2, st, side: v2.RandomErasing(p=st.erasing_prob, value=0),
    },
)


STRONG = tuple(POLICIES)  # the steps after crop_flip, in the order the registry holds them


def parse_augment(value: str) -> tuple[str, ...]:
    """The steps of a ``data.augment`` value; an unknown step lists the valid ones."""
    steps = tuple(s.strip() for s in str(value).split("+"))
    known = ("none", BASIC, *POLICIES)
    unknown = [s for s in steps if s not in known]
    if unknown:
        raise ConfigError(
            f"data.augment={value!r}: unknown step {unknown[0]!r}; expected '+'-joined steps "
            f"from {', '.join(known)} (e.g. crop_flip+autoaugment+cutout)"
        )
    if "none" in steps and len(steps) > 1:
        raise ConfigError(f"data.augment={value!r}: 'none' cannot be combined with other steps")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"data.augment={value!r}: a step is named twice")
    return () if steps == ("none",) else steps


def policy_transforms(settings: AugmentSettings, image_side: int) -> list[Callable]:
    """The torchvision v2 transforms of the strong steps, in the order named."""
    from torchvision.transforms import v2  # imported here: torchvision takes seconds to import

    return [POLICIES.factory(step)(v2, settings, image_side) for step in settings.strong]


class BatchPolicy:
    """The strong steps applied to a uint8 batch (B, C, H, W), each image with its own draws."""

    def __init__(self, settings: AugmentSettings, image_side: int) -> None:
        from torchvision.transforms import v2

        self.transform = v2.Compose(policy_transforms(settings, image_side))

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """v2 transforms draw from the global generator: fork it, seed it from ``generator``,
        and leave the caller's random state exactly as it was."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(image) for image in batch])


def batch_policy(settings: AugmentSettings, image_side: int) -> BatchPolicy | None:
    """The batch policy of the strong steps, or None when there are none."""
    return BatchPolicy(settings, image_side) if settings.strong else None
