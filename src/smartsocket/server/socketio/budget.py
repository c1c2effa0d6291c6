"""``SessionBudget``: the rate limits of what a Socket.IO session receives that no socket's
own limits charge (Engine.IO control packets and binary frames on its WebSocket, polling POST
bodies, CONNECTs, anything before its first socket).

A socket charges the events and acks it gets (``rate_limit_messages``, ``rate_limit_bytes``);
without this, a client sending noops ("6" + a megabyte) or packets before any CONNECT was
charged nothing and never closed. The session's buckets have the socket's rates; a message
that does not fit is dropped, and ``rate_limit_strikes`` such refusals within 10 s end the
session (its sockets see 4008, "rate limit abuse"), as for a native socket.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from smartsocket.config import Config
from smartsocket.security import RateLimit, TokenBucket


class Charge(Enum):
    OK = "ok"
    DROPPED = "dropped"  # over the rates: drop it
    ABUSE = "abuse"  # refused too often: end the session


class SessionBudget:
    """The buckets of one session, made on first use (an idle session holds none)."""

    __slots__ = ("_buckets", "_clock", "_limit", "_strikes", "_strikes_limit")

    def __init__(self, config: Config, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._limit = RateLimit(
            config.rate_limit_messages or None, config.rate_limit_burst,
            config.rate_limit_bytes or None,
        )
        self._strikes_limit = config.rate_limit_strikes
        self._buckets: tuple[TokenBucket | None, TokenBucket | None] | None = None
        self._strikes: TokenBucket | None = None

    def charge(self, size: int) -> Charge:
        """One message of ``size`` bytes."""
        now = self._clock()
        buckets = self._buckets
        if buckets is None:
            buckets = self._buckets = self._limit.buckets(now)
        count, volume = buckets
        if count is None or not count.take(now):
            if volume is None or not volume.take(now, size):
                return Charge.OK
            if count is not None:
                count.give_back()  # refused: its message token is not spent
        strikes = self._strikes
        if strikes is None:
            limit = self._strikes_limit
            strikes = self._strikes = TokenBucket(limit / 10, limit, now)
        return Charge.ABUSE if strikes.take(now) else Charge.DROPPED
