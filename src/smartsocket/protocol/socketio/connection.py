"""The Socket.IO side of one client, sans-I/O: namespaces joined, binary reassembly, and the
application events its packets mean.

The I/O layer gives it each Engine.IO message (``Deliver`` from ``EngineSession``) and sends
the ``EncodedPacket`` frames it returns through the session. The application's decisions stay
with the caller: a ``ConnectRequested`` is answered by ``accept`` or ``refuse`` (an unknown
namespace too: ``refuse(namespace, "Invalid namespace")``, as Socket.IO answers it).

Rules (spec "Socket.IO protocol", and the reference server's ``Client.ondecoded``): a packet
for a namespace the client has not joined, a second CONNECT to a joined one, or a
CONNECT_ERROR from a client is an invalid state: ``SocketIOPacketError``, and the caller closes
the session ("parse error"). Protocol v4 (Engine.IO v3 clients) joins ``/`` implicitly when
the session opens (``open_frames``) and has no CONNECT payload: the namespace's query is its
auth; a repeated CONNECT to ``/`` is ignored there, as the v4 reference did not refuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from smartsocket.protocol.socketio.errors import SocketIOPacketError
from smartsocket.protocol.socketio.socketio import (
    DEFAULT_NAMESPACE,
    EVENT,
    BinaryReassembler,
    ConnectRequest,
    EncodedPacket,
    PacketKind,
    SioPacket,
    args_to_data,
    connect_request,
    decode_plain,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
)


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The client asks to join ``request.namespace``: answer with ``accept`` or ``refuse``."""

    request: ConnectRequest


class EventReceived(msgspec.Struct, frozen=True, gc=False):
    """An event: ``data`` per the argument mapping; ``ack_id`` set when the client waits."""

    namespace: str
    name: str
    data: Any
    ack_id: int | None


class AckReceived(msgspec.Struct, frozen=True, gc=False):
    """The client answered the server's event ``ack_id`` (``data`` per the mapping)."""

    namespace: str
    ack_id: int
    data: Any


@dataclass(frozen=True, slots=True)
class NamespaceLeft:
    """The client left ``namespace`` (its DISCONNECT); the session itself stays open."""

    namespace: str


SioEvent = ConnectRequested | EventReceived | AckReceived | NamespaceLeft


class SocketIOConnection:
    """One client's Socket.IO state (``protocol``: 5, or 4 for Engine.IO v3 clients)."""

    __slots__ = ("_asked", "_joined", "_reassembler", "protocol")

    def __init__(
        self, *, protocol: int = 5, max_attachments: int = 10, max_attachment_bytes: int = 1_000_000
    ) -> None:
        self.protocol = protocol
        # Sets as dicts: 64 bytes empty instead of 216, for every idle client.
        self._joined: dict[str, None] = {}
        self._asked: dict[str, None] = {}  # CONNECTs awaiting the application's answer
        self._reassembler = BinaryReassembler(
            max_attachments=max_attachments, max_attachment_bytes=max_attachment_bytes
        )

    @property
    def namespaces(self) -> frozenset[str]:
        """The namespaces the client has joined."""
        return frozenset(self._joined)

    @property
    def buffered(self) -> int:
        """Attachment bytes held for an incomplete binary packet."""
        return self._reassembler.buffered

    def open_frames(self) -> tuple[EncodedPacket, ...]:
        """What to send right after the Engine.IO open packet: v4 joins ``/`` implicitly."""
        if self.protocol >= 5:
            return ()
        self._joined[DEFAULT_NAMESPACE] = None
        return (encode_connect(DEFAULT_NAMESPACE, protocol=4),)

    def receive(self, data: str | bytes) -> list[SioEvent]:
        """One Engine.IO message from the client; raises ``SocketIOPacketError``."""
        if isinstance(data, str):
            packet = self._reassembler.feed_text(data)
        else:
            packet = self._reassembler.feed_binary(data)
        return [] if packet is None else self._dispatch(packet)

    def receive_plain(self, text: str, start: int = 0) -> EventReceived | AckReceived | None:
        """The fast path of ``receive`` for its common message, an EVENT or ACK in ``/``
        (``decode_plain``; the packet starts at ``text[start]``): its event. None: anything
        else (or no plain packet may come now): call ``receive``, which decodes it or raises
        what is wrong."""
        if DEFAULT_NAMESPACE not in self._joined or self._reassembler.pending:
            return None
        plain = decode_plain(text, start)
        if plain is None:
            return None
        kind, ack_id, args = plain
        if kind is EVENT:
            # args_to_data(args[1:]), without the slice for the common one argument
            n = len(args)
            data = None if n == 1 else args[1] if n == 2 else tuple(args[1:])
            return EventReceived(DEFAULT_NAMESPACE, args[0], data, ack_id)
        assert ack_id is not None  # decode_plain refuses an ACK without id
        return AckReceived(DEFAULT_NAMESPACE, ack_id, args_to_data(args))

    def _dispatch(self, packet: SioPacket) -> list[SioEvent]:
        kind, namespace = packet.kind, packet.namespace
        if kind is PacketKind.CONNECT:
            if namespace in self._joined or namespace in self._asked:
                if self.protocol < 5 and namespace == DEFAULT_NAMESPACE:
                    return []
                raise SocketIOPacketError(f"second CONNECT to {namespace}")
            self._asked[namespace] = None
            return [ConnectRequested(connect_request(packet))]
        if namespace not in self._joined:
            raise SocketIOPacketError(f"{kind.name} for {namespace}: the client has not joined it")
        if kind is PacketKind.DISCONNECT:
            self._joined.pop(namespace, None)
            return [NamespaceLeft(namespace)]
        if kind in (PacketKind.EVENT, PacketKind.BINARY_EVENT):
            args = packet.data
            return [EventReceived(namespace, args[0], args_to_data(args[1:]), packet.id)]
        if kind in (PacketKind.ACK, PacketKind.BINARY_ACK):
            assert packet.id is not None  # decode() refuses an ACK without id
            return [AckReceived(namespace, packet.id, args_to_data(packet.data))]
        raise SocketIOPacketError("CONNECT_ERROR from a client")

    def accept(self, namespace: str, sid: str, *, pid: str | None = None) -> EncodedPacket:
        """Joins ``namespace``; returns the CONNECT answer to send. The caller also tells the
        Engine.IO session (``socketio_connected``): the connect timeout no longer applies."""
        self._asked.pop(namespace, None)
        self._joined[namespace] = None
        return encode_connect(namespace, sid, pid=pid, protocol=self.protocol)

    def refuse(self, namespace: str, message: str, data: Any = None) -> EncodedPacket:
        """Refuses a CONNECT (auth failed, unknown namespace); the session stays open."""
        self._asked.pop(namespace, None)
        return encode_connect_error(message, data, namespace=namespace, protocol=self.protocol)

    def leave(self, namespace: str) -> EncodedPacket | None:
        """The server removes the client from ``namespace``: the DISCONNECT to send (None if
        it had not joined)."""
        if namespace not in self._joined:
            return None
        self._joined.pop(namespace, None)
        return encode_disconnect(namespace)
