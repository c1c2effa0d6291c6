"""A Socket.IO client as a server ``Socket``: the same handlers, rooms, acks and broadcasts
as a native client, with Socket.IO packets on the wire.

``SocketIOSocket`` is a ``Socket`` whose connection is a ``SocketIOLink`` (the client's
session, ``server/socketio/session.py``). What a socket sends itself (``send``, ``call``, ack
replies) is encoded straight to Socket.IO, so several arguments survive (a tuple is several
arguments: ``protocol/socketio/socketio.py``); what the shared parts of the server send as
native payloads (``$welcome``, ``$error``, ack errors) is translated here, once per message.
Room broadcasts reach it as the native frame every member shares; ``FrameTranslator`` turns
that frame into Socket.IO frames once per broadcast, however many Socket.IO members there are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from smartsocket.errors import ConnectionClosed
from smartsocket.protocol.codes import ErrorCode
from smartsocket.protocol.envelope import ENCODE_ERRORS, AckReply, Event, Packet
from smartsocket.protocol.names import check_event, name_problem
from smartsocket.protocol.socketio import EncodedPacket, PacketKind, encode, encode_event
from smartsocket.protocol.socketio.socketio import (
    DEFAULT_NAMESPACE,
    data_to_args,
    encode_ack,
    plain_ack,
)
from smartsocket.recovery.marks import ResumePoint, mark_of, record
from smartsocket.security import LimitExceeded
from smartsocket.server.socket import LOCAL_EVENTS, Socket

if TYPE_CHECKING:
    from smartsocket.server.socketio.namespace import Namespace
from smartsocket.transport import build_frame

logger = logging.getLogger("smartsocket.socketio")

_json_decode = msgspec.json.Decoder().decode
_msgpack_decode = msgspec.msgpack.Decoder().decode

# Native events a Socket.IO client has no use for: its own protocol does the heartbeat, and
# authentication rides in CONNECT (the refusal is a CONNECT_ERROR).
_DROPPED: Final = frozenset({"$ping", "$pong", "$auth_required"})
WELCOME: Final = "$welcome"


class SocketIOLink(Protocol):
    """What a ``SocketIOSocket`` needs of its client's session (and ``SocketConnection``)."""

    def write(self, packet: EncodedPacket) -> None: ...

    def write_text(self, payload: bytes) -> None:
        """A packet of one text message: its Engine.IO bytes (``plain_ack``)."""

    def admitted(self) -> None: ...

    @property
    def offsets(self) -> bool:
        """Whether events carry their position's offset (connection-state recovery)."""


def translate(
    payload: bytes | memoryview, binary: bool, namespace: str = DEFAULT_NAMESPACE,
    offsets: bool = False,
) -> EncodedPacket | str | None:
    """A native v1 payload the server made -> the Socket.IO packet that means the same;
    ``WELCOME`` for ``$welcome`` (the session answers CONNECT), None for what is dropped.

    An ack error ``[id, null, {code, message}]`` becomes an ack with one argument
    ``{"error": {code, message}}`` (Socket.IO acks have no error channel)."""
    return translate_marked(payload, binary, namespace, offsets)[0]


def translate_marked(
    payload: bytes | memoryview, binary: bool, namespace: str, offsets: bool
) -> tuple[EncodedPacket | str | None, str | None]:
    """``translate``, and the mark of the message's position (``offsets``: the client gets
    it as the event's last argument, connection-state recovery: ``recovery/marks.py``)."""
    obj = _msgpack_decode(payload) if binary else _json_decode(payload)
    head = obj[0]
    if type(head) is str:
        if head == WELCOME:
            return WELCOME, None
        if head in _DROPPED:
            return None, None
        ack_id = obj[2] if len(obj) >= 3 else None
        data = obj[1] if len(obj) > 1 else None
        mark = mark_of(obj[3]) if offsets and len(obj) > 3 and ack_id is None else None
        return encode_event(head, data, ack_id=ack_id, namespace=namespace, offset=mark), mark
    if len(obj) == 3:
        return encode(PacketKind.ACK, namespace, [{"error": obj[2]}], head), None
    return encode(PacketKind.ACK, namespace, data_to_args(obj[1]), head), None


def frame_payload(frame: bytes) -> tuple[bytes, bool]:
    """The payload and binary flag of an unmasked server frame (``transport.build_frame``)."""
    size = frame[1] & 0x7F
    start = 2 if size < 126 else 4 if size == 126 else 10
    return frame[start:], (frame[0] & 0x0F) == 2


