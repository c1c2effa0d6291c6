"""Plain HTTP GETs on the WebSocket port: stats, health and a small index page."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from smartsocket._version import __version__
from smartsocket.transport import HandshakeRequest, HttpResponse

if TYPE_CHECKING:
    from smartsocket.server.app import SmartSocket

_JSON = "application/json"


def route(server: SmartSocket, request: HandshakeRequest) -> HttpResponse:
    path = request.path.rstrip("/") or "/"
    if path == "/smartsocket/stats":
        return HttpResponse(200, msgspec.json.encode(server.stats()), _JSON)
    if path == "/smartsocket/health":
        body = {"status": "closing" if server._closing else "ok", "version": __version__,
                "connections": len(server._sockets)}
        return HttpResponse(503 if server._closing else 200, msgspec.json.encode(body), _JSON)
    if path == "/":
        return HttpResponse(200, _INDEX.format(url=server.url).encode(), "text/html; charset=utf-8")
    return HttpResponse(404, b"not found\n")


_INDEX = """<!doctype html>
<meta charset="utf-8"><title>SmartSocket</title>
<h1>SmartSocket</h1>
<p>WebSocket endpoint: <code>{url}</code> (subprotocol <code>smartsocket.v1</code>).</p>
<p><a href="/smartsocket/stats">/smartsocket/stats</a> ·
<a href="/smartsocket/health">/smartsocket/health</a></p>
"""
