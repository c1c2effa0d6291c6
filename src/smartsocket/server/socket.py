"""One client connection on the server: inbound dispatch, sends, acks, rooms, heartbeat."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from smartsocket.acks import AckTracker
from smartsocket.errors import ConnectionClosed
from smartsocket.handlers import Handler
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.protocol.envelope import AckReply, EnvelopeError, Event, InvalidUTF8
from smartsocket.protocol.names import check_event, name_problem
from smartsocket.security import LimitExceeded, TokenBucket
from smartsocket.server.recovery import Replies
from smartsocket.transport import HandshakeRequest

if TYPE_CHECKING:
    from smartsocket.compression import MessageDeflater
    from smartsocket.server.app import SmartSocket
    from smartsocket.server.recovery import SessionState

logger = logging.getLogger("smartsocket.server")

PLAIN, SHARED, OWN = 0, 1, 2  # Socket.compression_mode

# Names with a local meaning; a client may not send events with these names.
LOCAL_EVENTS = frozenset({"connect", "disconnect", "error"})



class SocketConnection(Protocol):
    """What a Socket and the server use of its connection: ``transport.ServerConnection``
    natively; the bridges of smartsocket.asgi and smartsocket.integrations implement it too
    (with ``deflater = None``: broadcasts only ever hand them plain frames)."""

    @property
    def closed(self) -> bool: ...

    @property
    def remote_address(self) -> tuple[Any, ...] | None: ...

    @property
    def deflater(self) -> MessageDeflater | None: ...

    def send_frame(self, frame: bytes) -> None: ...

    def send_message(self, payload: bytes, binary: bool = False) -> int: ...

    def close(self, code: int = ..., reason: str = "") -> None: ...

    def abort(self) -> None: ...


_decode = envelope.decode
_encode_event = envelope.encode_event
_needs_binary = envelope.needs_binary


class Socket:
    """A connected client. Created by the server; the application gets it in
    ``on_connection`` and in every server-level handler."""

    __slots__ = (
        "__weakref__",
        "_acks",
        "_auth_timer",
        "_conn",
        "_errors",
        "_handlers",
        "_inbox",
        "_limiter",
        "_ping_sent_at",
        "_ping_value",
        "_rec",
        "_resuming",
        "_rooms",
        "_running",
        "_send_frame",
        "_server",
        "_strikes",
        "authenticated",
        "close_code",
        "close_reason",
        "compression_mode",
        "connected",
        "data",
        "id",
        "identity",
        "presence",
        "recovered",
        "request",
        "token",
    )

    def __init__(
        self, server: SmartSocket, request: HandshakeRequest, *, authenticated: bool = True,
        identity: Any = None,
    ) -> None:
        self._server = server
        self.request = request
        self.id = server._cluster.new_sid()  # in a cluster: "<node id>.<random>"
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
        self._ping_value: int | None = None
        self._ping_sent_at = 0.0
        # How broadcasts reach this socket: PLAIN frames, the SHARED compressed frame, or
        # compressed by its OWN deflater (context takeover).
        self.compression_mode = PLAIN  # how broadcasts reach it (server/fanout.py)
        # Until authenticated a socket may only send $auth and $ping (server/app.py).
        self.authenticated = authenticated
        self.identity = identity
        if identity is not None:
            self.data["identity"] = identity
        self._auth_timer: asyncio.TimerHandle | None = None
        self._limiter = server._new_limiter()
        self._strikes: TokenBucket | None = None  # made on the first refusal
        self._errors: TokenBucket | None = None  # the error-rate rule, made on the first error
        self._running = 0  # async handlers that owe this socket an ack
        # Connection state recovery (server/recovery.py): None while recovery_window is 0.
        self._rec: SessionState | None = server._resumer.new_session_state(self)
        self._resuming = False  # waiting for the client's $resume before $welcome
        self.recovered = False  # this connection resumed a dropped session (same id)

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
            recovery = self._server._recovery
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
        if len(self._acks) >= self._server.config.max_pending_acks:
            raise LimitExceeded(
                ErrorCode.TOO_MANY_PENDING, "max_pending_acks calls already wait for this socket"
            )
        if timeout is None:
            timeout = self._server.config.message_timeout
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

    def join(self, room: str) -> None:
        """Join ``room`` (no-op if already a member).

        Raises LimitExceeded (an AckError: in a handler it becomes the ack error) with code
        ``invalid_name`` or ``room_limit``.
        """
        cfg = self._server.config
        problem = name_problem("room", room, cfg.max_name_length)
        if problem is not None:
            raise LimitExceeded(ErrorCode.INVALID_NAME, problem)
        if room in self._rooms or not self.connected:
            return
        if len(self._rooms) >= cfg.max_rooms_per_socket:
            raise LimitExceeded(
                ErrorCode.ROOM_LIMIT, f"a socket may be in {cfg.max_rooms_per_socket} rooms"
            )
        if self._server._registry.add(room, self, self._send_frame):
            self._rooms[room] = None
            rec = self._rec
            if rec is not None:  # a resume replays what the room got from here on
                recovery = self._server._recovery
                assert recovery is not None
                rec.joined[room] = recovery.position(room)

    def set_presence(self, info: dict[str, Any]) -> None:
        """Change this socket's public presence info (``socket.presence``, e.g. a status):
        the members of its presence rooms, on every node, get ``$presence`` ``updated``."""
        self.presence = info
        if not self.connected:
            return
        cluster = self._server._cluster
        for room in self._rooms:
            if cluster.is_presence_room(room):
                cluster.presence_state.changed(room, self, joined=True, updated=True)

    def leave(self, room: str) -> None:
        if self._server._registry.discard(room, self):
            self._rooms.pop(room, None)
            if self._rec is not None:
                self._rec.joined.pop(room, None)

    def disconnect(self, code: int = CloseCode.KICKED, reason: str = "") -> None:
        """Close the connection (default 4000: kicked by the application)."""
        if self._conn is not None:
            self._conn.close(code, reason)

    # transport callbacks (ConnectionHandler)

    def on_open(self, conn: SocketConnection) -> None:
        self._conn = conn
        self._send_frame = conn.send_frame
        deflater = conn.deflater
        if deflater is not None:
            shareable = deflater.stateless and deflater.window_bits == 15
            self.compression_mode = SHARED if shareable else OWN
        self.connected = True
        self._server._on_open(self)

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        stats = self._server._stats
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
                now = self._server._clock()
                wait = limiter.check("", len(payload), now)
                if wait:
                    self._rate_limited(None, exc.ack_id, binary, wait, now)
                    return
            self._refuse(exc.code, exc.message, ack_id=exc.ack_id, binary=binary)
            return
        if limiter is not None:
            now = self._server._clock()
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

    def receive_packet(self, packet: envelope.Packet, size: int) -> None:
        """A packet another protocol front end decoded (server/socketio/): the checks of
        ``on_message`` after decoding (stats, rate limits, held until on_connection ran)."""
        stats = self._server._stats
        if stats is not None:
            stats.messages_in += 1
            stats.bytes_in += size
            stats.bytes_in_wire += size
        limiter = self._limiter
        if limiter is not None:
            now = self._server._clock()
            if type(packet) is Event:
                wait = limiter.check(packet.name, size, now)
                if wait:
                    self._rate_limited(packet.name, packet.ack_id, packet.binary, wait, now)
                    return
            else:
                wait = limiter.check("", size, now)
                if wait:  # a late reply is dropped: the call it answers times out
                    self._rate_limited(None, None, False, wait, now)
                    return
        if self._inbox is not None:
            self._inbox.append(packet)
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
        registry = self._server._registry
        for room in self._rooms:
            registry.discard(room, self)
        self._server._on_close(self, code, reason)
        self._rooms.clear()

    # dispatch

    def _handle(self, packet: envelope.Packet) -> None:
        if type(packet) is Event:
            name = packet.name
            if name[0] == "$":
                self._system_event(packet)
            elif not self.authenticated:
                self._refuse(
                    ErrorCode.UNAUTHORIZED, "authenticate with $auth first",
                    event=name, ack_id=packet.ack_id, binary=packet.binary,
                )
            elif (
                problem := name_problem("event", name, self._server._config.max_name_length)
            ) is not None:
                self._refuse(
                    ErrorCode.INVALID_NAME, problem, ack_id=packet.ack_id, binary=packet.binary,
                )
            elif name in LOCAL_EVENTS:
                self._refuse(
                    ErrorCode.RESERVED_EVENT, f"{name!r} is a local event name",
                    event=name, ack_id=packet.ack_id, binary=packet.binary,
                )
            elif packet.meta is None or self._dedupe(packet):
                self._server._dispatch(self, packet)
        else:
            assert type(packet) is AckReply
            if not self._acks.resolve_reply(packet):
                self._refuse(
                    ErrorCode.UNKNOWN_ACK, f"no pending call with id {packet.ack_id}",
                    ack_id=None,
                )

    def _system_event(self, packet: Event) -> None:
        name = packet.name
        if name == "$pong":
            if packet.data == self._ping_value and self._ping_value is not None:
                self._ping_value = None
                stats = self._server._stats
                if stats is not None:
                    stats.record_rtt(time.monotonic() - self._ping_sent_at)
        elif name == "$ping":  # the client measures its own round trip
            binary = packet.binary
            try:
                pong = _encode_event("$pong", packet.data, binary=binary)
            except envelope.ENCODE_ERRORS:
                # Decodable but not encodable back (msgspec's encoder nests less deep).
                self._refuse(ErrorCode.BAD_MESSAGE, "$ping data cannot be echoed", event=name)
                return
            self._send_payload(pong, binary)
        elif name == "$auth":
            self._server._auth_message(self, packet)
        elif name == "$resume" and self._server._recovery is not None:
            self._server._resumer.resume_message(self, packet)
        else:
            self._refuse(
                ErrorCode.RESERVED_EVENT, f"{name!r} is reserved for the protocol",
                event=name, ack_id=packet.ack_id, binary=packet.binary,
            )

    def _handlers_for(self, event: str) -> list[Handler] | None:
        if self._handlers is not None:
            handlers = self._handlers.get(event)
            if handlers:
                return handlers
        return None

    def _flush_inbox(self) -> None:
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
        stats = self._server._stats
        if stats is not None:
            stats.record_out(1, len(payload), wire)

    def reply(self, ack_id: int, result: Any, *, binary: bool = False) -> None:
        """Send the ack reply for ``ack_id`` (done for you when a handler returns). It goes in
        a binary frame if the request came in one (``binary``) or the result holds bytes."""
        rec = self._rec
        if rec is not None and rec.replies is not None and ack_id in rec.replies.running:
            self._settle_call(rec, ack_id, result, None, binary)
            return
        self._answer(ack_id, result, binary)

    def _answer(self, ack_id: int, result: Any, binary: bool) -> None:
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
        if (
            ack_id is not None and rec is not None and rec.replies is not None
            and ack_id in rec.replies.running
        ):
            self._settle_call(rec, ack_id, None, (code, message, retry_after), binary)
            return
        if ack_id is not None:
            payload = envelope.encode_ack_error(
                ack_id, code, message, binary=binary, retry_after=retry_after
            )
        else:
            payload = envelope.encode_error(code, message, event=event, retry_after=retry_after)
            binary = False
        stats = self._server._stats
        if stats is not None:
            stats.errors_sent += 1
        self._send_payload(payload, binary)

    # idempotent calls (recovery): a call the client retries after a reconnect runs once

    def _dedupe(self, packet: Event) -> bool:
        """An event with an idempotency key: True if its handlers should run."""
        key = packet.meta
        ack_id = packet.ack_id
        if ack_id is None or not (
            (type(key) is str and 0 < len(key) <= 64) or (type(key) is int and key > 0)
        ):
            self._refuse(
                ErrorCode.BAD_MESSAGE, "the 4th item (idempotency key) needs an ack id and "
                "must be a string of 1-64 characters or a positive integer",
                event=packet.name, ack_id=ack_id, binary=packet.binary,
            )
            return False
        rec = self._rec
        if rec is None:  # recovery off: nothing is retried, keys change nothing
            return True
        replies = rec.replies
        if replies is None:
            recovery = self._server._recovery
            assert recovery is not None
            replies = rec.replies = Replies(recovery.reply_limit)
        done = replies.done.get(key)
        if done is not None:  # ran already: answer again
            result, error = done
            if error is None:
                self._answer(ack_id, result, packet.binary)
            else:
                self.reject(error[0], error[1], ack_id=ack_id, retry_after=error[2],
                            binary=packet.binary)
            return False
        running = replies.is_running(key)
        replies.running[ack_id] = (key, self)
        return not running  # still running (from before the reconnect): answered when done

    def _settle_call(
        self, rec: SessionState, ack_id: int, result: Any,
        error: tuple[str, str, float | None] | None, binary: bool,
    ) -> None:
        """A keyed call finished: record its outcome and answer every call waiting for it on
        a live connection (a retry on a newer connection than this one gets it too; a
        connection that dropped gets nothing, its client retries)."""
        assert rec.replies is not None
        waiting = rec.replies.finish(ack_id, result, error)
        if rec.owner is None:  # held: in a cluster, its stored copy learns the outcome
            self._server._resumer.session_changed(self.id, rec)
        for waiting_id, socket in waiting:
            if error is None:
                socket._answer(waiting_id, result, binary)
            else:
                socket.reject(error[0], error[1], ack_id=waiting_id, retry_after=error[2],
                              binary=binary)

    def _refuse(
        self, code: str, message: str, *, event: str | None = None, ack_id: int | None = None,
        binary: bool = False,
    ) -> None:
        """Refuse a message that breaks the protocol (malformed, unknown ack id, reserved or
        invalid name, not authenticated yet) and count it against the error-rate rule:
        more than ``error_limit`` such messages within 10 s close the socket with 1008."""
        self.reject(code, message, event=event, ack_id=ack_id, binary=binary)
        limit = self._server._config.error_limit
        if not limit or not self.connected:
            return
        now = self._server._clock()
        errors = self._errors
        if errors is None:
            errors = self._errors = TokenBucket(limit / 10, limit, now)
        if errors.take(now):
            stats = self._server._stats
            if stats is not None:
                stats.error_closes += 1
            logger.info(
                "closing %s: over the error-rate rule", self.id,
                extra={"event": "limit", "limit": "errors", "sid": self.id},
            )
            self.fail(CloseCode.POLICY_VIOLATION, "too many invalid messages")

    def _rate_limited(
        self, event: str | None, ack_id: int | None, binary: bool, wait: float, now: int
    ) -> None:
        stats = self._server._stats
        if stats is not None:
            stats.rate_limited += 1
        logger.debug(
            "rate limited %s on %r", self.id, event,
            extra={"event": "limit", "limit": "rate", "sid": self.id, "retry_after": wait},
        )
        self.reject(
            ErrorCode.RATE_LIMITED, "too many messages; slow down", event=event,
            ack_id=ack_id, retry_after=round(wait, 3), binary=binary,
        )
        strikes = self._strikes
        if strikes is None:
            limit = self._server.config.rate_limit_strikes
            strikes = self._strikes = TokenBucket(limit / 10, limit, now)
        if strikes.take(now):  # refused too often: abuse, not a burst
            if stats is not None:
                stats.rate_limit_closes += 1
            self.fail(CloseCode.RATE_LIMITED, "rate limit abuse")

    def fail(self, code: int, reason: str) -> None:
        logger.info(
            "closing %s: %s (%d)", self.id, reason, code,
            extra={"event": "close", "sid": self.id, "code": code, "reason": reason},
        )
        if self._conn is not None:
            self._conn.close(code, reason)

    # heartbeat

    @property
    def ping_pending(self) -> bool:
        """A ``$ping`` sent to it is still unanswered."""
        return self._ping_value is not None

    def ping(self, value: int, now: float) -> None:
        self._ping_value = value
        self._ping_sent_at = now
        self._send_payload(_encode_event("$ping", value), False)

    def ping_overdue(self, value: int) -> bool:
        return self._ping_value == value


def _is_resume(packet: envelope.Packet) -> bool:
    return type(packet) is Event and packet.name == "$resume"


def _drop(frame: bytes) -> None:
    """Where sends go once the socket is closed."""

