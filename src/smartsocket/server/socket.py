"""One client connection on the server: inbound dispatch, sends, acks, rooms, heartbeat."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from smartsocket.acks import AckTracker
from smartsocket.errors import ConnectionClosed
from smartsocket.handlers import Handler
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.protocol.envelope import AckReply, EnvelopeError, Event, InvalidUTF8
from smartsocket.protocol.names import check_event, name_problem
from smartsocket.security import LimitExceeded
from smartsocket.server import keyed_calls
from smartsocket.server.context import SocketConnection
from smartsocket.server.system_events import system_event as _system_event
from smartsocket.server.users import user_of
from smartsocket.transport import HandshakeRequest

if TYPE_CHECKING:
    from smartsocket.auth.tokens import SubscriptionClaims, TokenClaims
    from smartsocket.recovery.marks import ResumePoint
    from smartsocket.recovery.state import SessionState
    from smartsocket.server.context import SocketContext

__all__ = ["LOCAL_EVENTS", "OWN", "PLAIN", "SHARED", "Socket", "SocketConnection"]

logger = logging.getLogger("smartsocket.server")

PLAIN, SHARED, OWN = 0, 1, 2  # Socket.compression_mode

# Names with a local meaning; a client may not send events with these names.
LOCAL_EVENTS = frozenset({"connect", "disconnect", "error"})

_decode = envelope.decode
_encode_event = envelope.encode_event
_needs_binary = envelope.needs_binary


class Socket:
    """A connected client. Created by the server; the application gets it in
    ``on_connection`` and in every server-level handler."""

    __slots__ = (
        "__weakref__", "_acks", "_auth_timer", "_conn", "_ctx", "_handlers", "_inbox", "_limiter",
        "_rec", "_resuming", "_rooms", "_running", "_send_frame", "authenticated", "close_code",
        "close_reason", "compression_mode", "connected", "data", "id", "identity", "presence",
        "recovered", "request", "token", "token_claims", "user",
    )

    protocol = "native"  # the wire protocol it speaks (stats and metrics count by it)
    # Whether the server's $ping/$pong heartbeat watches it (Socket.IO: Engine.IO's own does).
    heartbeat = True
    # A native client resumes with $resume; a Socket.IO one with the CONNECT's pid and offset.
    resume_point: ResumePoint | None = None

    def __init__(
        self, context: SocketContext, request: HandshakeRequest, *, authenticated: bool = True,
        identity: Any = None,
    ) -> None:
        self._ctx = context  # the server's parts it uses (server/context.py)
        self.request = request
        self.id = context.cluster.new_sid()  # in a cluster: "<node id>.<random>"
        self.token = secrets.token_urlsafe(24)  # session token for resuming (protocol.md)
        self.data: dict[str, Any] = {}
        self.presence: dict[str, Any] = {}  # public info shown in room presence (cluster-wide)
        self.connected = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._rooms: dict[str, None] = {}  # a set, as a dict: 64 bytes empty instead of 216
        self._handlers: dict[str, list[Handler]] | None = None
        self._acks = AckTracker()
        self._conn: SocketConnection | None = None
        self._send_frame: Callable[[bytes], None] = _drop
        # Packets that arrived while an async on_connection handler was still running.
        self._inbox: list[envelope.Packet] | None = None
        # How broadcasts reach this socket: PLAIN frames, the SHARED compressed frame, or
        # compressed by its OWN deflater (context takeover).
        self.compression_mode = PLAIN  # how broadcasts reach it (server/fanout.py)
        # Until authenticated a socket may only send $auth and $ping (server/system_events.py).
        self.authenticated = authenticated
        self.identity = identity
        if identity is not None:
            self.data["identity"] = identity
        # The user it belongs to (server/users.py): from the identity, or server.set_user.
        self.user: str | None = user_of(identity)
        self._auth_timer: asyncio.TimerHandle | None = None
        self._limiter = context.new_limiter()
        self._running = 0  # async handlers that owe this socket an ack
        # Connection state recovery (recovery/): None while recovery_window is 0.
        self._rec: SessionState | None = context.resumer.new_session_state(self)
        self._resuming = False  # waiting for the client's $resume before $welcome
        self.recovered = False  # this connection resumed a dropped session (same id)
        # The verified JWT connection token (server/tokens.py), if one admitted it.
        self.token_claims: TokenClaims | None = None

    def __repr__(self) -> str:
        return f"<Socket {self.id} rooms={sorted(self._rooms)}>"

    # public API

    @property
    def rooms(self) -> frozenset[str]:
        return frozenset(self._rooms)

    def joined_rooms(self) -> list[str]:
        """The rooms it is in, in the order it joined them."""
        return list(self._rooms)

    @property
    def claims(self) -> Mapping[str, Any]:
        """Every claim of the connection token (read-only; empty without one)."""
        claims = self.token_claims
        return claims.claims if claims is not None else _NO_CLAIMS

    @property
    def remote_address(self) -> tuple[Any, ...] | None:
        return self._conn.remote_address if self._conn is not None else None

    @property
    def connection_scope(self) -> Any:
        """Where its ``on_connection`` and ``disconnect`` handlers come from: None, the
        server's; a Socket.IO namespace of the application's own (server/socketio/)."""
        return None

    def on(
        self, event: str, handler: Callable[..., Any] | None = None
    ) -> Callable[..., Any]:
        """Handle ``event`` from this client: ``handler(data)``; its return value is the ack.

        Also ``"disconnect"`` (``handler(reason)``) and ``"error"`` (``handler(exc)``).
        Usable as a decorator. Socket handlers take precedence over server-level ones.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if self._handlers is None:
                self._handlers = {}
            entry = Handler(fn, max_args=1, called_with="(data)")
            self._handlers.setdefault(event, []).append(entry)
            return fn

        return register(handler) if handler is not None else register

    def off(self, event: str, handler: Callable[..., Any] | None = None) -> None:
        """Remove one handler of ``event``, or all of them."""
        if self._handlers is None or event not in self._handlers:
            return
        if handler is None:
            del self._handlers[event]
        else:
            self._handlers[event] = [h for h in self._handlers[event] if h.fn is not handler]

    def send(self, event: str, data: Any = None, *, binary: bool | None = None) -> None:
        """Send ``event`` to this client (fire and forget)."""
        check_event(event)
        if binary is None:
            binary = _needs_binary(data)
        rec = self._rec
        if rec is not None:  # numbered and logged, for replay after a reconnect
            recovery = self._ctx.recovery
            assert recovery is not None
            self._send_payload(recovery.direct_message(rec, event, data, binary), binary)
        else:
            self._send_payload(_encode_event(event, data, binary=binary), binary)

    emit = send

    async def call(
        self, event: str, data: Any = None, *, timeout: float | None = None,
        binary: bool | None = None,
    ) -> Any:
        """Send ``event`` and wait for the client's ack reply (server-to-client ack).

        Raises AckTimeout after ``timeout`` (default: ``message_timeout``), AckError if the
        client answered with an error, ConnectionClosed if the connection closes first.
        """
        check_event(event)
        if not self.connected:
            raise ConnectionClosed(self.close_code, self.close_reason)
        cfg = self._ctx.config
        if len(self._acks) >= cfg.max_pending_acks:
            raise LimitExceeded(
                ErrorCode.TOO_MANY_PENDING, "max_pending_acks calls already wait for this socket"
            )
        if timeout is None:
            timeout = cfg.message_timeout
        if binary is None:
            binary = _needs_binary(data)
        ack_id, future = self._acks.create(event, timeout)
        try:
            payload = _encode_event(event, data, ack_id, binary=binary)
        except BaseException:
            self._acks.forget(ack_id)
            raise
        self._send_payload(payload, binary)
        return await future

    def join(
        self, room: str, *, token: str | SubscriptionClaims | None = None,
        by_server: bool = False,
    ) -> None:
        """Join ``room`` (no-op if already a member).

        With room policies (docs/auth.md) the join is the client's, checked against the
        room's policy (``token``: a subscription token the client sent for it), unless
        ``by_server`` (the application's own decision: never refused by a policy).

        Raises LimitExceeded (an AckError: in a handler it becomes the ack error) with code
        ``invalid_name``, ``room_limit`` or ``forbidden``.
        """
        ctx = self._ctx
        cfg = ctx.config
        problem = name_problem("room", room, cfg.max_name_length)
        if problem is not None:
            raise LimitExceeded(ErrorCode.INVALID_NAME, problem)
        if room in self._rooms or not self.connected:
            return
        if len(self._rooms) >= cfg.max_rooms_per_socket:
            raise LimitExceeded(
                ErrorCode.ROOM_LIMIT, f"a socket may be in {cfg.max_rooms_per_socket} rooms"
            )
        gate = ctx.gate
        held_until = None  # the end of a subscription token's grant
        if gate.active and not by_server:
            held_until = gate.check_join(self, room, token)
        if ctx.registry.add(room, self, self._send_frame):
            self._rooms[room] = None
            rec = self._rec
            if rec is not None:  # a resume replays what the room got from here on
                recovery = ctx.recovery
                assert recovery is not None
                rec.joined[room] = recovery.position(room)
            if held_until is not None:
                ctx.tokens.hold_room(self, room, held_until)

    def publish(
        self, room: str, event: str, data: Any = None, *, include_self: bool = True,
        binary: bool | None = None,
    ) -> int:
        """Broadcast ``event`` to ``room`` on this client's behalf: the room's policy decides
        whether it may (``publish``: members, grant, server; LimitExceeded ``forbidden``).
        Returns the deliveries made on this node."""
        ctx = self._ctx
        if ctx.gate.active:
            ctx.gate.check_publish(self, room)
        return ctx.room(room).broadcast(
            event, data, exclude=None if include_self else self, binary=binary
        )

    def send_system(self, event: str, data: Any) -> None:
        """Send a protocol event (a ``$`` name, docs/protocol.md section 3)."""
        self._send_payload(_encode_event(event, data), False)

    def set_presence(self, info: dict[str, Any]) -> None:
        """Change this socket's public presence info (``socket.presence``, e.g. a status):
        the members of its presence rooms, on every node, get ``$presence`` ``updated``."""
        self.presence = info
        if self.connected:
            self._ctx.cluster.presence_state.updated(self, self._rooms)

    def leave(self, room: str) -> None:
        self._ctx.tokens.drop_room(self, room)
        if self._ctx.registry.discard(room, self):
            self._rooms.pop(room, None)
            if self._rec is not None:
                self._rec.joined.pop(room, None)

    def room_removed(self, room: str) -> None:
        """The server removed ``room`` with every member (``server.remove_room``)."""
        self._rooms.pop(room, None)

    def disconnect(self, code: int = CloseCode.KICKED, reason: str = "") -> None:
        """Close the connection (default 4000: kicked by the application)."""
        if self._conn is not None:
            self._conn.close(code, reason)

    # resuming (recovery.resume.ResumingSocket)

    @property
    def session(self) -> SessionState | None:
        """Its recovery session (None while ``recovery_window`` is 0)."""
        return self._rec

    @session.setter
    def session(self, state: SessionState | None) -> None:
        self._rec = state

    @property
    def resuming(self) -> bool:
        return self._resuming

    def await_resume(self, timeout: float, on_timeout: Callable[[], None]) -> None:
        self._resuming = True
        self._inbox = []  # what it sends before $resume waits for the session
        self._auth_timer = asyncio.get_running_loop().call_later(timeout, on_timeout)

    def stop_resuming(self) -> None:
        self._resuming = False
        self.clear_deadline()

    def enter_room(self, room: str, sink: Callable[[bytes], None]) -> bool:
        if not self._ctx.registry.add(room, self, sink):
            return False
        self._rooms[room] = None
        return True

    def exit_room(self, room: str) -> None:
        self._ctx.registry.discard(room, self)
        self._rooms.pop(room, None)

    def connect_room(self, room: str) -> None:
        self._ctx.registry.set_sender(room, self, self._send_frame)

    def abandon(self, code: int, reason: str) -> None:
        self.on_close(code, reason)
        if self._conn is not None:
            self._conn.abort()

    # transport callbacks (ConnectionHandler)

    def on_open(self, conn: SocketConnection) -> None:
        self._conn = conn
        self._send_frame = conn.send_frame
        deflater = conn.deflater
        if deflater is not None:
            shareable = deflater.stateless and deflater.window_bits == 15
            self.compression_mode = SHARED if shareable else OWN
        self.connected = True
        self._ctx.connections.on_open(self)

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        ctx = self._ctx
        stats = ctx.stats
        if stats is not None:
            stats.messages_in += 1
            stats.bytes_in += len(payload)
            stats.bytes_in_wire += wire_size
        # Every message counts against the socket's rate limits, whatever it is: events, ack
        # replies (known or not), messages that do not decode, before authentication too.
        # Otherwise garbage is answered as fast as it comes (issue 14: 186,000 $error/s).
        limiter = self._limiter
        try:
            packet = _decode(payload, binary=binary)
        except InvalidUTF8 as exc:
            self.fail(CloseCode.INVALID_TEXT, str(exc))
            return
        except EnvelopeError as exc:
            if limiter is not None:
                now = ctx.clock()
                wait = limiter.check("", len(payload), now)
                if wait:
                    self._rate_limited(None, exc.ack_id, binary, wait, now)
                    return
            self.refuse(exc.code, exc.message, ack_id=exc.ack_id, binary=binary)
            return
        if limiter is not None:
            now = ctx.clock()
            if type(packet) is Event:
                wait = limiter.check(packet.name, len(payload), now)
                if wait:
                    self._rate_limited(packet.name, packet.ack_id, packet.binary, wait, now)
                    return
            else:
                wait = limiter.check("", len(payload), now)
                if wait:  # a late reply is dropped: the call it answers times out
                    self._rate_limited(None, None, binary, wait, now)
                    return
        inbox = self._inbox
        if inbox is not None and not (self._resuming and _is_resume(packet)):
            inbox.append(packet)
        else:
            self._handle(packet)

    def on_close(self, code: int, reason: str) -> None:
        if self.close_code is not None:
            return  # closed already (a resuming connection took this session over)
        self.connected = False
        self.close_code = code
        self.close_reason = reason
        self._send_frame = _drop
        self._acks.fail_all(ConnectionClosed(code, reason))
        ctx = self._ctx
        ctx.abuse.forget(self)
        registry = ctx.registry
        for room in self._rooms:
            registry.discard(room, self)
        ctx.connections.on_close(self, code, reason)
        self._rooms.clear()

    # dispatch

    def _handle(self, packet: envelope.Packet) -> None:
        if type(packet) is Event:
            name = packet.name
            if name[0] == "$":
                _system_event(self, self._ctx, packet)
            elif not self.authenticated:
                self.refuse(
                    ErrorCode.UNAUTHORIZED, "authenticate with $auth first",
                    event=name, ack_id=packet.ack_id, binary=packet.binary,
                )
            elif (
                problem := name_problem("event", name, self._ctx.config.max_name_length)
            ) is not None:
                self.refuse(
                    ErrorCode.INVALID_NAME, problem, ack_id=packet.ack_id, binary=packet.binary,
                )
            elif name in LOCAL_EVENTS:
                self.refuse(
                    ErrorCode.RESERVED_EVENT, f"{name!r} is a local event name",
                    event=name, ack_id=packet.ack_id, binary=packet.binary,
                )
            elif packet.meta is None or keyed_calls.admit(self, self._ctx, packet):
                self._ctx.dispatch(self, packet)
        else:
            assert type(packet) is AckReply
            if not self._acks.resolve_reply(packet):
                self.refuse(
                    ErrorCode.UNKNOWN_ACK, f"no pending call with id {packet.ack_id}",
                    ack_id=None,
                )

    # Socket's own dispatch, for a subclass that overrides ``_handle`` (no super() per call).
    _handle_native = _handle

    def handlers_for(self, event: str) -> list[Handler] | None:
        """This socket's own handlers of ``event`` (``on``), or None: the server's apply."""
        if self._handlers is not None:
            handlers = self._handlers.get(event)
            if handlers:
                return handlers
        return None

    def hold_inbox(self) -> None:
        """Hold what it sends until ``flush_inbox`` (an async ``on_connection`` handler is
        still registering the handlers)."""
        if self._inbox is None:
            self._inbox = []

    def flush_inbox(self) -> None:
        """Handle what was held, in order, and stop holding."""
        inbox, self._inbox = self._inbox, None
        for packet in inbox or ():
            if not self.connected:
                break
            self._handle(packet)

    # sending

    def send_own_compressed(self, payload: bytes, binary: bool) -> int:
        """A broadcast payload through this socket's own deflater (``compression_mode`` OWN:
        context takeover or a smaller window); the bytes written."""
        assert self._conn is not None
        return self._conn.send_message(payload, binary)

    def _send_payload(self, payload: bytes, binary: bool) -> None:
        conn = self._conn
        if conn is None or not self.connected:
            return
        wire = conn.send_message(payload, binary)
        stats = self._ctx.stats
        if stats is not None:
            stats.record_out(1, len(payload), wire)

    # An encoded message (welcome, replay, $ping, a cluster's direct send) to this client.
    send_encoded = _send_payload  # (a subclass that overrides _send_payload rebinds it)

    @property
    def send_frame(self) -> Callable[[bytes], None]:
        """Writes a ready frame to this client (what rooms and broadcasts hold for it)."""
        return self._send_frame

    @property
    def connection(self) -> SocketConnection | None:
        return self._conn

    def reply(self, ack_id: int, result: Any, *, binary: bool = False) -> None:
        """Send the ack reply for ``ack_id`` (done for you when a handler returns). It goes in
        a binary frame if the request came in one (``binary``) or the result holds bytes."""
        rec = self._rec
        if rec is not None and rec.replies is not None and ack_id in rec.replies.running:
            keyed_calls.settle(self, self._ctx, rec, ack_id, result, None, binary)
            return
        self.answer(ack_id, result, binary)

    def answer(self, ack_id: int, result: Any, binary: bool) -> None:
        """Send the ack reply for ``ack_id`` now (``reply`` first settles a keyed call)."""
        binary = binary or _needs_binary(result)
        try:
            payload = envelope.encode_ack(ack_id, result, binary=binary)
        except envelope.ENCODE_ERRORS as exc:
            logger.warning("cannot encode the ack reply for %s: %r", self.id, exc)
            self.reject(
                ErrorCode.INTERNAL_ERROR, "the reply could not be encoded", ack_id=ack_id,
                binary=binary,
            )
            return
        self._send_payload(payload, binary)

    def reject(
        self, code: str, message: str, *, event: str | None = None, ack_id: int | None = None,
        retry_after: float | None = None, binary: bool = False,
    ) -> None:
        """Refuse something the client sent: an ack error if it waits for an ack, else $error."""
        rec = self._rec
        if ack_id is not None and rec is not None and keyed_calls.is_keyed(rec, ack_id):
            failure = (code, message, retry_after)
            keyed_calls.settle(self, self._ctx, rec, ack_id, None, failure, binary)
            return
        if ack_id is not None:
            payload = envelope.encode_ack_error(
                ack_id, code, message, binary=binary, retry_after=retry_after
            )
        else:
            payload = envelope.encode_error(code, message, event=event, retry_after=retry_after)
            binary = False
        stats = self._ctx.stats
        if stats is not None:
            stats.errors_sent += 1
        self._send_payload(payload, binary)

    def refuse(
        self, code: str, message: str, *, event: str | None = None, ack_id: int | None = None,
        binary: bool = False,
    ) -> None:
        """``reject`` a message that breaks the protocol; it counts against the error-rate
        rule (server/abuse.py)."""
        self.reject(code, message, event=event, ack_id=ack_id, binary=binary)
        self._ctx.abuse.refused(self, self._ctx.clock)

    def _rate_limited(
        self, event: str | None, ack_id: int | None, binary: bool, wait: float, now: int
    ) -> None:
        self.reject(
            ErrorCode.RATE_LIMITED, "too many messages; slow down", event=event,
            ack_id=ack_id, retry_after=round(wait, 3), binary=binary,
        )
        self._ctx.abuse.rate_limited(self, event, wait, now)

    def fail(self, code: int, reason: str) -> None:
        logger.info(
            "closing %s: %s (%d)", self.id, reason, code,
            extra={"event": "close", "sid": self.id, "code": code, "reason": reason},
        )
        if self._conn is not None:
            self._conn.close(code, reason)

    # admission: until admitted (authenticated, or resumed) it has a deadline

    def set_deadline(self, delay: float, expired: Callable[[Socket], None]) -> None:
        self._auth_timer = asyncio.get_running_loop().call_later(delay, expired, self)

    def clear_deadline(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    # async handlers that owe this socket an ack (EventRouter)

    def call_started(self, limit: int) -> bool:
        """Count one more; False (not counted) when ``limit`` run already."""
        if self._running >= limit:
            return False
        self._running += 1
        return True

    def call_finished(self) -> None:
        self._running -= 1


def _is_resume(packet: envelope.Packet) -> bool:
    return type(packet) is Event and packet.name == "$resume"


_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def _drop(frame: bytes) -> None:
    """Where sends go once the socket is closed."""

