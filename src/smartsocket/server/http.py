"""Plain HTTP on the WebSocket port: stats, health and static files (GET and HEAD, answered
at once), and the path prefixes served by async handlers (``SERVED``: any method, a body, an
answer awaited; see ``smartsocket/http_requests.py``).

Files in the package's ``static/`` folder are served at ``/smartsocket/<name>``. They are read
once, at first request, and kept in memory. ``/`` answers ``server.home_page`` (the demo app's
chat page) or, for the user's own app, a short page that says what the server is.
"""

from __future__ import annotations

import hmac
import mimetypes
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from smartsocket import compression
from smartsocket.protocol import SUBPROTOCOL
from smartsocket.security import bearer_token
from smartsocket.server import api, live, prometheus
from smartsocket.transport import Accept, HandshakeRequest, HttpResponse, Serve

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.server.api import HttpApi
    from smartsocket.server.socket import Socket

WS_PATHS = frozenset({"/", "/smartsocket", "/smartsocket/"})  # where the WebSocket is served
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


class HttpHost(Protocol):
    """What the endpoints use of their server: public members of ``SmartSocket`` only."""

    @property
    def config(self) -> Config: ...

    @property
    def url(self) -> str: ...

    @property
    def home_page(self) -> bytes | None: ...

    def stats(self, *, cluster: bool = False) -> dict[str, Any]: ...

    def health(self) -> tuple[int, dict[str, Any]]: ...

    def metrics(self) -> bytes: ...

    def open_socket(self, request: HandshakeRequest) -> HttpResponse | Socket: ...

    def open_live(self, request: HandshakeRequest) -> HttpResponse | Accept: ...

    @property
    def api(self) -> HttpApi: ...


Route = Callable[[HttpHost, HandshakeRequest], HttpResponse]
# A served prefix's router: an answer now (e.g. 404, 405) or Serve(handler) for the gate.
ServedRoute = Callable[[HttpHost, HandshakeRequest], "HttpResponse | Serve"]


def authorized(config: Config, request: HandshakeRequest) -> bool:
    """Whether the request carries ``stats_token`` (when one is configured)."""
    expected = config.stats_token
    if not expected:
        return True
    token = bearer_token(request.headers, request.query) or ""
    return hmac.compare_digest(token.encode(), expected.encode())


def _stats(server: HttpHost, request: HandshakeRequest) -> HttpResponse:
    if not authorized(server.config, request):
        return HttpResponse(401, b"stats token required\n", headers={"WWW-Authenticate": "Bearer"})
    cluster = request.query.get("cluster", ["0"])[-1] not in ("", "0", "false")
    return HttpResponse(200, msgspec.json.encode(server.stats(cluster=cluster)), _JSON)


def _health(server: HttpHost, request: HandshakeRequest) -> HttpResponse:
    status, body = server.health()
    return HttpResponse(status, msgspec.json.encode(body), _JSON)


def _metrics(server: HttpHost, request: HandshakeRequest) -> HttpResponse:
    if not authorized(server.config, request):
        return HttpResponse(401, b"stats token required\n", headers={"WWW-Authenticate": "Bearer"})
    return HttpResponse(200, server.metrics(), prometheus.CONTENT_TYPE)


def _dashboard(server: HttpHost, request: HandshakeRequest) -> HttpResponse:
    page = static_file("dashboard.html")
    return page if page is not None else HttpResponse(404, b"dashboard not installed\n")


def _favicon(server: HttpHost, request: HandshakeRequest) -> HttpResponse:
    return HttpResponse(204)  # browsers ask on every page: answer without a 404 in the console


ROUTES: dict[str, Route] = {
    "/favicon.ico": _favicon,
    "/smartsocket/stats": _stats,
    "/smartsocket/health": _health,
    "/metrics": _metrics,
    "/smartsocket/dashboard": _dashboard,
}


# Path prefixes (ending in "/"; the bare prefix without it matches too) whose plain requests
# go to an async handler. Checked in order, before the GET routes. Add one per feature.
SERVED: list[tuple[str, ServedRoute]] = [
    (api.PREFIX, lambda server, request: server.api.route(request)),
]


