"""How much room history recovery keeps, per room: the server's ``history_size`` /
``history_ttl``, or those of the room's policy (docs/auth.md, "Room policies").

One ``HistoryLimits`` per server, read by the store that keeps room histories: the memory store
on one node (``recovery/memory.py``), Redis in a cluster (``cluster/roomlog.py`` gives each
``LOG`` call the room's size and expiry; ``recovery/redis.py`` reads the room's TTL and whether
it keeps a history). Every node with the same policies resolves a room the same way, so a
room's history is the same whichever node publishes to it.

Cost: with no policy that sets history, ``lookup`` is None and every room gets the server's
values (``default``) without a lookup. Otherwise the resolved values are cached per room name
(room names come from clients: the cache is cleared when it reaches ``cache_size``, cheaper
than LRU bookkeeping). A policy set later clears the cache and bumps ``version``, which the
memory store compares to re-resolve the rooms it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smartsocket.config import Config

# room -> (history_size, history_ttl) of its policy (None: the server's), or None: no policy
Lookup = Callable[[str], "tuple[int | None, float | None] | None"]


class History:
    """A room's resolved history limits. ``size`` 0: the room keeps no history (its messages
    are numbered, but a client that missed some gets ``$gap`` for it; protocol.md 8)."""

    __slots__ = ("expire_ms", "size", "ttl", "ttl_ms")

    def __init__(self, size: int, ttl: float, window: float) -> None:
        self.size = size
        self.ttl = ttl  # seconds a message is kept for replay
        self.ttl_ms = round(ttl * 1000)
        # Redis: a room's keys expire after this long idle (a session may hold a position in
        # the room for the window, and the messages after it are kept for the TTL).
        self.expire_ms = round(window * 1000) + self.ttl_ms

    def __repr__(self) -> str:
        return f"History(size={self.size}, ttl={self.ttl})"


class HistoryLimits:
    """Resolves each room's ``History`` (see the module doc)."""

    __slots__ = ("_cache", "_cache_size", "_made", "default", "lookup", "version", "window")

    def __init__(self, size: int, ttl: float, window: float, *, cache_size: int = 10_000) -> None:
        self.window = window
        # The server options: a history_ttl of 0 means "as long as the recovery window".
        self.default = History(size, ttl or window, window)
        self.lookup: Lookup | None = None
        self.version = 0
        self._cache: dict[str, History] = {}
        self._cache_size = cache_size
        self._made: dict[tuple[int, float], History] = {}  # one History per distinct value

    @classmethod
    def of_config(cls, config: Config) -> HistoryLimits:
        return cls(config.history_size, config.history_ttl, config.recovery_window)

    def use(self, lookup: Lookup | None) -> None:
        """Resolve rooms through ``lookup`` from now on (None: every room the default)."""
        self.lookup = lookup
        self.changed()

    def changed(self) -> None:
        """The policies changed: forget what was resolved."""
        self._cache.clear()
        self.version += 1

    def of(self, room: str) -> History:
        lookup = self.lookup
        if lookup is None:
            return self.default
        cache = self._cache
        found = cache.get(room)
        if found is None:
            found = self._resolve(lookup(room))
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[room] = found
        return found

    def _resolve(self, hit: tuple[int | None, float | None] | None) -> History:
        return self.default if hit is None else self.resolve(*hit)

    def resolve(self, size: int | None, ttl: float | None) -> History:
        """The limits a policy with these settings gives (None: the server's; a ``ttl`` of 0:
        the recovery window, like the server option)."""
        default = self.default
        if size is None and ttl is None:
            return default
        if (size is not None and size < 0) or (ttl is not None and ttl < 0):
            raise ValueError(f"history_size and history_ttl must be >= 0, got {size}, {ttl}")
        size = default.size if size is None else size
        ttl = default.ttl if ttl is None else (ttl or self.window)
        key = (size, ttl)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = History(size, ttl, self.window)
        return made
