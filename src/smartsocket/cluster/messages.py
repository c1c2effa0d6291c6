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

# 2: one message type per query kind (1 had ``Query.kind`` strings); 3: users (``SendToUser``,
# ``DisconnectUser``, the user of presence members and socket records).
VERSION: Final = 3


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
    user: str | None = None  # the member's ``socket.user``


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


# Requests to one node or to all, answered with a ``Reply`` to the sender's inbox (or to
# ``reply_to``: a request forwarded once to where the socket's session resumed). ``id`` is the
# request id ``Requests.request`` gives it.


class ListSockets(_Body, tag="qs"):
    """Records of the receiver's sockets (in ``room``, or all)."""

    id: int
    room: str | None = None


class ListPresence(_Body, tag="qp"):
    """The receiver's members of presence room ``room`` with their info."""

    id: int
    room: str


class CallSocket(_Body, tag="qc"):
    """``socket.call`` on socket ``sid``; the reply carries its ack reply."""

    id: int
    sid: str
    event: str
    data: bytes  # MessagePack
    binary: bool
    timeout: float
    reply_to: str = ""


class JoinRoom(_Body, tag="qj"):
    id: int
    sid: str
    room: str
    reply_to: str = ""


class LeaveRoom(_Body, tag="ql"):
    id: int
    sid: str
    room: str
    reply_to: str = ""


class DisconnectSocket(_Body, tag="qx"):
    id: int
    sid: str
    code: int
    reason: str
    reply_to: str = ""


# Notices: no reply.


class SendTo(_Body, tag="qd"):
    """A direct message for socket ``sid``: the event encoded once (protocol v1 payload)."""

    sid: str
    payload: bytes
    binary: bool
    reply_to: str = ""  # set when forwarded (never answered: it only marks the forward)


class SendToUser(_Body, tag="us"):
    """A direct message for every connection of ``user``, on every node: published on
    ``<prefix>.all`` (``all_channel``), which every node hears. Anyone may make one (an
    emitter too): ``messages.encode(src, SendToUser(user, encode_event(event, data), False))``.
    """

    user: str
    payload: bytes  # the protocol v1 envelope, encoded once at the origin
    binary: bool


class DisconnectUser(_Body, tag="ux"):
    """Close every connection of ``user`` (logout, ban); on ``<prefix>.all``. Every node
    replies with how many it closed (a packed int) to the sender's inbox."""

    id: int
    user: str
    code: int
    reason: str


class SessionMoved(_Body, tag="qm"):
    """Recovery: the receiver's session ``sid`` resumed on the sender."""

    sid: str


class SessionGone(_Body, tag="qg"):
    """Recovery: session ``sid`` (resumed on the sender) ended there for good."""

    sid: str


# What ``Requests.request`` sends (each has an ``id``), and what acts on one socket.
Request = (
    ListSockets | ListPresence | CallSocket | JoinRoom | LeaveRoom | DisconnectSocket
    | DisconnectUser
)
SocketOperation = JoinRoom | LeaveRoom | DisconnectSocket
ForSocket = CallSocket | JoinRoom | LeaveRoom | DisconnectSocket | SendTo


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
    user: str | None = None


class PresenceMember(msgspec.Struct, array_like=True, gc=False):
    """One member of a room as ``room.presence()`` lists it."""

    sid: str
    node: str
    info: dict[str, Any]
    user: str | None = None  # the member's ``socket.user``


Body = (
    Broadcast | PresenceDelta | Heartbeat | Bye | ServerEvent | Reply
    | ListSockets | ListPresence | CallSocket | JoinRoom | LeaveRoom | DisconnectSocket
    | SendTo | SessionMoved | SessionGone | SendToUser | DisconnectUser
)

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


def head(src: str) -> bytes:
    """The bytes every message ``encode(src, ...)`` makes starts with (the envelope up to its
    body): a node drops its own messages back from the broker by them, undecoded."""
    return _encode(Envelope(VERSION, src, msgspec.Raw(b"\xc0")))[:-1]


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
