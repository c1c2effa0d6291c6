"""The Socket.IO endpoint (``socketio_path``, default ``/socket.io/``): requests to it, the
Engine.IO sessions by sid, and the counters of the Socket.IO side.

A WebSocket request without a sid opens a session on that WebSocket (Engine.IO v4, or v3 for
older clients); a polling GET without one opens a polling session (``polling.py``), which a
WebSocket with its sid may then upgrade (probe, upgrade, noop). The checks of the request
(``EIO``, ``transport``, method) are the sans-I/O core's (``protocol/socketio/request.py``);
their refusals are Engine.IO's JSON errors.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from smartsocket.config import Config
from smartsocket.http_requests import HttpRequest, Serve
from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.socketio import (
    EngineIOError,
    EngineOptions,
    EngineSession,
    RequestRefused,
    SocketIOConnection,
    check_request,
)
from smartsocket.protocol.socketio.errors import EngineErrorCode
from smartsocket.protocol.socketio.session import POLLING, WEBSOCKET
from smartsocket.security import parse_origins
from smartsocket.server.dispatch import EventRouter
from smartsocket.server.socketio import polling
from smartsocket.server.socketio.budget import SessionBudget
from smartsocket.server.socketio.deadlines import Deadlines
from smartsocket.server.socketio.namespace import Namespace
from smartsocket.server.socketio.relay import ClusterLink, PollRelay
from smartsocket.server.socketio.session import ClientSession, Counters
from smartsocket.server.socketio.socket import FrameTranslator, SocketIOSocket
from smartsocket.transport import Accept, HandshakeRequest, HttpResponse, ServerConnection

logger = logging.getLogger("smartsocket.socketio")

_JSON = "application/json"
OpenSocket = Callable[[HandshakeRequest, type[SocketIOSocket]], "HttpResponse | Any"]


class _WebSocketHandler:
    """The transport's handler of a session's WebSocket (``transport.ConnectionHandler``)."""

    __slots__ = ("_session", "on_message")

    def __init__(self, session: ClientSession) -> None:
        self._session = session
        # Every message goes straight to the session: no call of ours in between.
        self.on_message: Callable[[bytes | memoryview, bool, int], None] = (
            session.websocket_message
        )

    def on_open(self, conn: ServerConnection) -> None:
        self._session.websocket_opened(conn)

    def on_close(self, code: int, reason: str) -> None:
        self._session.websocket_closed(code, reason)


class _ProbeHandler:
    """A WebSocket upgrading a polling session: the probe, then (once upgraded) its
    transport."""

    __slots__ = ("_conn", "_session")

    def __init__(self, session: ClientSession) -> None:
        self._session = session
        self._conn: ServerConnection | None = None

    def on_open(self, conn: ServerConnection) -> None:
        self._conn = conn
        try:
            self._session.probe_opened(conn)
        except EngineIOError:  # closed meanwhile, or upgrading already
            conn.close(CloseCode.POLICY_VIOLATION, "cannot upgrade this session")

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        assert self._conn is not None
        self._session.probe_message(self._conn, payload, binary)

    def on_close(self, code: int, reason: str) -> None:
        if self._conn is not None:
            self._session.probe_closed(self._conn, code, reason)


def engine_options(config: Config) -> EngineOptions:
    """The Engine.IO options under their Socket.IO names, from the server's config."""
    return EngineOptions(
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        max_payload=config.max_message_size,
        connect_timeout=config.socketio_connect_timeout,
        max_buffered=config.max_write_buffer,
        max_packets_per_post=config.socketio_max_packets_per_post,
    )


