"""The Socket.IO endpoint (``socketio_path``, default ``/socket.io/``): requests to it, the
Engine.IO sessions by sid, and the counters of the Socket.IO side.

A WebSocket request without a sid opens a session on that WebSocket (Engine.IO v4, or v3 for
older clients). The checks of the request (``EIO``, ``transport``) are the sans-I/O core's
(``protocol/socketio/request.py``); their refusals are Engine.IO's JSON errors.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from smartsocket.config import Config
from smartsocket.protocol.socketio import (
    EngineOptions,
    EngineSession,
    RequestRefused,
    SocketIOConnection,
    check_request,
    error_body,
)
from smartsocket.protocol.socketio.errors import EngineErrorCode
from smartsocket.protocol.socketio.session import WEBSOCKET
from smartsocket.server.socketio.session import ClientSession, Counters
from smartsocket.server.socketio.socket import FrameTranslator, SocketIOSocket
from smartsocket.transport import Accept, HandshakeRequest, HttpResponse, ServerConnection

logger = logging.getLogger("smartsocket.socketio")

_JSON = "application/json"
OpenSocket = Callable[[HandshakeRequest, type[SocketIOSocket]], "HttpResponse | Any"]


class _WebSocketHandler:
    """The transport's handler of a session's WebSocket (``transport.ConnectionHandler``)."""

    __slots__ = ("_session",)

    def __init__(self, session: ClientSession) -> None:
        self._session = session

    def on_open(self, conn: ServerConnection) -> None:
        self._session.websocket_opened(conn)

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        self._session.websocket_message(payload, binary)

    def on_close(self, code: int, reason: str) -> None:
        self._session.websocket_closed(code, reason)


def engine_options(config: Config) -> EngineOptions:
    """The Engine.IO options under their Socket.IO names, from the server's config."""
    return EngineOptions(
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        max_payload=config.max_message_size,
        connect_timeout=config.socketio_connect_timeout,
        max_buffered=config.max_write_buffer,
    )


class SocketIOEndpoint:
    """Socket.IO clients of one server. ``open_socket`` is the server's admission
    (``SmartSocket.open_socket``)."""

    __slots__ = ("_open_socket", "config", "counters", "options", "path", "sessions", "translator")

    def __init__(self, config: Config, open_socket: OpenSocket) -> None:
        self._open_socket = open_socket
        self.sessions: dict[str, ClientSession] = {}
        self.translator = FrameTranslator()
        self.counters = Counters()
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.options = engine_options(config)
        self.path = config.socketio_path.rstrip("/") or "/"

    def handles(self, path: str) -> bool:
        return self.config.socketio and (path.rstrip("/") or "/") == self.path

    def route(self, request: HandshakeRequest) -> HttpResponse | Accept:
        query = {name: values[-1] for name, values in request.query.items()}
        try:
            checked = check_request("GET", query, transports=(WEBSOCKET,))
        except RequestRefused as exc:
            return HttpResponse(400, error_body(exc.code), _JSON)
        if not request.is_upgrade or checked.sid is not None:
            # HTTP long-polling (and the upgrade from it) is not served yet.
            return HttpResponse(400, error_body(EngineErrorCode.UNKNOWN_TRANSPORT), _JSON)
        if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            return HttpResponse(426, b"WebSocket version 13 required\n",
                                headers={"Sec-WebSocket-Version": "13"})
        if len(self.sessions) >= self.config.max_connections:
            return HttpResponse(503, b"server full\n", headers={"Retry-After": "5"})
        return Accept(_WebSocketHandler(self._new_session(request, checked.eio, WEBSOCKET)))

    def _new_session(self, request: HandshakeRequest, eio: int, transport: str) -> ClientSession:
        sid = secrets.token_urlsafe(15)
        loop = asyncio.get_running_loop()
        engine = EngineSession(sid, transport=transport, options=self.options, clock=loop.time,
                               eio=eio)
        sio = SocketIOConnection(
            protocol=5 if eio >= 4 else 4, max_attachment_bytes=self.config.max_message_size
        )
        session = ClientSession(
            engine, sio, request, open_socket=self._open, translator=self.translator,
            forget=self._forget, counters=self.counters,
        )
        self.sessions[sid] = session
        self.counters.sessions_total += 1
        return session

    def _open(self, request: HandshakeRequest) -> HttpResponse | SocketIOSocket:
        result = self._open_socket(request, SocketIOSocket)
        assert isinstance(result, HttpResponse | SocketIOSocket)
        return result

    def _forget(self, sid: str) -> None:
        self.sessions.pop(sid, None)

    def close_all(self) -> None:
        """Shutting down: end every session (their sockets see 1001, clients reconnect)."""
        for session in list(self.sessions.values()):
            session.abort()

    def connected(self) -> int:
        """Sessions with a socket the application sees."""
        return sum(1 for s in self.sessions.values() if s.admitted_socket)

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "sessions": len(self.sessions), "connections": self.connected(),
            "totalSessions": c.sessions_total, "packetsIn": c.packets_in,
            "packetsOut": c.packets_out, "connectErrors": c.connect_errors,
        }
