"""Room name patterns, shared by room policies (``policies.py``) and the room grants of tokens
(``auth/tokens.py``).

A pattern is an exact room name (``admin``), a prefix ending in one ``*`` (``chat:*``
matches ``chat:`` followed by anything, ``chat:`` itself included), or ``*`` alone (every
room). No other wildcard: with only trailing stars, "the most specific pattern wins" has one
meaning: an exact name beats any prefix, and a longer prefix beats a shorter one (``chat:vip:*``
over ``chat:*`` over ``*``). Matching costs one dict lookup per distinct prefix length.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from smartsocket.protocol.names import name_problem

T = TypeVar("T")


def pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` is not a valid room pattern, or None."""
    if type(pattern) is not str:
        return "a room pattern must be a string"
    if pattern == "*":
        return None
    body = pattern.removesuffix("*")
    if "*" in body:
        return ("'*' may only end a pattern (chat:* matches every room starting with chat:); "
                f"got {pattern!r}")
    problem = name_problem("room", body)
    return None if problem is None else f"{problem}: {pattern!r}"


def prefix_of(pattern: str) -> str | None:
    """The prefix a wildcard pattern matches (``chat:`` for ``chat:*``), None for a name."""
    return pattern[:-1] if pattern.endswith("*") else None


class PatternTable(Generic[T]):
    """Values by room pattern; ``match(room)`` finds the most specific pattern."""

    __slots__ = ("_exact", "_lengths", "_prefixes")

    def __init__(self, items: Iterable[tuple[str, T]] = ()) -> None:
        self._exact: dict[str, tuple[str, T]] = {}
        self._prefixes: dict[str, tuple[str, T]] = {}
        self._lengths: tuple[int, ...] = ()
        for pattern, value in items:
            self.add(pattern, value)

    def add(self, pattern: str, value: T) -> None:
        """Raises ValueError for an invalid or repeated pattern."""
        problem = pattern_problem(pattern)
        if problem is not None:
            raise ValueError(problem)
        prefix = prefix_of(pattern)
        table = self._exact if prefix is None else self._prefixes
        key = pattern if prefix is None else prefix
        if key in table:
            raise ValueError(f"pattern {pattern!r} is given twice")
        table[key] = (pattern, value)
        # Longest first: the first hit is the most specific prefix.
        self._lengths = tuple(sorted({len(p) for p in self._prefixes}, reverse=True))

    def __len__(self) -> int:
        return len(self._exact) + len(self._prefixes)

    def items(self) -> list[tuple[str, T]]:
        return [*self._exact.values(), *self._prefixes.values()]

    def match(self, room: str) -> tuple[str, T] | None:
        """(pattern, value) of the most specific pattern matching ``room``, or None."""
        hit = self._exact.get(room)
        if hit is not None:
            return hit
        prefixes = self._prefixes
        size = len(room)
        for length in self._lengths:
            if length <= size:
                hit = prefixes.get(room[:length])
                if hit is not None:
                    return hit
        return None
