"""Serve a ``SmartSocket`` from any ASGI server, or inside a FastAPI / Starlette app.

    from fastapi import FastAPI
    from smartsocket import SmartSocket
    from smartsocket.asgi import SmartSocketASGI

    server = SmartSocket()              # handlers, rooms, auth: the usual API
    ws = SmartSocketASGI(server)
    app = FastAPI(lifespan=ws.lifespan)
    app.mount("/ws", ws)                # clients connect to ws://host:port/ws/

The same ``SmartSocket`` object serves these connections: handlers, rooms, broadcasts, acks
both ways, ``$welcome`` and the heartbeat, stats, rate limits, origin checks and
authentication. The ASGI server owns the WebSocket itself (handshake, framing,
permessage-deflate, the close handshake, the largest message it accepts); see
``smartsocket.integrations`` for how connections are bridged and docs/deployment.md for the
speed difference with the native server.

Below its mount point it also serves the GETs ``/smartsocket/health``, ``/smartsocket/stats``,
``/smartsocket/dashboard`` and ``/metrics``, and the live stats feed (a WebSocket at
``/smartsocket/live``); every other WebSocket that reaches it is a SmartSocket connection
(the router above decided), other HTTP requests get 404.

``SmartSocketASGI(server, app)`` wraps a whole ASGI app instead: SmartSocket takes the
WebSockets on ``/``, ``/smartsocket`` and ``/smartsocket/live`` and the GETs under
``/smartsocket/``; everything else (``/metrics`` too) goes to ``app``.

No dependency: this module only speaks the ASGI 3 interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from multidict import CIMultiDict, CIMultiDictProxy

from smartsocket.integrations import Bridge, admit, ensure_started
from smartsocket.server import SmartSocket, http, live
from smartsocket.server.http import WS_PATHS
from smartsocket.transport import ConnectionHandler, HandshakeRequest, HttpResponse

__all__ = ["ASGIConnection", "SmartSocketASGI"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DENIAL_EXTENSION = "websocket.http.response"
_OURS_IN_FRONT = WS_PATHS | {live.PATH}  # WebSocket paths taken from a wrapped app


class SmartSocketASGI:
    """An ASGI 3 application serving ``server``'s WebSockets (see the module docstring)."""

    def __init__(self, server: SmartSocket, app: ASGIApp | None = None) -> None:
        self.server = server
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            path = _local_path(scope)
            if self.app is None or path in _OURS_IN_FRONT:
                await self._websocket(scope, receive, send, path)
            else:
                await self.app(scope, receive, send)
        elif kind == "http":
            path = _local_path(scope).rstrip("/") or "/"
            route = http.ROUTES.get(path)
            if self.app is not None and not path.startswith("/smartsocket/"):
                route = None  # e.g. /metrics: the wrapped app may have its own
            if route is not None:
                await _send_http(send, route(self.server, _request(scope, path)))
            elif self.app is not None:
                await self.app(scope, receive, send)
            else:
                await _send_http(send, HttpResponse(404, b"not found\n"))
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif self.app is not None:
            await self.app(scope, receive, send)

    # lifecycle

    async def startup(self) -> None:
        """Start the server's heartbeat and stats (no port of its own). Done at the first
        connection anyway; ``lifespan`` and the ASGI lifespan protocol call it at start-up."""
        await ensure_started(self.server)

    async def shutdown(self) -> None:
        """Graceful: let running handlers finish, close every client with 1001."""
        await self.server.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``: mounted apps get no
        lifespan events of their own, so the host app's lifespan starts and stops ours."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is not None:
            # The wrapped app runs its lifespan; ours goes with its start-up and shutdown.
            async def send_wrapped(message: Message) -> None:
                if message["type"] == "lifespan.startup.complete":
                    await self.startup()
                elif message["type"] == "lifespan.shutdown.complete":
                    await self.shutdown()
                await send(message)

            await self.app(scope, receive, send_wrapped)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # WebSockets

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # gone before we answered
        await self.startup()
        admitted = admit(self.server, _request(scope, scope.get("path", "/")), path)
        if isinstance(admitted, HttpResponse):
            await _deny(scope, send, admitted)
            return
        handler, subprotocol = admitted
        accept: Message = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        client = scope.get("client")
        conn = ASGIConnection(
            handler, self.server, receive, send, tuple(client) if client else None
        )
        await conn.run()


class ASGIConnection(Bridge):
    """One SmartSocket connection over an ASGI WebSocket (``websocket.send`` needs ``str``
    for text, ``bytes`` for binary messages)."""

    __slots__ = ("_receive", "_send_asgi")

    def __init__(
        self, handler: ConnectionHandler[Any], server: SmartSocket, receive: Receive,
        send: Send, remote_address: tuple[Any, ...] | None,
    ) -> None:
        super().__init__(handler, server.config, remote_address)
        self._receive = receive
        self._send_asgi = send

    async def _send(self, data: bytes | memoryview, binary: bool) -> None:
        if binary:
            await self._send_asgi({"type": "websocket.send", "bytes": bytes(data)})
        else:
            await self._send_asgi({"type": "websocket.send", "text": str(data, "utf-8")})

    async def _send_close(self, code: int, reason: str) -> None:
        await self._send_asgi({"type": "websocket.close", "code": code, "reason": reason})

    async def _read_loop(self) -> tuple[int, str]:
        receive, deliver = self._receive, self._deliver
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    deliver(text.encode(), False)
                else:
                    deliver(message.get("bytes") or b"", True)
            elif kind == "websocket.disconnect":
                return int(message.get("code", 1005)), message.get("reason") or ""


def _local_path(scope: Scope) -> str:
    """The path below the mount point (Starlette's Mount keeps the full path in ``path``
    and the mount point in ``root_path``)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


def _request(scope: Scope, path: str) -> HandshakeRequest:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in scope.get("headers", ()):
        headers.add(name.decode("latin-1"), value.decode("latin-1"))
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return HandshakeRequest(path, query, CIMultiDictProxy(headers))


def _headers(response: HttpResponse) -> list[tuple[bytes, bytes]]:
    headers = {
        "content-type": response.content_type,
        "cache-control": "no-store",
        "content-length": str(len(response.body)),
        **{name.lower(): value for name, value in response.headers.items()},
    }
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


async def _send_http(send: Send, response: HttpResponse) -> None:
    await send(
        {"type": "http.response.start", "status": response.status, "headers": _headers(response)}
    )
    await send({"type": "http.response.body", "body": response.body})


async def _deny(scope: Scope, send: Send, response: HttpResponse) -> None:
    """Refuse an upgrade with ``response`` where the server supports the WebSocket Denial
    Response extension, else with the plain close before accept (HTTP 403)."""
    if _DENIAL_EXTENSION in (scope.get("extensions") or {}):
        await send(
            {"type": "websocket.http.response.start", "status": response.status,
             "headers": _headers(response)}
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1008})
