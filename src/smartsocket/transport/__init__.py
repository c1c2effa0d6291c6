"""The picows adapter: the only package that imports picows.

It turns picows frames into whole, validated messages for a ``ConnectionHandler`` and gives the
layers above a small write API. Server-side writes are coalesced: every frame for a connection
in one event-loop iteration goes out in one ``write``/``writev`` at the end of the iteration
(DESIGN.md: the number of system calls, not Python, bounds fan-out).

Its modules, lowest first: ``closing`` (the close timeout, a finished connection's outcome, the
linger after an answered close), ``connection`` (the ``Connection`` base: frames in, messages
out, the close handshake), ``coalescer`` (``WriteCoalescer``), ``server_connection``
(``ServerConnection``, ``build_frame``), ``client`` (``ClientConnection``, ``connect``) and
``listener`` (``create_server``: the request gate in front of picows' server protocol).
"""

from smartsocket.http_requests import (
    HandshakeRequest,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    Serve,
    ServedConnections,
)
from smartsocket.transport.client import (
    ClientConnection,
    HandshakeError,
    connect,
    handshake_status,
)
from smartsocket.transport.closing import CLOSE_TIMEOUT
from smartsocket.transport.coalescer import WriteCoalescer
from smartsocket.transport.connection import FRAME_BATCH, Connection, ConnectionHandler
from smartsocket.transport.listener import (
    ACCEPTS_PER_TICK,
    Accept,
    Router,
    create_server,
    effective_backlog,
)
from smartsocket.transport.server_connection import ServerConnection, build_frame

__all__ = [
    "ACCEPTS_PER_TICK", "CLOSE_TIMEOUT", "FRAME_BATCH", "Accept", "ClientConnection",
    "Connection", "ConnectionHandler", "HandshakeError", "HandshakeRequest", "HttpLimits",
    "HttpRequest", "HttpResponse", "Router", "Serve", "ServedConnections", "ServerConnection",
    "WriteCoalescer", "build_frame", "connect", "create_server", "effective_backlog",
    "handshake_status",
]
