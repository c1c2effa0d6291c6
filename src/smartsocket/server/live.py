"""``/smartsocket/live``: a WebSocket that streams the stats once a second (the dashboard's feed).

It speaks protocol v1 (``$welcome``, then ``["stats", {...}]`` every second) so any client can
read it, and it is separate from the application's sockets: it is not counted in
``connections``, sees no events, and needs ``stats_token`` when one is set.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from smartsocket.protocol import SUBPROTOCOL, envelope
from smartsocket.transport import (
    Accept,
    HandshakeRequest,
    HttpResponse,
    ServerConnection,
    build_frame,
)

if TYPE_CHECKING:
    from smartsocket.server.app import SmartSocket

PATH = "/smartsocket/live"


class StatsSubscriber:
    """One dashboard (or other reader) of the live stats."""

    __slots__ = ("_conn", "_server")

    def __init__(self, server: SmartSocket) -> None:
        self._server = server
        self._conn: ServerConnection | None = None

    def on_open(self, conn: ServerConnection) -> None:
        self._conn = conn
        welcome = {"sid": "live-" + secrets.token_urlsafe(6), "protocol": 1, "live": True}
        conn.send_frame(build_frame(envelope.encode_event("$welcome", welcome)))
        conn.send_frame(build_frame(envelope.encode_event("stats", self._server.stats())))
        self._server._stats_subscribers[self] = None

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        pass  # a read-only feed: whatever the reader sends is ignored

    def on_close(self, code: int, reason: str) -> None:
        self._server._stats_subscribers.pop(self, None)


def accept(server: SmartSocket, request: HandshakeRequest) -> HttpResponse | Accept:
    from smartsocket.server.http import authorized

    if not server.config.enable_metrics:
        return HttpResponse(404, b"metrics are disabled\n")
    if not authorized(server, request):
        return HttpResponse(401, b"stats token required\n", headers={"WWW-Authenticate": "Bearer"})
    headers = {}
    offered = request.headers.get("Sec-WebSocket-Protocol")
    if offered is not None:
        if SUBPROTOCOL not in (p.strip() for p in offered.split(",")):
            return HttpResponse(400, f"this endpoint speaks {SUBPROTOCOL}\n".encode())
        headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
    return Accept(StatsSubscriber(server), headers)


def close_all(server: SmartSocket) -> None:
    for subscriber in list(server._stats_subscribers):
        if subscriber._conn is not None:
            subscriber._conn.close(1001, "server shutting down")


def push(server: SmartSocket) -> None:
    """Send the current stats to every subscriber: encoded and framed once."""
    frame = build_frame(envelope.encode_event("stats", server.stats()))
    for subscriber in server._stats_subscribers:
        if subscriber._conn is not None:
            subscriber._conn.send_frame(frame)
