"""The connection lifecycle: every open socket, the admitted ones by id, the welcome and the
application's ``on_connection`` handlers, and what a close leaves behind (a held session, the
``disconnect`` handlers). ``Socket`` calls it (through the server) as it opens and closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.handlers import Handler
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.envelope import Event

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.config import Config
    from smartsocket.metrics import Stats
    from smartsocket.recovery.resume import Resumer
    from smartsocket.recovery.store import SessionStore
    from smartsocket.server.admission import Admission
    from smartsocket.server.socket import Socket
    from smartsocket.server.users import Users

logger = logging.getLogger("smartsocket.server")

# Closes after which a session is not held for resuming: the client or the application ended
# it, or it was refused.
_FINAL_CLOSES = frozenset(
    {CloseCode.NORMAL, CloseCode.KICKED, CloseCode.UNAUTHORIZED, CloseCode.RATE_LIMITED,
     CloseCode.POLICY_VIOLATION}
)


class Connections:
    """Open and admitted sockets. ``config``, ``admission``, ``stats`` and ``recovery`` follow
    the server's configuration (``configure``); ``closing`` is set when it shuts down."""

    __slots__ = (
        "admission", "closing", "cluster", "config", "emit_local", "handlers", "open",
        "recovery", "resumer", "sockets", "spawn", "stats", "users",
    )

    def __init__(
        self, sockets: dict[str, Socket], cluster: ClusterNode, spawn: Callable[[Any], None],
        emit_local: Callable[[Socket, str, Any], None], users: Users,
    ) -> None:
        self.sockets = sockets  # admitted, by id
        self.users = users  # admitted, by user (server/users.py)
        self.open: dict[Socket, None] = {}  # every open connection, admitted or not
        self.cluster = cluster
        self.spawn = spawn
        self.emit_local = emit_local  # "disconnect" handlers (EventRouter)
        self.handlers: list[Handler] = []  # on_connection
        self.closing = False
        self.stats: Stats | None = None
        self.recovery: SessionStore | None = None
        self.resumer: Resumer  # set by the server once made (it welcomes through us)
        self.config: Config
        self.admission: Admission

    def configure(
        self, config: Config, admission: Admission, stats: Stats | None,
        recovery: SessionStore | None,
    ) -> None:
        self.config, self.admission = config, admission
        self.stats, self.recovery = stats, recovery

    def on_open(self, socket: Socket) -> None:
        self.open[socket] = None
        if self.admission.open(socket) and socket.authenticated:
            self.resumer.admit(socket)

    def auth_message(self, socket: Socket, packet: Event) -> None:
        self.admission.auth_message(socket, packet)

    def welcome(
        self, socket: Socket, recovered: bool | None,
        replay: list[tuple[bytes, bool]] | None = None, frames: list[bytes] | None = None,
    ) -> None:
        """Welcome an admitted socket (after a resume: then the missed messages, and frames
        its rooms delivered while it resumed), then hand it to the application."""
        self.sockets[socket.id] = socket
        self.users.add(socket)
        if self.stats is not None:
            self.stats.total_connections += 1
        logger.debug(
            "connected %s from %s", socket.id, socket.remote_address,
            extra={"event": "connect", "sid": socket.id, "remote": str(socket.remote_address)},
        )
        socket.send_encoded(self.welcome_payload(socket, recovered), False)
        for payload, binary in replay or ():
            socket.send_encoded(payload, binary)
        send_frame = socket.send_frame
        for frame in frames or ():
            send_frame(frame)
        scope = socket.connection_scope
        handlers = self.handlers if scope is None else scope.connection_handlers
        if not handlers:
            socket.flush_inbox()
            return
        if any(h.is_async for h in handlers):
            socket.hold_inbox()  # hold events until on_connection has registered handlers
            self.spawn(self._run_handlers(socket, handlers))
            return
        for handler in handlers:
            try:
                handler.fn(*(socket,)[: handler.arity])
            except Exception:
                logger.exception("on_connection handler %s failed", handler.name)
                socket.fail(CloseCode.INTERNAL_ERROR, "connection handler failed")
                return
        socket.flush_inbox()

    async def _run_handlers(self, socket: Socket, handlers: list[Handler]) -> None:
        try:
            for handler in handlers:
                result = handler.fn(*(socket,)[: handler.arity])
                if asyncio.iscoroutine(result):
                    await result
        except Exception:
            logger.exception("on_connection handler failed for %s", socket.id)
            socket.fail(CloseCode.INTERNAL_ERROR, "connection handler failed")
            return
        socket.flush_inbox()

    def welcome_payload(self, socket: Socket, recovered: bool | None = None) -> bytes:
        cfg = self.config
        info: dict[str, Any] = {
            "sid": socket.id,
            "token": socket.token,
            "protocol": 1,
            "pingInterval": round(cfg.ping_interval * 1000),
            "pingTimeout": round(cfg.ping_timeout * 1000),
            "maxMessageSize": cfg.max_message_size,
            "ackTimeout": round(cfg.message_timeout * 1000),
        }
        if self.recovery is not None:
            info["recovery"] = round(cfg.recovery_window * 1000)
        if recovered is not None:
            info["recovered"] = recovered
        return envelope.encode_event("$welcome", info)

    def on_close(self, socket: Socket, code: int, reason: str) -> None:
        self.open.pop(socket, None)
        self.resumer.early.pop(socket, None)
        self.admission.close(socket)
        self.users.remove(socket)  # by the socket, not its id (a resume changes the id)
        if self.stats is not None and code == CloseCode.SLOW_CONSUMER:
            self.stats.dropped_slow += 1
        if self.sockets.get(socket.id) is not socket:
            return  # never admitted: the application never saw it
        del self.sockets[socket.id]
        rec = socket.session
        if rec is not None and rec.owner is socket:
            rec.owner = None
            assert self.recovery is not None
            # A shutdown ends sessions, unless the store keeps them for another node.
            if code not in _FINAL_CLOSES and (
                not self.closing or self.recovery.keeps_sessions
            ):
                self.recovery.hold(socket, rec)
            else:
                self.cluster.ended_here(socket.id)
        logger.debug(
            "disconnected %s: %d %s", socket.id, code, reason,
            extra={"event": "disconnect", "sid": socket.id, "code": code, "reason": reason},
        )
        scope = socket.connection_scope
        emit = self.emit_local if scope is None else scope.router.emit_local
        emit(socket, "disconnect", reason or str(code))