def served_route(server: HttpHost, request: HandshakeRequest) -> HttpResponse | Serve | None:
    """The outcome of a request on a ``SERVED`` prefix, or None."""
    path = request.path
    for prefix, handler in SERVED:
        if path.startswith(prefix) or path == prefix[:-1]:
            return handler(server, request)
    return None


_METHOD_NOT_ALLOWED = HttpResponse(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"})


def route(server: HttpHost, request: HandshakeRequest) -> HttpResponse:
    path = request.path.rstrip("/") or "/"
    handler = ROUTES.get(path)
    if handler is not None:
        return handler(server, request)
    if path == "/":
        if server.home_page is not None:
            return HttpResponse(200, server.home_page, _HTML)
        return HttpResponse(200, _INDEX.format(url=server.url).encode(), _HTML)
    # index.html is the demo app's page: only its home_page serves it
    if path.startswith("/smartsocket/") and path != "/smartsocket/index.html":
        page = static_file(path.removeprefix("/smartsocket/"))
        if page is not None:
            return page
    return HttpResponse(404, b"not found\n")


@cache
def static_file(name: str) -> HttpResponse | None:
    """A file of the package's static folder, or None (never outside that folder)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    resource = resources.files("smartsocket").joinpath("static", name)
    if not resource.is_file():
        return None
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "text/javascript"):
        kind += "; charset=utf-8"
    return HttpResponse(200, resource.read_bytes(), kind, {"Cache-Control": "max-age=300"})


_INDEX = """<!doctype html>
<html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>SmartSocket server</title>
<style>body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 40em; margin: 2em auto;
padding: 0 1em; }} code {{ overflow-wrap: anywhere; }}</style>
<h1>SmartSocket server</h1>
<p>This is a SmartSocket WebSocket server. Connect a client to <code>{url}</code>
(subprotocol <code>smartsocket.v1</code>); its events are the application's own.</p>
<ul>
<li><a href="/smartsocket/dashboard">Dashboard</a> (live stats;
<code>?token=...</code> when the server has a stats token)</li>
<li>Browser client: <a href="/smartsocket/client.js">/smartsocket/client.js</a> (classic
script) and <a href="/smartsocket/client.mjs">/smartsocket/client.mjs</a> (ES module)</li>
<li><a href="/smartsocket/health">Health</a> ·
<a href="/smartsocket/stats">stats (JSON)</a> · <a href="/metrics">Prometheus metrics</a></li>
<li>Documentation: the package's README; the wire protocol, to write a client:
<code>docs/protocol.md</code></li>
</ul>
</html>
"""


def route_request(
    server: HttpHost, request: HandshakeRequest
) -> HttpResponse | Accept | Serve:
    """Every request on the port: served prefixes (``SERVED``), plain GETs (``route``), the
    live stats stream, and the WebSocket upgrade with its checks (path, version, subprotocol,
    admission, deflate)."""
    if not request.is_upgrade:
        served = served_route(server, request)
        if served is not None:
            return served
        if request.method not in ("GET", "HEAD"):
            return _METHOD_NOT_ALLOWED
        return route(server, request)
    if request.path == live.PATH:
        return server.open_live(request)
    if request.path not in WS_PATHS:
        return HttpResponse(404, b"no WebSocket endpoint here; use / or /smartsocket\n")
    if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
        return HttpResponse(
            426, b"WebSocket version 13 required\n",
            headers={"Sec-WebSocket-Version": "13"},
        )
    headers: dict[str, str] = {}
    offered = request.header("Sec-WebSocket-Protocol")  # may repeat (RFC 6455 11.3.4)
    if offered is not None:
        names = [p.strip() for p in offered.split(",")]
        if SUBPROTOCOL not in names:
            return HttpResponse(
                400, f"unsupported subprotocol; this server speaks {SUBPROTOCOL}\n".encode()
            )
        headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
    socket = server.open_socket(request)
    if isinstance(socket, HttpResponse):
        return socket
    deflate = None
    if server.config.enable_compression:
        deflate = compression.negotiate(
            request.header("Sec-WebSocket-Extensions"),
            context_takeover=server.config.compression_context_takeover,
            max_window_bits=server.config.compression_max_window_bits,
        )
        if deflate is not None:
            headers["Sec-WebSocket-Extensions"] = deflate.response_header()
    return Accept(socket, headers, deflate)