class FrameTranslator:
    """One broadcast's native frame -> its Socket.IO packet and WebSocket frames, made on the
    first Socket.IO member's delivery and reused for the others (the fan-out hands every
    member the same frame object; holding it keeps its identity from being reused). Per
    namespace, Engine.IO version and whether offsets are added: members in the same ones
    share the bytes (and the mark of its position, ``recovery/marks.py``)."""

    __slots__ = ("_frame", "_packets", "_ws")

    def __init__(self) -> None:
        self._frame: bytes | None = None
        self._packets: dict[tuple[str, bool], tuple[EncodedPacket | None, str | None]] = {}
        self._ws: dict[tuple[str, int, bool], tuple[bytes, ...]] = {}

    def marked(
        self, frame: bytes, namespace: str = DEFAULT_NAMESPACE, offsets: bool = False
    ) -> tuple[EncodedPacket | None, str | None]:
        """The packet of a broadcast and the mark of its position (None: it has none)."""
        if frame is not self._frame:
            self._frame = frame
            self._packets = {}
            self._ws = {}
        key = (namespace, offsets)
        found = self._packets.get(key)
        if found is not None:
            return found
        payload, binary = frame_payload(frame)
        try:
            packet, mark = translate_marked(payload, binary, namespace, offsets)
        except (msgspec.DecodeError, IndexError, TypeError, RecursionError):
            # RecursionError: data the sender encoded just under the depth limit, decoded
            # and encoded again here a few frames deeper; the other members still get it.
            packet, mark = None, None
        found = self._packets[key] = (
            (packet, mark) if isinstance(packet, EncodedPacket) else (None, None)
        )
        return found

    def packet(self, frame: bytes, namespace: str = DEFAULT_NAMESPACE) -> EncodedPacket | None:
        return self.marked(frame, namespace)[0]

    def websocket_frames(
        self, frame: bytes, eio: int, namespace: str = DEFAULT_NAMESPACE, offsets: bool = False
    ) -> tuple[tuple[bytes, ...], str | None]:
        """The prebuilt WebSocket frames of a broadcast for Engine.IO version ``eio``, and
        the mark of its position."""
        packet, mark = self.marked(frame, namespace, offsets)
        if packet is None:
            return (), None
        key = (namespace, eio, offsets)
        built = self._ws.get(key)
        if built is None:
            built = self._ws[key] = tuple(
                build_frame(data, binary=binary) for data, binary in packet.websocket_frames(eio)
            )
        return built, mark


