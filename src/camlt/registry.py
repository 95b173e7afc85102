"""One way to extend camlt: a named registry per kind of part (after timm's model registry).

Backbones, heads, losses, samplers, stage-2 methods, batch mixes and datasets are each a
``Registry`` of factories under the config key that names them, so adding one is a decorator
(or one entry) and an unknown name is refused the same way everywhere, listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar, runtime_checkable

from camlt.errors import UsageError

F = TypeVar("F", bound=Callable)


class Registry(Mapping[str, F], Generic[F]):
    """Factories by name for one config key (``model.head``, ``loss.name``, ...)."""

    def __init__(self, key: str, entries: Mapping[str, F] | None = None) -> None:
        self.key = key
        self._entries: dict[str, F] = {}
        for name, factory in (entries or {}).items():
            self.add(name, factory)

    def add(self, name: str, factory: F) -> F:
        if name in self._entries:
            raise ValueError(f"{self.key}: '{name}' registered twice")
        self._entries[name] = factory
        return factory

    def register(self, name: str) -> Callable[[F], F]:
        """A decorator: ``@BACKBONES.register("resnet32")``."""
        return lambda factory: self.add(name, factory)

    def factory(self, name: str) -> F:
        """The factory of ``name``; an unknown name lists the valid ones."""
        if name not in self._entries:
            raise UsageError(
                f"{self.key}='{name}': unknown; expected one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, name: str) -> F:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


@runtime_checkable
class EpochAware(Protocol):
    """A part that changes with the epoch (DRW's weights, progressive sampling, a loader's
    shuffle): the engine calls ``set_epoch`` at the start of every epoch, a resumed one too."""

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class Describes(Protocol):
    """A part whose settings the metrics must state (tau-norm's tau and where it was chosen)."""

    def describe(self) -> dict: ...
