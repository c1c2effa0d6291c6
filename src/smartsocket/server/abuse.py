"""The rules that close an abusive socket, and their state for the sockets that broke one.

- the error-rate rule: more than ``error_limit`` refused messages (malformed, unknown ack id,
  reserved or invalid name, not authenticated) within 10 s close the socket with 1008;
- rate-limit abuse: refused by its rate limits ``rate_limit_strikes`` times within 10 s, the
  socket is closed with 4008 (a burst is answered with ``rate_limited``, abuse is not).

A socket that never misbehaves has no entry here (it holds no buckets of its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from smartsocket.protocol.codes import CloseCode
from smartsocket.security import TokenBucket

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.metrics import Stats
    from smartsocket.server.socket import Socket

logger = logging.getLogger("smartsocket.server")


class AbuseRules:
    """One server's abuse rules. ``config`` and ``stats`` follow its configuration."""

    __slots__ = ("config", "errors", "stats", "strikes")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats: Stats | None = None
        self.errors: dict[Socket, TokenBucket] = {}  # the error-rate rule, by socket
        self.strikes: dict[Socket, TokenBucket] = {}  # rate-limit refusals, by socket

    def refused(self, socket: Socket, clock: Callable[[], int]) -> None:
        """``socket`` was refused a message that breaks the protocol."""
        limit = self.config.error_limit
        if not limit or not socket.connected:
            return
        now = clock()
        bucket = self.errors.get(socket)
        if bucket is None:
            bucket = self.errors[socket] = TokenBucket(limit / 10, limit, now)
        if bucket.take(now):
            if self.stats is not None:
                self.stats.error_closes += 1
            logger.info(
                "closing %s: over the error-rate rule", socket.id,
                extra={"event": "limit", "limit": "errors", "sid": socket.id},
            )
            socket.fail(CloseCode.POLICY_VIOLATION, "too many invalid messages")

    def rate_limited(self, socket: Socket, event: str | None, wait: float, now: int) -> None:
        """``socket`` was refused a message by its rate limits (and told to wait ``wait``)."""
        stats = self.stats
        if stats is not None:
            stats.rate_limited += 1
        logger.debug(
            "rate limited %s on %r", socket.id, event,
            extra={"event": "limit", "limit": "rate", "sid": socket.id, "retry_after": wait},
        )
        bucket = self.strikes.get(socket)
        if bucket is None:
            limit = self.config.rate_limit_strikes
            bucket = self.strikes[socket] = TokenBucket(limit / 10, limit, now)
        if bucket.take(now):  # refused too often: abuse, not a burst
            if stats is not None:
                stats.rate_limit_closes += 1
            socket.fail(CloseCode.RATE_LIMITED, "rate limit abuse")

    def forget(self, socket: Socket) -> None:
        """``socket`` closed."""
        if self.errors:
            self.errors.pop(socket, None)
        if self.strikes:
            self.strikes.pop(socket, None)
