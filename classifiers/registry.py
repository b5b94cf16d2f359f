"""A name -> plug-in registry (the torchvision ``register_model`` / timm ``list_models`` pattern).

Generic on purpose: heads register here, and featcache's backbone registry reuses the class, so
adding a head or a backbone is one module plus one decorator.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """Raised by ``Registry.get``; ``str()`` is a complete one-line message with suggestions."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(unknown_message(self.kind, name, self._items)) from None

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._items)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def unknown_message(kind: str, name: str, known: Iterable[str], n: int = 3) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(known)[:12])}"
    return f"unknown {kind} {name!r}: {hint}"
