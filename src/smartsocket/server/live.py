"""``/smartsocket/live``: a WebSocket that streams the stats once a second (the dashboard's feed).

It speaks protocol v1 (``$welcome``, then ``["stats", {...}]`` every second) so any client can
read it, and it is separate from the application's sockets: it is not counted in
``connections``, sees no events, and needs ``stats_token`` when one is set.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.protocol import SUBPROTOCOL, envelope
from smartsocket.transport import (
    Accept,
    HandshakeRequest,
    HttpResponse,
    ServerConnection,
    build_frame,
)

if TYPE_CHECKING:
    from smartsocket.config import Config

PATH = "/smartsocket/live"


class LiveStats:
    """The live stats stream of one server: its readers, and the figures they get
    (``stats``: the server's ``stats()``)."""

    __slots__ = ("readers", "stats")

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats
        self.readers: dict[StatsSubscriber, None] = {}

    def accept(self, config: Config, request: HandshakeRequest) -> HttpResponse | Accept:
        """Admission of a reader: the HTTP refusal, or the upgrade to accept."""
        from smartsocket.server.http import authorized

        if not config.enable_metrics:
            return HttpResponse(404, b"metrics are disabled\n")
        if not authorized(config, request):
            return HttpResponse(
                401, b"stats token required\n", headers={"WWW-Authenticate": "Bearer"}
            )
        headers = {}
        offered = request.headers.get("Sec-WebSocket-Protocol")
        if offered is not None:
            if SUBPROTOCOL not in (p.strip() for p in offered.split(",")):
                return HttpResponse(400, f"this endpoint speaks {SUBPROTOCOL}\n".encode())
            headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
        return Accept(StatsSubscriber(self), headers)

    def push(self) -> None:
        """Send the current stats to every reader: encoded and framed once."""
        frame = build_frame(envelope.encode_event("stats", self.stats()))
        for reader in self.readers:
            reader.send_frame(frame)

    def close_all(self) -> None:
        for reader in list(self.readers):
            reader.close(1001, "server shutting down")


class StatsSubscriber:
    """One dashboard (or other reader) of the live stats."""

    __slots__ = ("_conn", "_feed")

    def __init__(self, feed: LiveStats) -> None:
        self._feed = feed
        self._conn: ServerConnection | None = None

    def on_open(self, conn: ServerConnection) -> None:
        self._conn = conn
        welcome = {"sid": "live-" + secrets.token_urlsafe(6), "protocol": 1, "live": True}
        conn.send_frame(build_frame(envelope.encode_event("$welcome", welcome)))
        conn.send_frame(build_frame(envelope.encode_event("stats", self._feed.stats())))
        self._feed.readers[self] = None

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        pass  # a read-only feed: whatever the reader sends is ignored

    def on_close(self, code: int, reason: str) -> None:
        self._feed.readers.pop(self, None)

    def send_frame(self, frame: bytes) -> None:
        if self._conn is not None:
            self._conn.send_frame(frame)

    def close(self, code: int, reason: str) -> None:
        if self._conn is not None:
            self._conn.close(code, reason)
