"""Socket.IO packets (protocol v5, and v4 for Engine.IO v3 clients), sans-I/O.

Spec: socket.io/docs/v4/socket-io-protocol ("Packet encoding"):

    <type>[<attachments>-][<namespace>,][<ack id>][JSON payload]    + binary attachments

    0 CONNECT        0 | 0/admin,{"token":"123"}   server answers 0{"sid":"..."} (v5)
    1 DISCONNECT     1 | 1/admin,
    2 EVENT          2["foo",1] | 212["foo"] (ack id 12) | 2/admin,["bar"]
    3 ACK            3/admin,13["bar"]
    4 CONNECT_ERROR  4{"message":"Not authorized"}     (v4: any JSON value, often a string)
    5 BINARY_EVENT   51-["baz",{"_placeholder":true,"num":0}] then one binary message
    6 BINARY_ACK     61-/admin,15["bar",{"_placeholder":true,"num":0}] then one binary message

Each Socket.IO packet travels in an Engine.IO message (so "42[...]" on the wire); attachments
follow as binary messages, in order. ``BinaryReassembler`` joins them; ``encode_event`` builds
the frames of an event once so a broadcast writes the same bytes to every member.

Arguments and SmartSocket's ``data`` (one handler parameter, one return value); the rule of
python-socketio, so its users meet no surprise, and reversible:

    emit("move")           -> data None          ack()        <- return None
    emit("move", x)        -> data x             ack(x)       <- return x   (x not a tuple)
    emit("move", x, y)     -> data (x, y)        ack(x, y)    <- return (x, y)

A tuple means "several arguments": JSON decoding never makes tuples (arrays become lists), so
``emit("move", [x, y])`` (one list argument) stays a list and is not confused with two
arguments. ``args_to_data`` and ``data_to_args`` are the two directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec

from smartsocket.protocol.socketio.engineio import OutFrame, websocket_payload
from smartsocket.protocol.socketio.errors import AttachmentError, SocketIOPacketError

DEFAULT_NAMESPACE: Final = "/"
# The JS parser refuses these as event names on receipt (they are the client's own events).
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
MAX_ACK_ID: Final = 2**53 - 1  # ids must survive JavaScript numbers
_MAX_DIGITS: Final = 16

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class PacketKind(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_KINDS: Final = tuple(PacketKind)  # by value: indexing is cheaper than the enum call
# For the per-packet paths: on Python 3.11 every attribute of an Enum class is looked up
# through EnumMeta.__getattr__ (~1,000 instructions), a module global is not.
EVENT: Final = PacketKind.EVENT
ACK: Final = PacketKind.ACK
# Values that hold no bytes: most event arguments, skipped without walking them.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


@dataclass(slots=True)
class SioPacket:
    """A Socket.IO packet. ``data`` is the JSON payload (placeholders already replaced by
    bytes once reassembled); ``attachments`` counts the binary messages that follow."""

    kind: PacketKind
    namespace: str = DEFAULT_NAMESPACE
    data: Any = None
    id: int | None = None
    attachments: int = 0
    query: str = ""  # v4 protocol: "/admin?token=x," carries a query in the namespace


# -- arguments <-> data -------------------------------------------------------------------


def args_to_data(args: list[Any]) -> Any:
    """Event or ack arguments -> SmartSocket ``data`` (none: None, one: itself, more: tuple)."""
    if not args:
        return None
    if len(args) == 1:
        return args[0]
    return tuple(args)


def data_to_args(data: Any) -> list[Any]:
    """SmartSocket ``data`` or a return value -> arguments (the inverse of ``args_to_data``)."""
    if data is None:
        return []
    if isinstance(data, tuple):
        return list(data)
    return [data]


# -- decoding -----------------------------------------------------------------------------


def _read_digits(text: str, i: int) -> tuple[int | None, int]:
    j = i
    while j < len(text) and "0" <= text[j] <= "9":
        j += 1
    if j == i:
        return None, i
    if j - i > _MAX_DIGITS:
        raise SocketIOPacketError("number too long")
    return int(text[i:j]), j


def decode(text: str, *, max_attachments: int = 10) -> SioPacket:
    """Decodes the text of a Socket.IO packet (an Engine.IO message's data)."""
    if not text or not "0" <= text[0] <= "6":
        raise SocketIOPacketError(f"unknown packet type {text[:1]!r}")
    kind = _KINDS[ord(text[0]) - 48]
    i = 1
    attachments = 0
    if kind in (PacketKind.BINARY_EVENT, PacketKind.BINARY_ACK):
        count, j = _read_digits(text, i)
        if count is None or text[j : j + 1] != "-":
            raise AttachmentError("binary packet without its attachment count")
        if count > max_attachments:
            raise AttachmentError(f"{count} attachments (limit {max_attachments})")
        attachments, i = count, j + 1
    namespace, query = DEFAULT_NAMESPACE, ""
    if text[i : i + 1] == "/":
        comma = text.find(",", i)
        end = comma if comma >= 0 else len(text)
        namespace = text[i:end]
        if "?" in namespace:  # v4 clients: the CONNECT query rides in the namespace
            namespace, _, query = namespace.partition("?")
        i = end + 1 if comma >= 0 else end
    ack_id, i = _read_digits(text, i)
    if ack_id is not None and ack_id > MAX_ACK_ID:
        raise SocketIOPacketError("ack id out of range")
    data: Any = None
    if i < len(text):
        try:
            data = _json_decode(text[i:])
        except (msgspec.DecodeError, RecursionError):  # RecursionError: nesting too deep
            raise SocketIOPacketError("payload is not valid JSON") from None
    packet = SioPacket(kind, namespace, data, ack_id, attachments, query)
    _check_payload(packet, has_payload=i < len(text))
    return packet


def decode_plain(text: str, start: int = 0) -> tuple[PacketKind, int | None, list[Any]] | None:
    """The fast path of ``decode`` for the common packets, an EVENT or ACK in ``/`` with a
    JSON array (``2[...``, ``212[...``, ``313[...``) that starts at ``text[start]`` (1: in an
    Engine.IO message, no slice made): ``(kind, ack_id, args)`` when it is one and valid as
    ``decode`` checks it; None for anything else (binary packets, namespaces, bad ids or
    payloads): ``decode`` then decodes it, or says what is wrong. No ``SioPacket``, no regular
    expression (str methods cost half as much), no intermediate slices but the JSON's."""
    if len(text) <= start:
        return None
    head = text[start]  # an index, not a slice: no slice object
    if head != "2" and head != "3":
        return None
    i = start + 1
    bracket = text.find("[", i, i + _MAX_DIGITS + 1)  # an ack id has at most 16 digits
    if bracket < 0:
        return None
    ack_id = None
    if bracket > i:
        digits = text[i:bracket]
        if not (digits.isascii() and digits.isdigit()):
            return None
        ack_id = int(digits)
        if ack_id > MAX_ACK_ID:
            return None
    try:
        args = _json_decode(text[bracket:])
    except (msgspec.DecodeError, RecursionError):
        return None
    if head == "2":
        if not args or type(args[0]) is not str or args[0] in RESERVED_EVENTS:
            return None
        return EVENT, ack_id, args
    if ack_id is None:
        return None
    return ACK, ack_id, args


def _check_payload(packet: SioPacket, has_payload: bool) -> None:
    """The payload shape each type allows (spec "Packet format"; the JS parser's checks)."""
    kind, data = packet.kind, packet.data
    if kind is PacketKind.CONNECT:
        ok = not has_payload or isinstance(data, dict)
    elif kind is PacketKind.DISCONNECT:
        ok = not has_payload
    elif kind is PacketKind.CONNECT_ERROR:
        ok = has_payload and (isinstance(data, dict | str))
    elif kind in (PacketKind.EVENT, PacketKind.BINARY_EVENT):
        ok = (
            isinstance(data, list)
            and bool(data)
            and isinstance(data[0], str)
            and data[0] not in RESERVED_EVENTS
        )
    else:  # ACK, BINARY_ACK
        ok = isinstance(data, list) and packet.id is not None
    if not ok:
        raise SocketIOPacketError(f"invalid payload for {kind.name}")
    if kind in (PacketKind.CONNECT, PacketKind.DISCONNECT, PacketKind.CONNECT_ERROR) and (
        packet.id is not None
    ):
        raise SocketIOPacketError(f"{kind.name} cannot carry an ack id")


def _is_placeholder(value: Any) -> bool:
    return type(value) is dict and value.get("_placeholder") is True and len(value) == 2


def _replace_placeholders(data: Any, buffers: list[bytes]) -> Any:
    """Puts each attachment where its placeholder is; iterative, so deep nesting cannot
    exhaust the stack. Every attachment must be used exactly once."""
    used = [False] * len(buffers)

    def resolve(value: Any) -> Any:
        num = value.get("num")
        if type(num) is not int or not 0 <= num < len(buffers) or used[num]:
            raise AttachmentError("placeholder refers to no attachment")
        used[num] = True
        return buffers[num]

    stack: list[Any] = [data]  # EVENT and ACK payloads are arrays: the root is no placeholder
    while stack:
        node = stack.pop()
        items = enumerate(node) if isinstance(node, list) else node.items()
        for key, value in items:
            if _is_placeholder(value):
                node[key] = resolve(value)
            elif isinstance(value, list | dict):
                stack.append(value)
    if not all(used):
        raise AttachmentError("attachment without a placeholder")
    return data


class BinaryReassembler:
    """Joins a binary packet with the attachments that follow it, for one connection.

    Feed every Engine.IO message in order; a complete packet comes back, or None while
    attachments are awaited. A text packet before the last attachment, or an attachment
    nobody announced, is an ``AttachmentError`` (the connection closes: "parse error").
    """

    __slots__ = (
        "_buffers", "_max_attachment_bytes", "_max_attachments", "_packet", "_size", "pending"
    )

    def __init__(self, *, max_attachments: int = 10, max_attachment_bytes: int = 1_000_000):
        self._max_attachments = max_attachments
        self._max_attachment_bytes = max_attachment_bytes
        self._packet: SioPacket | None = None
        self._buffers: list[bytes] = []
        self._size = 0
        # A binary packet awaits its attachments (an attribute, not a property: it is read
        # for every packet).
        self.pending = False

    @property
    def buffered(self) -> int:
        """Attachment bytes held for the open packet (count it against the budget)."""
        return self._size

    def feed_text(self, text: str) -> SioPacket | None:
        if self._packet is not None:
            raise AttachmentError("packet arrived before the attachments of the previous one")
        packet = decode(text, max_attachments=self._max_attachments)
        if packet.attachments == 0:
            if packet.kind in (PacketKind.BINARY_EVENT, PacketKind.BINARY_ACK):
                packet.data = _replace_placeholders(packet.data, [])
            return packet
        self._packet = packet
        self.pending = True
        return None

    def feed_binary(self, data: bytes) -> SioPacket | None:
        packet = self._packet
        if packet is None:
            raise AttachmentError("binary message without a packet announcing it")
        self._size += len(data)
        if self._size > self._max_attachment_bytes:
            raise AttachmentError("attachments larger than the limit")
        self._buffers.append(data)
        if len(self._buffers) < packet.attachments:
            return None
        buffers, self._packet, self._buffers, self._size = self._buffers, None, [], 0
        self.pending = False
        packet.data = _replace_placeholders(packet.data, buffers)
        return packet


# -- encoding -----------------------------------------------------------------------------


def _extract_binary(value: Any, buffers: list[bytes]) -> Any:
    """A copy of ``value`` with each bytes-like replaced by a placeholder (appended to
    ``buffers``); the value itself when it holds no bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        buffers.append(bytes(value))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(value, list | tuple):
        out = [_extract_binary(v, buffers) for v in value]
        return out if any(a is not b for a, b in zip(out, value, strict=True)) else value
    if isinstance(value, dict):
        new = {k: _extract_binary(v, buffers) for k, v in value.items()}
        return new if any(new[k] is not v for k, v in value.items()) else value
    return value


def _has_binary(value: Any) -> bool:
    """Whether ``value`` may hold bytes: a walk that allocates nothing (the common case, an
    ack or event of plain JSON, skips ``_extract_binary``'s copying walk). True for types it
    does not know, so that the careful walk decides."""
    kind = type(value)
    if kind in _SCALARS:
        return False
    if kind is dict:
        value = value.values()
    elif kind is not list and kind is not tuple:
        return True
    for item in value:  # noqa: SIM110 (any() would allocate a generator per container)
        if type(item) not in _SCALARS and _has_binary(item):
            return True
    return False


def _header(kind: PacketKind, namespace: str, ack_id: int | None, attachments: int) -> bytes:
    head = b"%d" % kind
    if attachments:
        head += b"%d-" % attachments
    if namespace != DEFAULT_NAMESPACE:
        head += namespace.encode() + b","
    if ack_id is not None:
        head += b"%d" % ack_id
    return head


class EncodedPacket(msgspec.Struct, frozen=True, gc=False):
    """A packet encoded once: ``frames`` are the Engine.IO messages to send in order (the
    text packet, then each attachment), shareable by every receiver of a broadcast."""

    frames: tuple[OutFrame, ...]

    @property
    def text(self) -> bytes:
        """The Socket.IO text (without the Engine.IO "4")."""
        return self.frames[0].payload[1:]

    def websocket_frames(self, eio: int = 4) -> tuple[tuple[bytes, bool], ...]:
        """``(payload, binary)`` per WebSocket frame. Call once per broadcast and protocol
        version: v4 shares these bytes as they are; v3 binary frames get their type byte."""
        return tuple((websocket_payload(f, eio), f.binary) for f in self.frames)


def encode(
    kind: PacketKind,
    namespace: str = DEFAULT_NAMESPACE,
    data: Any = None,
    ack_id: int | None = None,
) -> EncodedPacket:
    """Encodes a packet; EVENT and ACK with bytes anywhere in ``data`` become BINARY_*."""
    buffers: list[bytes] = []
    if kind in (PacketKind.EVENT, PacketKind.ACK) and _has_binary(data):
        data = _extract_binary(data, buffers)
        if buffers:
            kind = PacketKind(kind + 3)  # EVENT -> BINARY_EVENT, ACK -> BINARY_ACK
    body = b"" if data is None else _json_encode(data)
    text = b"4" + _header(kind, namespace, ack_id, len(buffers)) + body
    return EncodedPacket((OutFrame(text), *(OutFrame(b, binary=True) for b in buffers)))


def encode_event(
    name: str,
    data: Any = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    ack_id: int | None = None,
    offset: str | None = None,
) -> EncodedPacket:
    """An event from SmartSocket ``data`` (mapped to arguments by ``data_to_args``).

    ``offset``: connection-state recovery (Socket.IO 4.6+) appends the message's offset as
    a last string argument; a client that holds a ``pid`` remembers it and sends it back in
    its next CONNECT. Sessions with recovery and without need the two encodings."""
    args = [name, *data_to_args(data)]
    if offset is not None:
        args.append(offset)
    return encode(PacketKind.EVENT, namespace, args, ack_id)


def encode_ack(
    ack_id: int, result: Any = None, *, namespace: str = DEFAULT_NAMESPACE
) -> EncodedPacket:
    """An ack answering ``ack_id`` with a handler's return value."""
    args = data_to_args(result)
    if namespace == DEFAULT_NAMESPACE and not _has_binary(args):
        # The common ack, what ``encode`` would build: "43<id>[...]" in one step.
        return EncodedPacket((OutFrame(b"43%d" % ack_id + _json_encode(args)),))
    return encode(PacketKind.ACK, namespace, args, ack_id)


def plain_ack(ack_id: int, result: Any = None) -> bytes | None:
    """What ``encode_ack`` sends for an ack in ``/`` without attachments, as the one Engine.IO
    message's bytes (``43<id>[...]``), made without a packet object; None when ``result``
    holds bytes (``encode_ack`` makes the BINARY_ACK)."""
    kind = type(result)
    if kind in _SCALARS:  # the common ack: one JSON value, or none
        return b"43%d" % ack_id + _json_encode(() if result is None else (result,))
    args = (*result,) if isinstance(result, tuple) else (result,)  # data_to_args, as a tuple
    if _has_binary(args):
        return None
    return b"43%d" % ack_id + _json_encode(args)


def encode_connect(
    namespace: str = DEFAULT_NAMESPACE,
    sid: str | None = None,
    *,
    pid: str | None = None,
    protocol: int = 5,
) -> EncodedPacket:
    """The server's CONNECT answer: v5 carries ``{"sid"}`` (and ``pid`` when the session can
    be recovered); v4 carries nothing."""
    if protocol < 5:
        return encode(PacketKind.CONNECT, namespace)
    body: dict[str, str] = {"sid": sid or ""}
    if pid is not None:
        body["pid"] = pid
    return encode(PacketKind.CONNECT, namespace, body)


def encode_connect_error(
    message: str, data: Any = None, *, namespace: str = DEFAULT_NAMESPACE, protocol: int = 5
) -> EncodedPacket:
    """CONNECT_ERROR: v5 sends ``{"message", "data"?}``; v4 clients expect the message string."""
    if protocol < 5:
        return encode(PacketKind.CONNECT_ERROR, namespace, message)
    body: dict[str, Any] = {"message": message}
    if data is not None:
        body["data"] = data
    return encode(PacketKind.CONNECT_ERROR, namespace, body)


def encode_disconnect(namespace: str = DEFAULT_NAMESPACE) -> EncodedPacket:
    return encode(PacketKind.DISCONNECT, namespace)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What a client's CONNECT asks: the namespace, its auth payload (v5) or query (v4), and
    the connection-state recovery fields of Socket.IO 4.6+ clients (``pid``, ``offset``)."""

    namespace: str
    auth: dict[str, Any]
    pid: str | None = None
    offset: str | None = None


def connect_request(packet: SioPacket) -> ConnectRequest:
    """Reads a CONNECT packet; v4 clients' namespace query becomes the auth dict."""
    if packet.kind is not PacketKind.CONNECT:
        raise SocketIOPacketError("not a CONNECT packet")
    auth: dict[str, Any] = dict(packet.data) if isinstance(packet.data, dict) else {}
    if packet.query:
        auth.update(parse_qsl(packet.query, keep_blank_values=True))
    pid = auth.pop("pid", None)
    offset = auth.pop("offset", None)
    return ConnectRequest(
        packet.namespace,
        auth,
        pid if isinstance(pid, str) else None,
        offset if isinstance(offset, str) else None,
    )
