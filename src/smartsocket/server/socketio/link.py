"""``NamespaceLink``: the connection (``SocketConnection``) of one ``SocketIOSocket``: its
client's session, seen from one namespace."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.socketio import EncodedPacket
from smartsocket.server.socketio.socket import SocketIOSocket, translate

if TYPE_CHECKING:
    from smartsocket.compression import MessageDeflater
    from smartsocket.server.socketio.session import ClientSession


class NamespaceLink:
    """What a socket in ``namespace`` writes, and how it closes, through ``session``."""

    __slots__ = ("admitted_socket", "namespace", "session", "socket", "write", "write_text")

    def __init__(self, session: ClientSession, namespace: str, socket: SocketIOSocket) -> None:
        self.session = session
        self.namespace = namespace
        self.socket: SocketIOSocket | None = socket
        self.admitted_socket = False  # its CONNECT was answered
        # SocketIOLink.write: the session's own (every ack goes through it: no extra call)
        self.write: Callable[[EncodedPacket], None] = session.write
        self.write_text: Callable[[bytes], None] = session.write_text

    def drop(self, code: int, reason: str) -> None:
        """The socket is over: tell it (and, through it, the application) once."""
        socket, self.socket = self.socket, None
        self.admitted_socket = False
        if socket is not None:
            socket.on_close(code, reason)

    # SocketIOLink

    def admitted(self) -> None:
        self.session.admitted(self)

    @property
    def offsets(self) -> bool:
        return self.session.offsets

    # SocketConnection

    @property
    def closed(self) -> bool:
        return self.socket is None

    @property
    def remote_address(self) -> tuple[Any, ...] | None:
        return self.session.remote_address

    @property
    def deflater(self) -> MessageDeflater | None:
        return None

    def send_frame(self, frame: bytes) -> None:
        """A broadcast's native frame (the same object for every member)."""
        mark = self.session.broadcast_frame(frame, self.namespace)
        if mark is not None and self.socket is not None:
            self.socket.sent_mark(mark)

    def send_message(self, payload: bytes, binary: bool = False) -> int:
        """A native payload (``SocketIOSocket`` translates its own: this is a fallback)."""
        packet = translate(payload, binary, self.namespace, self.session.offsets)
        if isinstance(packet, EncodedPacket):
            self.session.write(packet)
        return len(payload)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.session.close_link(self, code, reason)

    def abort(self) -> None:
        self.session.close_link(self, CloseCode.GOING_AWAY, "aborted")
