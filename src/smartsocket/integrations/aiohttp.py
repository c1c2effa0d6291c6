"""Serve a ``SmartSocket`` inside an ``aiohttp.web.Application`` (``pip install
smartsocket[aiohttp]``).

    from aiohttp import web
    from smartsocket import SmartSocket
    from smartsocket.integrations.aiohttp import setup

    server = SmartSocket()
    app = web.Application()
    setup(app, server, path="/ws")      # clients connect to ws://host:port/ws
    web.run_app(app)

``setup`` adds the WebSocket route and, below it, the native server's other endpoints
(``<path>/smartsocket/health``, ``/smartsocket/stats``, ``/smartsocket/dashboard``,
``/metrics`` and the live stats WebSocket ``/smartsocket/live``), and ties the server to the
app's start-up and shutdown: at shutdown running handlers finish and clients are closed with
1001, as with the native server. ``websocket_handler(server)`` is the bare request handler,
for your own routing.

aiohttp owns the WebSocket (handshake, framing, permessage-deflate when
``enable_compression`` is on, the close handshake); the ``SmartSocket`` object is the usual
one. See ``smartsocket.integrations`` for how connections are bridged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import WSMsgType, web

from smartsocket.integrations import Bridge, admit, ensure_started
from smartsocket.protocol import SUBPROTOCOL
from smartsocket.server import SmartSocket, http, live
from smartsocket.transport import CLOSE_TIMEOUT, ConnectionHandler, HandshakeRequest, HttpResponse

__all__ = ["AiohttpConnection", "setup", "websocket_handler"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
# Recent aiohttp versions can hand text messages over undecoded: we decode bytes anyway.
_RAW_TEXT = "decode_text" in inspect.signature(web.WebSocketResponse.__init__).parameters


def setup(app: web.Application, server: SmartSocket, path: str = "/ws") -> None:
    """Serve ``server`` at ``path`` of ``app`` and run it with the app (start-up, graceful
    shutdown)."""
    path = "/" + path.strip("/") if path.strip("/") else "/"
    app.router.add_get(path, websocket_handler(server))
    prefix = path.rstrip("/")
    for route in http.ROUTES:
        app.router.add_get(prefix + route, _http_handler(server, route))
    app.router.add_get(prefix + live.PATH, websocket_handler(server, live.PATH))

    async def start(app: web.Application) -> None:
        await ensure_started(server)

    async def stop(app: web.Application) -> None:
        await server.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


def websocket_handler(server: SmartSocket, endpoint: str = "/") -> Handler:
    """An aiohttp request handler that serves SmartSocket connections (``endpoint``
    ``/smartsocket/live``: the live stats feed)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await ensure_started(server)  # at the first connection, without setup()
        cfg = server.config
        options: dict[str, Any] = {
            # aiohttp answers with it when the client offers it (admit() refused the rest).
            "protocols": (SUBPROTOCOL,),
            "compress": cfg.enable_compression,
            "max_msg_size": cfg.max_message_size,  # over it aiohttp closes with 1009 itself
            "timeout": CLOSE_TIMEOUT,  # how long close() waits for the peer's answer
        }
        if _RAW_TEXT:
            options["decode_text"] = False
        ws = web.WebSocketResponse(**options)
        if not ws.can_prepare(request):
            return _response(HttpResponse(426, b"WebSocket upgrade expected\n",
                                          headers={"Sec-WebSocket-Version": "13"}))
        handshake = HandshakeRequest(request.path, parse_qs(request.query_string),
                                     request.headers)
        admitted = admit(server, handshake, endpoint)
        if isinstance(admitted, HttpResponse):
            return _response(admitted)
        handler, _ = admitted
        await ws.prepare(request)
        conn = AiohttpConnection(handler, server, ws, request)
        await conn.run()
        return ws

    return handle


class AiohttpConnection(Bridge):
    """One SmartSocket connection over an ``aiohttp.web.WebSocketResponse``."""

    __slots__ = ("_transport", "_ws")

    def __init__(
        self, handler: ConnectionHandler[Any], server: SmartSocket,
        ws: web.WebSocketResponse, request: web.Request,
    ) -> None:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        super().__init__(handler, server.config, peer)
        self._ws = ws
        self._transport = transport

    async def _send(self, data: bytes | memoryview, binary: bool) -> None:
        await self._ws.send_frame(bytes(data), _BINARY if binary else _TEXT)

    async def _send_close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())

    def _hard_close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def _read_loop(self) -> tuple[int, str]:
        ws, deliver = self._ws, self._deliver
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is _TEXT:
                data = msg.data
                deliver(data if type(data) is bytes else data.encode(), False)
            elif kind is _BINARY:
                deliver(msg.data, True)
            elif kind is WSMsgType.CLOSE:
                return int(msg.data), msg.extra or ""
            elif kind in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return ws.close_code or 1006, str(msg.data or "")


def _http_handler(server: SmartSocket, route: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        handshake = HandshakeRequest(route, parse_qs(request.query_string), request.headers)
        return _response(http.ROUTES[route](server, handshake))

    return handle


def _response(response: HttpResponse) -> web.Response:
    headers = {"Content-Type": response.content_type, "Cache-Control": "no-store",
               **response.headers}
    return web.Response(status=response.status, body=response.body, headers=headers)