class SocketIOEndpoint:
    """Socket.IO clients of one server. ``open_socket`` is the server's admission
    (``SmartSocket.open_socket``)."""

    __slots__ = (
        "_clock", "_ips", "_loop_time", "_open_socket", "_per_ip", "_sockets", "_sockets_at",
        "config", "counters", "deadlines",
        "namespaces", "offsets", "options", "origins", "path", "relay", "sessions", "translator",
    )

    def __init__(
        self, config: Config, open_socket: OpenSocket, cluster: ClusterLink | None = None, *,
        sockets: Callable[[], int] = lambda: 0, sockets_at: Callable[[Any], int] = lambda ip: 0,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._open_socket = open_socket
        self._clock = clock  # the rate limits' (integer ns): the server's, tests replace it
        # The server's open sockets (native and Socket.IO), in all and of one address: a
        # session without a socket counts beside them against max_connections(_per_ip).
        self._sockets = sockets
        self._sockets_at = sockets_at
        self.sessions: dict[str, ClientSession] = {}
        self.deadlines = Deadlines(self.sessions)  # every session's heartbeat and timeouts
        # The sessions' clock: one bound method for all (one each was 64 bytes per session).
        self._loop_time: tuple[asyncio.AbstractEventLoop, Callable[[], float]] | None = None
        # Polling requests for sessions of other nodes go through the cluster (relay.py).
        self.relay = PollRelay(cluster, self.sessions) if cluster is not None else None
        self.translator = FrameTranslator()
        self.counters = Counters()
        self._per_ip: dict[Any, int] = {}  # sessions without a socket, by client address
        self._ips: dict[str, Any] = {}  # each such session's address
        self.namespaces: dict[str, Namespace] = {}  # the application's own, by name
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.options = engine_options(config)
        self.origins = parse_origins(config.allowed_origins)
        for namespace in self.namespaces.values():
            namespace.router.config = config
        self.path = config.socketio_path.rstrip("/") or "/"
        # Connection-state recovery (recovery/marks.py): offsets on events, pid in CONNECT.
        self.offsets = config.recovery_window > 0 and config.socketio_recovery
        if self.relay is not None:
            self.relay.configure(config.ping_interval + config.ping_timeout)

    def handles(self, path: str) -> bool:
        return self.config.socketio and (path.rstrip("/") or "/") == self.path

    def route(self, request: HandshakeRequest) -> HttpResponse | Accept | Serve:
        cors = polling.cors_headers(request.headers, self.origins)
        if cors is None:
            return polling.engine_error(EngineErrorCode.FORBIDDEN, 403, {})
        if request.method == "OPTIONS":
            return polling.preflight(request.headers, cors)
        query = {name: values[-1] for name, values in request.query.items()}
        try:
            checked = check_request(request.method, query)
        except RequestRefused as exc:
            return polling.engine_error(exc.code, 400, cors)
        if request.is_upgrade:
            return self._upgrade(request, checked.eio, checked.transport, checked.sid)
        if checked.transport != POLLING:
            return polling.engine_error(EngineErrorCode.BAD_REQUEST, 400, cors)

        def errors(status: int, reason: str) -> HttpResponse:
            return polling.engine_error(EngineErrorCode.BAD_REQUEST, status, cors)

        if checked.sid is None:
            if self._full():
                return HttpResponse(503, b"server full\n", headers={"Retry-After": "5", **cors})

            def new_session(served: HttpRequest) -> ClientSession | None:
                session = self._new_session(request, checked.eio, POLLING)
                if not self.claim(session.sid, served.peer):
                    self.forget(session.sid)
                    return None
                session.polling_opened(served.peer)
                return session

            return Serve(partial(polling.handshake, new_session=new_session, cors=cors),
                         errors=errors)
        session = self.sessions.get(checked.sid)
        if session is None:
            owner = self.relay.owner(checked.sid) if self.relay is not None else None
            if owner is None:
                return polling.engine_error(EngineErrorCode.UNKNOWN_SID, 400, cors)
            assert self.relay is not None
            return Serve(partial(self.relay.forward, owner=owner, sid=checked.sid, cors=cors),
                         max_body=self.options.max_payload, errors=errors)
        if checked.method == "GET":
            return Serve(partial(polling.get, session=session, cors=cors), errors=errors)
        return Serve(partial(polling.post, session=session, cors=cors),
                     max_body=self.options.max_payload, errors=errors)

    def _full(self) -> bool:
        return self.pending + self._sockets() >= self.config.max_connections

    @property
    def pending(self) -> int:
        """Sessions without a socket (they count against ``max_connections``)."""
        return len(self._ips)

    def pending_at(self, ip: Any) -> int:
        """Sessions without a socket from address ``ip`` (``max_connections_per_ip``)."""
        return self._per_ip.get(ip, 0)

    def _upgrade(
        self, request: HandshakeRequest, eio: int, transport: str, sid: str | None
    ) -> HttpResponse | Accept:
        if transport != WEBSOCKET:
            return polling.engine_error(EngineErrorCode.BAD_REQUEST, 400, {})
        if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            return HttpResponse(426, b"WebSocket version 13 required\n",
                                headers={"Sec-WebSocket-Version": "13"})
        if sid is not None:
            session = self.sessions.get(sid)
            if session is None:
                return polling.engine_error(EngineErrorCode.UNKNOWN_SID, 400, {})
            return Accept(_ProbeHandler(session))
        if self._full():
            return HttpResponse(503, b"server full\n", headers={"Retry-After": "5"})
        return Accept(_WebSocketHandler(self._new_session(request, eio, WEBSOCKET)))

    def _new_session(self, request: HandshakeRequest, eio: int, transport: str) -> ClientSession:
        sid = self.relay.new_sid() if self.relay is not None else secrets.token_urlsafe(15)
        loop = asyncio.get_running_loop()
        if self._loop_time is None or self._loop_time[0] is not loop:
            self._loop_time = (loop, loop.time)
        engine = EngineSession(sid, transport=transport, options=self.options,
                               clock=self._loop_time[1], eio=eio)
        config = self.config
        sio = SocketIOConnection(
            protocol=5 if eio >= 4 else 4, max_attachments=config.socketio_max_attachments,
            max_attachment_bytes=config.max_message_size,
        )
        session = ClientSession(
            engine, sio, request, host=self, translator=self.translator, counters=self.counters,
            offsets=self.offsets and eio >= 4,
            max_refusals=self.config.socketio_max_connect_refusals,
            budget=SessionBudget(config, self._clock),
        )
        self.sessions[sid] = session
        self.counters.sessions_total += 1
        return session

    # SessionHost (session.py)

    def open_socket_for(self, request: HandshakeRequest) -> HttpResponse | SocketIOSocket:
        result = self._open_socket(request, SocketIOSocket)
        assert isinstance(result, HttpResponse | SocketIOSocket)
        return result

    def claim(self, sid: str, remote: Any) -> bool:
        """Counts a new session against ``max_connections_per_ip``, beside the address's
        sockets (False: over it). Its first socket takes its place (``count``)."""
        ip = remote[0] if remote else None
        limit = self.config.max_connections_per_ip
        if limit and self._per_ip.get(ip, 0) + self._sockets_at(ip) >= limit:
            logger.info("too many Socket.IO sessions from %s", ip,
                        extra={"event": "limit", "limit": "connections_per_ip", "ip": str(ip)})
            return False
        self.count(sid, remote, True)
        return True

    def count(self, sid: str, remote: Any, counted: bool) -> None:
        """Whether session ``sid`` counts as a connection itself: while it has no socket
        (no limit checked here: admission checks its sockets)."""
        if counted and sid not in self._ips:
            ip = self._ips[sid] = remote[0] if remote else None
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        elif not counted and sid in self._ips:
            ip = self._ips.pop(sid)
            count = self._per_ip.get(ip, 0) - 1
            if count > 0:
                self._per_ip[ip] = count
            else:
                self._per_ip.pop(ip, None)

    def forget(self, sid: str) -> None:
        self.sessions.pop(sid, None)
        self.count(sid, None, False)

    def close_all(self) -> None:
        """Shutting down: end every session (their sockets see 1001, clients reconnect)."""
        for session in list(self.sessions.values()):
            session.abort()
        if self.relay is not None:
            self.relay.close()

    def namespace(self, name: str, router: Callable[[], EventRouter]) -> Namespace:
        """The namespace ``name`` of the application's own (made on first use)."""
        if not name.startswith("/") or name == "/" or "," in name or "?" in name:
            raise ValueError(f"a namespace is a path like '/admin' (not '/'), got {name!r}")
        found = self.namespaces.get(name)
        if found is None:
            found = self.namespaces[name] = Namespace(name, router())
        return found

    def connected(self) -> int:
        """Sessions with a socket the application sees."""
        return sum(s.connected_sockets for s in self.sessions.values())

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "sessions": len(self.sessions), "connections": self.connected(),
            "totalSessions": c.sessions_total, "packetsIn": c.packets_in,
            "packetsOut": c.packets_out, "connectErrors": c.connect_errors,
        }
