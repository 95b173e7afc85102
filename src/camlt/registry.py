"""One way to extend camlt: a named registry per kind of part (after timm's model registry).

Backbones, heads, losses, samplers, stage-2 methods, batch mixes and datasets are each a
``Registry`` of factories under the config key that names them, so adding one is a decorator
(or one entry) and an unknown name is refused the same way everywhere, listing the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from camlt.errors import UsageError

F = TypeVar("F", bound=Callable)


class Registry(Mapping[str, F], Generic[F]):
    """Factories by name for one config key (``model.head``, ``loss.name``, ...), each with the
    dataclass of its own settings where it has some (held in the config under its name, as
    mmpretrain's ``dict(type=..., **kwargs)``)."""

    def __init__(
        self,
        key: str,
        entries: Mapping[str, F] | None = None,
        settings: Mapping[str, type] | None = None,
    ) -> None:
        self.key = key
        self._entries: dict[str, F] = {}
        self._settings: dict[str, type] = {}
        for name, factory in (entries or {}).items():
            self.add(name, factory, (settings or {}).get(name))

    def add(self, name: str, factory: F, settings: type | None = None) -> F:
        if name in self._entries:
            raise ValueError(f"{self.key}: '{name}' registered twice")
        self._entries[name] = factory
        if settings is not None:
            self._settings[name] = settings
        return factory

    def register(self, name: str, settings: type | None = None) -> Callable[[F], F]:
        """A decorator: ``@BACKBONES.register("resnet32")``."""
        return lambda factory: self.add(name, factory, settings)

    def settings(self, name: str, given: Mapping | None = None) -> Any:
        """``name``'s settings: its dataclass's defaults with ``given`` laid over them, each key
        and value checked (an unknown key lists the valid ones); None for a part without any."""
        kind = self._settings.get(name)
        section = f"{self.key.rsplit('.', 1)[0]}.{name}"
        if kind is None:
            if given:
                raise UsageError(f"{section}: {name} takes no settings")
            return None
        valid = [f.name for f in dataclasses.fields(kind)]
        unknown = [k for k in (given or {}) if k not in valid]
        if unknown:
            raise UsageError(
                f"{section}.{unknown[0]}: not a setting of {name}; expected {', '.join(valid)}"
            )
        made = kind(**dict(given or {}))
        if hasattr(made, "check"):
            made.check(section)
        return made

    def with_settings(self) -> list[str]:
        return list(self._settings)

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
