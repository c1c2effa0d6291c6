"""Exceptions of the Socket.IO front end's sans-I/O core; all are ``SmartSocketError``.

    SmartSocketError
    └── EngineIOError            Engine.IO rule broken; ``status`` and ``code`` say how to answer
        ├── PacketError          malformed Engine.IO packet or polling payload (400, code 3)
        ├── PayloadTooLarge      POST body over ``maxPayload`` (413)
        ├── PollingConflict      a second GET while one is pending (400, code 3; session closed)
        ├── UnknownSession       the session is closed or was never known (400, code 1)
        ├── UpgradeRefused       a WebSocket probe the session cannot take (400, code 3)
        ├── RequestRefused       bad method or query: EIO, transport, JSONP (request.py)
        └── SocketIOPacketError  malformed Socket.IO packet (the session closes: "parse error")
            └── AttachmentError  binary attachments that do not match their packet

Whose fault: every one of these is the peer's (a remote protocol error); the I/O layer answers
with the HTTP status or closes the session, and never lets one session harm another.
"""

from __future__ import annotations

from enum import IntEnum

from smartsocket.errors import SmartSocketError


class EngineErrorCode(IntEnum):
    """Codes of the JSON body of Engine.IO HTTP errors (``{"code": n, "message": "..."}``),
    as the reference server sends them and clients read them."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5


ERROR_MESSAGES: dict[EngineErrorCode, str] = {
    EngineErrorCode.UNKNOWN_TRANSPORT: "Transport unknown",
    EngineErrorCode.UNKNOWN_SID: "Session ID unknown",
    EngineErrorCode.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    EngineErrorCode.BAD_REQUEST: "Bad request",
    EngineErrorCode.FORBIDDEN: "Forbidden",
    EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


class EngineIOError(SmartSocketError):
    """The peer broke an Engine.IO rule. ``status`` is the HTTP status to answer a polling
    request with, ``code`` the Engine.IO error code for the JSON body."""

    status = 400
    code = EngineErrorCode.BAD_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # What the session returned while failing (a held GET answered, ``Closed``): the
        # I/O layer performs these too. Typed loosely: errors cannot import the session.
        self.actions: tuple[object, ...] = ()


class PacketError(EngineIOError):
    """A malformed Engine.IO packet or polling payload."""


class PayloadTooLarge(EngineIOError):
    """A POST body larger than ``maxPayload`` (the handshake told the client the limit)."""

    status = 413


class PollingConflict(EngineIOError):
    """A GET arrived while another GET of the same session was pending."""


class UnknownSession(EngineIOError):
    """The session is closed (or unknown): the client must open a new one."""

    code = EngineErrorCode.UNKNOWN_SID


class UpgradeRefused(EngineIOError):
    """A WebSocket probe for a session that is already upgrading or upgraded."""


class SocketIOPacketError(EngineIOError):
    """A malformed Socket.IO packet (bad type, namespace, ack id, JSON or payload shape)."""


class AttachmentError(SocketIOPacketError):
    """Binary attachments that do not match the packet that announced them."""


def error_body(code: EngineErrorCode) -> bytes:
    """The JSON body of an Engine.IO HTTP error: ``{"code":1,"message":"Session ID unknown"}``."""
    return b'{"code":%d,"message":"%s"}' % (int(code), ERROR_MESSAGES[code].encode())
