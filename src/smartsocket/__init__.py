"""SmartSocket: a fast real-time WebSocket server and clients for Python.

Server: ``SmartSocket``, ``Socket``, ``Room``, ``AuthRequest``. Client: ``Client`` and ``connect``.
Publishing from other processes: ``Emitter``, ``AsyncEmitter`` (docs/emitter.md).
Every public name is importable from here (``__all__``); the modules behind it may move.
Protocol v1 is specified in docs/protocol.md.
"""

from smartsocket._version import __version__
from smartsocket.client import Client, connect
from smartsocket.config import Config
from smartsocket.emitter import AsyncEmitter, Emitter
from smartsocket.errors import (
    AckError,
    AckTimeout,
    ConfigError,
    ConnectionClosed,
    EmitterError,
    OfflineBufferFull,
    SmartSocketError,
    Unauthorized,
)
from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.security import AuthError, AuthRequest, LimitExceeded
from smartsocket.server import Room, SmartSocket, Socket

__all__ = [
    "AckError",
    "AckTimeout",
    "AsyncEmitter",
    "AuthError",
    "AuthRequest",
    "Client",
    "CloseCode",
    "Config",
    "ConfigError",
    "ConnectionClosed",
    "Emitter",
    "EmitterError",
    "ErrorCode",
    "LimitExceeded",
    "OfflineBufferFull",
    "Room",
    "SmartSocket",
    "SmartSocketError",
    "Socket",
    "Unauthorized",
    "__version__",
    "connect",
]
