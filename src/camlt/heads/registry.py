"""The heads by name (``model.head``): each head's module registers itself, with its own
settings where it has some (``model.camc``), so adding a head is one file."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from omegaconf import DictConfig
from torch import nn

from camlt.registry import Registry

# (feature channels, classes, the model section, training class counts) -> the head
HeadFactory = Callable[[int, int, DictConfig, Sequence[int]], nn.Module]

HEADS: Registry[HeadFactory] = Registry("model.head")
