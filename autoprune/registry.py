"""Name → class registries, so that a name in a space file maps to exactly one class.

Scorers, schedules, allocations, samplers, models and datasets each keep a
:class:`Registry`. Asking for an unknown name raises :class:`~autoprune.errors.AutopruneError`
listing the valid names, which is what the user sees on the command line.

Example::

    SCORERS: Registry[type[Scorer]] = Registry("scorer")

    @SCORERS.register("magnitude")
    class MagnitudeScorer(Scorer): ...

    SCORERS.get("magnitude")   # -> MagnitudeScorer
    SCORERS.get("magnitud")    # AutopruneError: unknown scorer 'magnitud' (did you mean
                               # 'magnitude'?); valid: magnitude, ...
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from autoprune.errors import AutopruneError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping from names to registered objects of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name may be registered once."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str, *, where: str = "") -> T:
        """The object registered as ``name``; ``where`` (e.g. a file and key) prefixes errors."""
        try:
            return self._entries[name]
        except KeyError:
            raise AutopruneError(f"{where}{self.unknown_message(name)}") from None

    def unknown_message(self, name: object) -> str:
        """One line saying ``name`` is unknown, suggesting the closest and listing all names."""
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self._entries)}"

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
