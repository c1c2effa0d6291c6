"""Node-to-node messages: typed msgspec Structs, MessagePack on the wire, versioned.

Every message travels as an ``Envelope`` ``[v, src, body]``: ``v`` is the format version
(``VERSION``), ``src`` the sending node's id and ``body`` one of the tagged Structs below, kept
as raw MessagePack until the version has been checked. A node drops (and counts, and logs) a
message of another version instead of misreading it.

Broadcasts carry the payload the origin already encoded (and, when compression is on and the
payload is over the threshold, already compressed): no node re-encodes or re-compresses.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

VERSION: Final = 1


class Envelope(msgspec.Struct, array_like=True, gc=False):
    v: int
    src: str  # the node that sent it
    body: msgspec.Raw


class _Body(msgspec.Struct, array_like=True, gc=False, tag_field="t"):
    pass


class Broadcast(_Body, tag="b"):
    """An encoded event for every member of ``room`` (every socket when ``room`` is None)."""

    room: str | None
    payload: bytes  # the protocol v1 envelope, encoded once at the origin
    binary: bool
    deflated: bytes | None = None  # compressed payload (None: not tried, or saves < 10%)
    tried: bool = False  # the origin tried to compress: ``deflated`` None means "send plain"
    exclude: list[str] = []  # socket ids that must not receive it


class PresenceDelta(_Body, tag="p"):
    """A socket joined or left a presence room; ``payload`` is the encoded ``$presence``."""

    room: str
    sid: str
    joined: bool
    info: Any
    payload: bytes
    seq: int = 0  # the sender's presence sequence number (newer wins)


class Heartbeat(_Body, tag="h"):
    """A node is alive. ``epoch`` changes when it reconnects to the broker (peers resync)."""

    epoch: int
    interval: float
    started: float  # wall clock
    stats: dict[str, int | float] = {}


class Bye(_Body, tag="x"):
    """A node is shutting down: drop it now instead of after ``node_timeout``."""


class ServerEvent(_Body, tag="e"):
    name: str
    data: bytes  # MessagePack


class Query(_Body, tag="q"):
    """A request to one node or to all; answered with a ``Reply`` to the sender's inbox.

    ``kind``: ``sockets`` (records of local sockets, ``room`` optional), ``presence`` (local
    members of ``room`` with their info), ``send`` / ``join`` / ``leave`` / ``disconnect`` /
    ``call`` on socket ``sid``; ``moved`` / ``gone``: session ``sid`` of the receiver resumed
    on the sender (recovery), or ended there for good.
    """

    id: int
    kind: str
    sid: str | None = None
    room: str | None = None
    event: str | None = None
    data: bytes | None = None  # MessagePack (call), or an encoded v1 payload (send)
    binary: bool = False
    code: int = 0
    reason: str = ""
    timeout: float = 0.0
    want_reply: bool = True
    reply_to: str = ""  # answer this node instead of the sender (a forwarded query)


class Reply(_Body, tag="r"):
    id: int
    ok: bool = True
    result: bytes | None = None  # MessagePack
    error: str | None = None  # error code when not ok
    message: str = ""


class SocketRecord(msgspec.Struct, array_like=True, gc=False):
    """One socket somewhere in the cluster (``server.fetch_sockets()``)."""

    sid: str
    node: str
    rooms: list[str]
    presence: dict[str, Any]


class PresenceMember(msgspec.Struct, array_like=True, gc=False):
    """One member of a room as ``room.presence()`` lists it."""

    sid: str
    node: str
    info: dict[str, Any]


Body = Broadcast | PresenceDelta | Heartbeat | Bye | ServerEvent | Query | Reply

_encoder = msgspec.msgpack.Encoder()
_encode = _encoder.encode
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_body_decoder: msgspec.msgpack.Decoder[Body] = msgspec.msgpack.Decoder(Body)
_any_decoder = msgspec.msgpack.Decoder()


class VersionMismatch(ValueError):
    def __init__(self, version: int, src: str) -> None:
        super().__init__(f"message version {version} from node {src!r} (we speak {VERSION})")
        self.version = version
        self.src = src


def encode(src: str, body: Body) -> bytes:
    return _encode(Envelope(VERSION, src, msgspec.Raw(_encode(body))))


def decode_envelope(data: bytes) -> Envelope:
    """The envelope only (cheap): check ``v`` and ``src`` before decoding the body."""
    return _envelope_decoder.decode(data)


def decode_body(envelope: Envelope) -> Body:
    if envelope.v != VERSION:
        raise VersionMismatch(envelope.v, envelope.src)
    return _body_decoder.decode(envelope.body)


def pack(value: Any) -> bytes:
    """Application data (server events, call arguments and results) as MessagePack."""
    return _encode(value)


def unpack(data: bytes | None) -> Any:
    return None if data is None else _any_decoder.decode(data)
