"""A table of named classes or specs that users extend: acquisition methods, uncertainty sources,
datasets. One implementation, so every table refuses and reports the same way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order.

    Args:
        kind: what an entry is, for messages ("acquisition method").
        argument: the argument name that lookups report ("method", "name").
        reserved: names no entry may take.
    """

    def __init__(self, kind: str, argument: str, reserved: tuple[str, ...] = ()) -> None:
        self.kind, self.argument, self.reserved = kind, argument, reserved
        self._entries: dict[str, T] = {}

    def add(self, name: object, entry: T) -> T:
        """Registers ``entry`` as ``name`` (an identifier); re-registering the same entry is a no-op,
        another entry under a taken name raises ValueError."""
        if not isinstance(name, str) or not name.isidentifier() or name in self.reserved:
            others = f" other than {self.reserved}" if self.reserved else ""
            raise ValueError(f"a {self.kind} name must be an identifier{others}, got {name!r}")
        if name in self._entries and self._entries[name] != entry:
            raise ValueError(f"a {self.kind} named {name!r} is registered already ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Takes ``name`` out of the table (for tests and plug-ins that unload)."""
        return self._entries.pop(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: object) -> T:
        """The entry of ``name``; ValueError naming the argument and listing the names otherwise."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"{self.argument} must be one of {self.names()}, got {name!r}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
