"""SmartSocket behind another web server's WebSockets: ``smartsocket.asgi`` (FastAPI, Starlette,
any ASGI server) and ``smartsocket.integrations.aiohttp``.

Those servers own the connection (handshake, framing, compression, close handshake); the
``SmartSocket`` object is the same one the native transport uses: handlers, rooms, broadcasts,
acks both ways, ``$welcome`` and the heartbeat, stats, limits and authentication.

``bridge.py`` holds ``Bridge``: a ``Socket`` carried by the host server's WebSocket; this module
admits a connection (``admit``) and starts the server once (``ensure_started``).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from smartsocket.integrations.bridge import Bridge, frame_payload
from smartsocket.protocol import SUBPROTOCOL
from smartsocket.server import live
from smartsocket.transport import ConnectionHandler, HandshakeRequest, HttpResponse

if TYPE_CHECKING:
    from smartsocket.server import SmartSocket

__all__ = ["Bridge", "admit", "ensure_started", "frame_payload"]


_starts: weakref.WeakKeyDictionary[SmartSocket, asyncio.Future[None]] = (
    weakref.WeakKeyDictionary()
)


async def ensure_started(server: SmartSocket) -> None:
    """``server.start(listen=False)``, once: connections that arrive while it runs wait for
    it. Once started this way and closed, the server stays closed (new connections get 503)
    rather than starting again behind the host's back."""
    started = _starts.get(server)
    if started is None:
        started = _starts[server] = asyncio.ensure_future(server.start(listen=False))
    await asyncio.shield(started)


def admit(
    server: SmartSocket, request: HandshakeRequest, path: str
) -> HttpResponse | tuple[ConnectionHandler[Any], str | None]:
    """What a WebSocket upgrade gets: the HTTP refusal, or the connection's handler and the
    subprotocol to accept. ``path`` is below the mount point: ``/smartsocket/live`` is the
    live stats feed, anything else a SmartSocket connection (the host routed it to us).
    The checks are the native server's (``server.http.route_request``), except the WebSocket
    ones the host server does itself."""
    offered = request.header("Sec-WebSocket-Protocol")
    subprotocol = None
    if offered is not None:
        if SUBPROTOCOL not in (p.strip() for p in offered.split(",")):
            body = f"unsupported subprotocol; this server speaks {SUBPROTOCOL}\n".encode()
            return HttpResponse(400, body)
        subprotocol = SUBPROTOCOL
    if path.rstrip("/") == live.PATH:
        accepted = server.open_live(request)
        if isinstance(accepted, HttpResponse):
            return accepted
        return accepted.handler, subprotocol
    socket = server.open_socket(request)
    if isinstance(socket, HttpResponse):
        return socket
    return socket, subprotocol