class SocketIOSocket(Socket):
    """A server ``Socket`` for a Socket.IO client (made by ``server.open_socket`` when the
    client's CONNECT to ``/`` arrives; ``on_open`` follows with its ``SocketIOLink``)."""

    __slots__ = ("_link", "_scope", "namespace", "resume_point")

    protocol = "socketio"
    heartbeat = False  # Engine.IO's own ping/pong watches a Socket.IO client

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_point: ResumePoint | None = None  # the CONNECT's pid and offset
        self._link: SocketIOLink | None = None
        self._scope: Namespace | None = None
        self.namespace = DEFAULT_NAMESPACE  # the Socket.IO namespace this socket is in

    def bind(self, link: SocketIOLink, namespace: str, scope: Namespace | None) -> None:
        """Its client's session, and the namespace of the application's own it is in (None:
        ``/``, the application itself)."""
        self._link = link
        self.namespace = namespace
        self._scope = scope

    @property
    def connection_scope(self) -> Namespace | None:
        return self._scope

    def _handle(self, packet: Packet) -> None:
        scope = self._scope
        if scope is None or type(packet) is not Event or packet.name[:1] == "$":
            super()._handle(packet)
            return
        # A namespace of the application's own: its handlers, not the server-level ones.
        name = packet.name
        problem = name_problem("event", name, self._ctx.config.max_name_length)
        if problem is None and name in LOCAL_EVENTS:
            problem = f"{name!r} is a local event name"
        if problem is not None:
            self.refuse(ErrorCode.INVALID_NAME, problem, event=name, ack_id=packet.ack_id)
            return
        scope.router.dispatch(self, packet)

    # inbound (from the session)

    def receive_packet(self, packet: Packet, size: int) -> None:
        """A packet the session decoded: the checks of ``Socket.on_message`` after decoding
        (stats, rate limits, held until on_connection ran)."""
        stats = self._ctx.stats
        if stats is not None:
            stats.messages_in += 1
            stats.bytes_in += size
            stats.bytes_in_wire += size
        self._admit(packet, size)

    def _admit(self, packet: Packet, size: int) -> None:
        """Rate limits, then handled now or held until on_connection ran."""
        limiter = self._limiter
        if limiter is not None:
            now = self._ctx.clock()
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

    def receive_event(self, name: str, data: Any, ack_id: int | None, size: int) -> None:
        if not name:  # Socket.IO allows "", SmartSocket's names do not (and _handle reads name[0])
            self.refuse(ErrorCode.INVALID_NAME, name_problem("event", name) or "", ack_id=ack_id)
            return
        if name[0] == "$":  # the native protocol's system events are not the client's
            self.refuse(
                ErrorCode.RESERVED_EVENT, f"{name!r} is reserved", event=name, ack_id=ack_id
            )
            return
        # receive_packet, with its common case (no rate limits, nothing held, in "/") going
        # straight to Socket's dispatch: two calls and a super() less per event.
        packet = Event(name, data, ack_id)
        stats = self._ctx.stats
        if stats is not None:
            stats.messages_in += 1
            stats.bytes_in += size
            stats.bytes_in_wire += size
        if self._limiter is None and self._inbox is None and self._scope is None:
            self._handle_native(packet)
        else:
            self._admit(packet, size)

    def receive_ack(self, ack_id: int, data: Any, size: int) -> None:
        self.receive_packet(AckReply(ack_id, data), size)

    def authenticate(self, auth: dict[str, Any]) -> None:
        """The CONNECT auth payload, checked as the native ``$auth`` message is."""
        self._handle(Event("$auth", auth))

    # outbound: Socket.IO encodings (several arguments survive)

    def _write(self, packet: EncodedPacket) -> None:
        link = self._link
        if link is not None and self.connected:
            link.write(packet)

    def send(self, event: str, data: Any = None, *, binary: bool | None = None) -> None:
        """Send ``event``; a tuple ``data`` is several Socket.IO arguments."""
        check_event(event)
        self._write(encode_event(event, data, namespace=self.namespace))

    emit = send

    async def call(
        self, event: str, data: Any = None, *, timeout: float | None = None,
        binary: bool | None = None,
    ) -> Any:
        """Send ``event`` with a Socket.IO ack and wait for the client's answer (its
        arguments mapped as for events: one -> itself, several -> a tuple)."""
        check_event(event)
        if not self.connected:
            raise ConnectionClosed(self.close_code, self.close_reason)
        config = self._ctx.config
        if len(self._acks) >= config.max_pending_acks:
            raise LimitExceeded(
                ErrorCode.TOO_MANY_PENDING, "max_pending_acks calls already wait for this socket"
            )
        ack_id, future = self._acks.create(event, config.message_timeout if timeout is None
                                           else timeout)
        try:
            packet = encode_event(event, data, ack_id=ack_id, namespace=self.namespace)
        except BaseException:
            self._acks.forget(ack_id)
            raise
        self._write(packet)
        return await future

    def answer(self, ack_id: int, result: Any, binary: bool) -> None:
        try:
            # The common ack, in "/" without attachments: its bytes, no packet objects.
            payload = plain_ack(ack_id, result) if self.namespace == DEFAULT_NAMESPACE else None
            packet = (
                encode_ack(ack_id, result, namespace=self.namespace) if payload is None else None
            )
        except ENCODE_ERRORS:
            self.reject(ErrorCode.INTERNAL_ERROR, "the reply could not be encoded", ack_id=ack_id)
            return
        link = self._link
        if link is None or not self.connected:
            return
        if packet is None:
            assert payload is not None
            link.write_text(payload)
        else:
            link.write(packet)

    def _send_payload(self, payload: bytes, binary: bool) -> None:
        link = self._link
        if link is None or not self.connected:
            return
        try:
            packet, mark = translate_marked(payload, binary, self.namespace, link.offsets)
        except RecursionError:  # encoded just under the depth limit, decoded deeper here
            logger.info("socket %s: a message nested too deeply to translate was not sent",
                        self.id)
            return
        if packet == WELCOME:
            link.admitted()
        elif isinstance(packet, EncodedPacket):
            link.write(packet)
            if mark is not None:
                self.sent_mark(mark)

    def sent_mark(self, mark: str) -> None:
        """A positioned message went to the client: remember its place (recovery/marks.py)."""
        rec = self._rec
        if rec is not None:
            record(rec, mark, self._ctx.config.history_size)

    # The server's own writes of encoded payloads (welcome, replays, server.send) translate too.
    send_encoded = _send_payload


SocketFactory = Callable[..., SocketIOSocket]
