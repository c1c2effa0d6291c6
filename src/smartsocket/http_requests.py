"""Plain HTTP requests on the WebSocket port: the types the request gate and the routers share.

A router answers a request head with an ``HttpResponse`` (sent at once, connection closed),
an ``Accept`` (a WebSocket upgrade, ``transport/``) or a ``Serve``: read the body and await
``Serve.handler(HttpRequest)`` for the answer. Served requests may take their time (a
long-poll holds its answer); when the client goes away first the handler's task is cancelled
and ``HttpRequest.disconnected`` is set. Their connection is kept alive for the next request
(HTTP/1.1, bounded in time and count, ``HttpLimits``). This module imports no picows: the gate
(``handshake.py``) serves these requests before picows exists for the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """A request head that reached the listener (a WebSocket upgrade or a plain request)."""

    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # case-insensitive
    method: str = "GET"

    @property
    def is_upgrade(self) -> bool:
        return "websocket" in self.headers.get("Upgrade", "").lower()

    def header(self, name: str) -> str | None:
        """All values of a header that may repeat, joined with ", " (RFC 9110 5.3)."""
        return joined_header(self.headers, name)


def joined_header(headers: Mapping[str, str], name: str) -> str | None:
    """Every value of header ``name`` joined with ", " (a CIMultiDict may hold several),
    or None."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return headers.get(name)
    values: list[str] = getall(name, [])
    return ", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A plain HTTP response. Sync answers close the connection; a ``Serve`` handler's
    answer keeps it alive unless ``headers`` says ``Connection: close``."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A whole request (head and body) for a ``Serve`` handler."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # case-insensitive (a CIMultiDict)
    body: bytes
    peer: Any  # the transport's peername: (host, port, ...) or None
    # Set when the client closed the connection before the answer was sent (the handler's
    # task is cancelled too; this lets code outside it, e.g. a long-poll queue, notice).
    disconnected: asyncio.Event

    def header(self, name: str) -> str | None:
        """All values of a header that may repeat, joined with ", " (RFC 9110 5.3)."""
        return joined_header(self.headers, name)


Handler = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponse]]  # an async def


@dataclass(frozen=True, slots=True)
class Serve:
    """Route outcome: read the body (at most ``max_body`` bytes; None: the listener's
    ``HttpLimits.max_body``) and answer with ``await handler(request)``."""

    handler: Handler
    max_body: int | None = None
    # How the gate words its own refusals of this route's requests (400 bad Content-Length,
    # 411 chunked, 413 too large, 429 per-IP): ``errors(status, reason)``; None: plain text.
    errors: Callable[[int, str], HttpResponse] | None = None


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds of served requests (``Serve``) on one listener."""

    max_body: int = 1 << 20  # Content-Length over it: 413, body not read
    body_timeout: float = 10.0  # seconds for the body once the head is in; then dropped
    keepalive_timeout: float = 15.0  # idle seconds between requests on one connection
    keepalive_requests: int = 1000  # requests on one connection; the last one closes it
    max_per_ip: int = 0  # connections serving requests per client IP (0: no limit); over: 429


class Shutdown(Protocol):
    def shutdown(self, *, busy: bool) -> None: ...


class ServedConnections:
    """The connections of one listener that served a request (``Serve``): counted per client
    IP against a limit (0: none), and closed by ``close()`` when the server shuts down."""

    __slots__ = ("_counts", "closing", "connections", "limit")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self._counts: dict[Any, int] = {}
        self.connections: dict[Shutdown, None] = {}
        self.closing = False  # answers close their connection from now on

    def acquire(self, ip: Any, conn: Shutdown) -> bool:
        count = self._counts.get(ip, 0)
        if self.limit and count >= self.limit:
            return False
        self._counts[ip] = count + 1
        self.connections[conn] = None
        return True

    def release(self, ip: Any, conn: Shutdown) -> None:
        self.connections.pop(conn, None)
        count = self._counts.get(ip, 0) - 1
        if count > 0:
            self._counts[ip] = count
        else:
            self._counts.pop(ip, None)

    def count(self, ip: Any) -> int:
        return self._counts.get(ip, 0)

    def close(self, *, busy: bool = True) -> None:
        """Shut the connections down: idle ones are closed, answers in progress close their
        connection when sent; ``busy``: requests being served are cancelled too (their
        handlers' tasks, ``disconnected`` set) and answered 503."""
        self.closing = True
        for conn in list(self.connections):
            conn.shutdown(busy=busy)


def peer_ip(peer: Any) -> Any:
    """The IP part of a peername (the whole value for a Unix socket's)."""
    return peer[0] if isinstance(peer, tuple) and peer else peer
