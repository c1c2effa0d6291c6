"""The listening side: ``create_server`` (the request gate in front of picows' server
protocol, built per connection once a head asks for an upgrade), the router's ``Accept``, the
upgrade request's shared header strings and the listen backlog."""

from __future__ import annotations

import asyncio
import logging
import os
import socket as socket_module
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs

import picows
from multidict import CIMultiDict, istr  # picows' own header type
from picows import WSUpgradeRequest, WSUpgradeResponse
from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

from smartsocket.compression import DeflateParams
from smartsocket.handshake import HeadPacer, RequestGate
from smartsocket.http_requests import (
    HandshakeRequest,
    HttpLimits,
    HttpResponse,
    Serve,
    ServedConnections,
)
from smartsocket.transport.coalescer import WriteCoalescer
from smartsocket.transport.connection import ConnectionHandler
from smartsocket.transport.server_connection import ServerConnection

logger = logging.getLogger("smartsocket.transport")

try:  # picows' faster socket transport (a picows dependency): ~1.5x throughput, ~5 KB/conn more
    import aiofastnet

    _HAS_AIOFASTNET = True
except ImportError:  # pragma: no cover - picows installs it
    _HAS_AIOFASTNET = False

# The upgrade request's headers live as long as the connection (``Socket.request``, and picows
# keeps the request too). Parsed as they come, every connection holds its own copy of the same
# names ("Host", "Upgrade", ...) and of values that repeat from client to client (the Host, a
# browser's User-Agent, Origin, "websocket", "13"): ~1.9 KB per connection. Shared, ~0.5 KB.
# Both caches are bounded and only grow (nothing is evicted): once full, further strings are
# kept per connection as before, so odd clients cannot make them grow or churn.
_HEADER_NAMES_MAX = 256
_HEADER_VALUES_MAX = 1024
_HEADER_VALUE_MAX_LEN = 256
# Headers whose values repeat across clients; never credentials or per-connection nonces.
_SHARED_VALUE_HEADERS = frozenset({
    "host", "upgrade", "connection", "origin", "user-agent", "sec-websocket-version",
    "sec-websocket-protocol", "sec-websocket-extensions", "accept-encoding", "accept-language",
    "pragma", "cache-control", "x-forwarded-proto",
})  # not X-Forwarded-For / X-Real-IP: one value per client, they would only fill the cache
_header_names: dict[str, istr] = {}
_header_values: dict[str, str] = {}
_GET, _HTTP11 = b"GET", b"HTTP/1.1"
_NO_QUERY: Mapping[str, list[str]] = MappingProxyType({})


def _shared_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The same headers (same names, values and order), with the strings that repeat from
    connection to connection taken from the process-wide caches above."""
    names, values = _header_names, _header_values
    items = []
    for name, value in headers.items():
        key = names.get(name)
        if key is None:
            key = istr(name)
            if len(names) < _HEADER_NAMES_MAX:
                names[name] = key
        if len(value) <= _HEADER_VALUE_MAX_LEN and key.lower() in _SHARED_VALUE_HEADERS:
            shared = values.get(value)
            if shared is not None:
                value = shared
            elif len(values) < _HEADER_VALUES_MAX:
                values[value] = value
        items.append((key, value))
    return CIMultiDict(items)


# HTTP side of the listener


@dataclass(frozen=True, slots=True)
class Accept:
    """Accept a WebSocket upgrade; ``handler`` receives the connection's events."""

    handler: ConnectionHandler[ServerConnection]
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Sec-WebSocket-Protocol
    deflate: DeflateParams | None = None  # negotiated permessage-deflate, if any


Router = Callable[[HandshakeRequest], "HttpResponse | Accept | Serve"]


