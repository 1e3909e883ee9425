"""One registry idiom for every extension point: methods, encoders, data sources, view presets,
evaluation protocols.

A component registers itself in its own file, so adding one touches that file alone (plus, for a
module nobody imports yet, one import line where its family is assembled)::

    METHODS = Registry("method", field="config.method")

    @METHODS.register("simclr")
    class SimCLR: ...

    METHODS.get("simclr")          # -> SimCLR
    METHODS.get("simclr2")         # ValueError naming config.method and the valid names

Entries may also be registered lazily, as ``"module:attribute"`` (or ``"module"``) strings
imported on first use, for components whose imports are slow (TFDS) or optional.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to components of one kind.

    Args:
      kind: what the entries are, for messages ('method', 'encoder', ...).
      field: the config field or argument that names an entry, for messages.
    """

    def __init__(self, kind: str, *, field: str | None = None):
        self.kind = kind
        self.field = field
        self._entries: dict[str, T | str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (a name is taken once)."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T | str) -> None:
        """Register ``obj``, or a ``"module:attribute"`` (or ``"module"``) string imported
        when first asked for."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a plug-in's tests, for instance, register and remove one)."""
        del self._entries[name]

    def get(self, name: str) -> T:
        """The entry named ``name``; if none, a ValueError naming the valid (and closest) names."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = f"{self.field}={name!r}" if self.field else f"{self.kind} {name!r}"
            raise ValueError(f"{what} is not a known {self.kind}{hint}: use one of {self.names()}.")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = importlib.import_module(module)
            entry = getattr(entry, attribute) if attribute else entry
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(name, entry)`` pairs, sorted by name (lazy entries are imported)."""
        return ((name, self.get(name)) for name in self.names())
