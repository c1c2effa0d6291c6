"""SmartSocket: a fast real-time WebSocket server and clients for Python.

Server: ``SmartSocket``, ``Socket``, ``Room``. Client: ``Client`` and ``connect``.
Protocol v1 is specified in docs/protocol.md.
"""

from smartsocket._version import __version__
from smartsocket.client import Client, connect
from smartsocket.config import Config
from smartsocket.errors import (
    AckError,
    AckTimeout,
    ConfigError,
    ConnectionClosed,
    OfflineBufferFull,
    SmartSocketError,
    Unauthorized,
)
from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.server import Room, SmartSocket, Socket

__all__ = [
    "AckError",
    "AckTimeout",
    "Client",
    "CloseCode",
    "Config",
    "ConfigError",
    "ConnectionClosed",
    "ErrorCode",
    "OfflineBufferFull",
    "Room",
    "SmartSocket",
    "SmartSocketError",
    "Socket",
    "Unauthorized",
    "__version__",
    "connect",
]