async def create_server(
    router: Router,
    *,
    host: str | None,
    port: int,
    max_message_size: int | None,
    handshake_timeout: float,
    ssl: ssl_module.SSLContext | None = None,
    reuse_port: bool = False,
    compression_level: int = 1,
    compression_threshold: int = 256,
    write_buffer_high: int = 64 << 10,
    max_write_buffer: int | None = None,
    max_fragments: int | None = None,
    frame_rate: float = 0.0,
    clock: Callable[[], int] = time.monotonic_ns,
    fast_transport: bool = True,
    backlog: int = 4096,
    http_limits: HttpLimits | None = None,
    served: ServedConnections | None = None,
) -> asyncio.Server:
    """Listen on host:port; ``router`` decides what each request gets (plain requests that
    it ``Serve``s obey ``http_limits``; their connections join ``served``, which the caller
    closes at shutdown)."""
    loop = asyncio.get_running_loop()
    coalescer = WriteCoalescer(loop)

    def factory(request: WSUpgradeRequest) -> Any:
        path, _, query = request.path.decode("latin-1").partition("?")
        # picows and the socket keep the request for the connection's lifetime: share what
        # repeats (picows validates the upgrade from these same headers after this returns).
        request.headers = headers = _upgrade_tokens(_shared_headers(request.headers))
        request.method, request.version = _GET, _HTTP11  # checked equal by picows' parser
        req = HandshakeRequest(path, parse_qs(query) if query else _NO_QUERY, headers)
        try:
            outcome = router(req)
        except Exception:
            logger.exception("router failed for %s", path)
            outcome = HttpResponse(500, b"internal server error\n")
        if isinstance(outcome, Serve):  # the gate serves plain requests; upgrades only here
            outcome = HttpResponse(400, b"this endpoint does not take a WebSocket upgrade\n")
        if isinstance(outcome, HttpResponse):
            return picows.WSUpgradeResponseWithListener(_http_response(outcome), None)
        listener = ServerConnection(
            outcome.handler, coalescer, max_message_size=max_message_size,
            deflate=outcome.deflate, compression_level=compression_level,
            compression_threshold=compression_threshold, write_buffer_high=write_buffer_high,
            max_write_buffer=max_write_buffer, max_fragments=max_fragments,
            frame_rate=frame_rate, clock=clock,
        )
        if outcome.headers:
            response = WSUpgradeResponse.create_101_response(extra_headers=dict(outcome.headers))
            return picows.WSUpgradeResponseWithListener(response, listener)
        return listener

    def plain(request: HandshakeRequest) -> HttpResponse | Serve:
        """Every request but a WebSocket upgrade, answered by the gate."""
        outcome = router(request)
        if isinstance(outcome, Accept):
            return HttpResponse(400, b"a WebSocket upgrade needs GET and HTTP/1.1\n")
        return outcome

    # What picows.ws_create_server would build for each connection (picows 2.3's WSProtocol
    # arguments), made only once the gate has seen a GET HTTP/1.1 request head.
    # An adapter, not the Logger: picows gives each connection a child Logger of a Logger
    # (~0.5 KiB of every idle connection's memory) and uses anything else as it is.
    picows_logger = logging.LoggerAdapter(logging.getLogger("picows.server"))
    max_frame_size = max_message_size or 2**62

    def websocket_protocol() -> asyncio.BufferedProtocol:
        protocol: asyncio.BufferedProtocol = WSProtocol(
            None, None, False, factory, picows_logger,
            True,  # disconnect_on_exception
            handshake_timeout,
            False, 20, 20, WSAutoPingStrategy.PING_WHEN_IDLE,  # no auto-ping: we send $ping
            False,  # auto-pong off: on_ws_frame answers pings after checking RSV bits
            max_frame_size,
            None,  # extra headers (client side only)
            1024,  # read buffer: grows on demand (picows allocates at least 2 KiB)
        )
        return protocol

    pacer = HeadPacer(loop)
    limits = http_limits or HttpLimits()
    per_ip = served if served is not None else ServedConnections(limits.max_per_ip)

    def gate() -> RequestGate:
        return RequestGate(websocket_protocol, plain, handshake_timeout, pacer, limits, per_ip)

    # The event loops accept up to ``backlog + 1`` queued connections per readiness event: with
    # a backlog of 4096, a storm's 2,000 connections were all accepted (a transport and a
    # protocol each) in one loop iteration, a ~300 ms stall for every established connection.
    # So the server is created with ACCEPTS_PER_TICK, which bounds that loop, and the kernel's
    # listen queue is then set to the real backlog (listen() again on the bound socket).
    kwargs: dict[str, Any] = {
        "ssl": ssl, "reuse_port": reuse_port or None, "backlog": ACCEPTS_PER_TICK,
    }
    server: asyncio.Server
    if fast_transport and _HAS_AIOFASTNET:
        server = await aiofastnet.create_server(loop, gate, host, port, **kwargs)
    else:
        server = await loop.create_server(gate, host, port, **kwargs)
    queue = effective_backlog(backlog)
    for listening in server.sockets:
        # A duplicate of the descriptor shares the socket: listen() on it sets its queue.
        with socket_module.socket(fileno=os.dup(listening.fileno())) as dup:
            dup.listen(queue)
    return server


ACCEPTS_PER_TICK = 16


SOMAXCONN = "/proc/sys/net/core/somaxconn"


def effective_backlog(wanted: int) -> int:
    """The listen backlog to ask for: ``wanted``, capped by the kernel's somaxconn (Linux
    silently truncates a larger one to it; reading it lets the server say what it got)."""
    try:
        with open(SOMAXCONN) as f:
            limit = int(f.read().strip())
    except (OSError, ValueError):
        return wanted
    return max(1, min(wanted, limit))


def _upgrade_tokens(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """RFC 6455 4.2.1: ``Connection`` must *include* the ``Upgrade`` token and ``Upgrade`` the
    ``websocket`` one (comma-separated lists, any case, possibly on several lines), whereas
    picows compares the whole first value with "upgrade" and refused ``keep-alive, Upgrade``
    (Firefox's header for years, and many proxies'). Reduce them to the bare tokens it wants."""
    for name, token in (("Connection", "upgrade"), ("Upgrade", "websocket")):
        values = headers.getall(name, [])
        if len(values) == 1 and values[0].lower() == token:
            continue  # the common case: nothing to do
        if any(part.strip().lower() == token for value in values for part in value.split(",")):
            headers[name] = token
    return headers


def _http_response(resp: HttpResponse) -> WSUpgradeResponse:
    headers = {"Content-Type": resp.content_type, "Cache-Control": "no-store", **resp.headers}
    response: WSUpgradeResponse
    if resp.status >= 400:
        response = WSUpgradeResponse.create_error_response(resp.status, resp.body, headers)
    else:
        response = WSUpgradeResponse.create_ok_response(resp.body, headers)
        response.status = HTTPStatus(resp.status)
    return response

