"""HTTP long-polling for Socket.IO clients: the handshake GET, held GETs, POSTs, the CORS
headers and preflight, on the request gate's ``Serve`` (``smartsocket/http_requests.py``).

Spec: socket.io/docs/v4/engine-io-protocol ("HTTP long-polling"). A GET without sid opens a
session and answers its open packet; a GET with one is answered when the session has
something to send (held until then: the next ping bounds the wait); a POST carries packets
and is answered "ok". Every answer carries CORS headers when the request has an allowed
``Origin`` (``allowed_origins``; unset: every origin), and OPTIONS is the preflight. Errors are
Engine.IO's JSON bodies: 400 (``{"code": 1, "message": "Session ID unknown"}`` ...), 403 for
an origin that is not allowed, 413 for a body over ``maxPayload`` (the gate, unread).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import cast

from smartsocket.http_requests import HttpRequest, HttpResponse
from smartsocket.protocol.socketio import Action, EngineIOError, error_body
from smartsocket.protocol.socketio.errors import EngineErrorCode
from smartsocket.security import origin_allowed
from smartsocket.server.socketio.session import ClientSession

_JSON = "application/json"
_OK_TYPE = "text/html"  # what the reference answers a POST with


def cors_headers(
    headers: Mapping[str, str], origins: tuple[re.Pattern[str], ...] | None
) -> dict[str, str] | None:
    """The CORS headers for a request (none without ``Origin``); None: origin refused."""
    origin = headers.get("Origin")
    if origin is None:
        return {}
    if not origin_allowed(origin, origins):
        return None
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def preflight(headers: Mapping[str, str], cors: dict[str, str]) -> HttpResponse:
    """The answer to OPTIONS (a browser's preflight of a POST with its headers)."""
    allow = dict(cors)
    allow["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    asked = headers.get("Access-Control-Request-Headers")
    if asked:
        allow["Access-Control-Allow-Headers"] = asked
    allow["Access-Control-Max-Age"] = "86400"
    return HttpResponse(204, headers=allow)


def engine_error(code: EngineErrorCode, status: int, cors: Mapping[str, str]) -> HttpResponse:
    return HttpResponse(status, error_body(code), _JSON, dict(cors))


def _failed(session: ClientSession, exc: EngineIOError, cors: Mapping[str, str]) -> HttpResponse:
    session.perform(cast("list[Action]", list(exc.actions)))
    return engine_error(exc.code, exc.status, cors)


async def handshake(
    request: HttpRequest, new_session: Callable[[HttpRequest], ClientSession | None],
    cors: Mapping[str, str],
) -> HttpResponse:
    session = new_session(request)
    if session is None:  # over max_connections_per_ip
        return engine_error(EngineErrorCode.BAD_REQUEST, 429, cors)
    return await get(request, session, cors)


async def get(request: HttpRequest, session: ClientSession, cors: Mapping[str, str]
              ) -> HttpResponse:
    return await answer_get(session, cors)


async def answer_get(session: ClientSession, cors: Mapping[str, str]) -> HttpResponse:
    """A held GET of ``session``: answered when it has something to send."""
    try:
        future = session.polling_get()
    except EngineIOError as exc:
        return _failed(session, exc, cors)
    try:
        answer = await future
    except asyncio.CancelledError:  # the client went away: its session's transport is gone
        session.polling_aborted(future)
        raise
    return HttpResponse(200, answer.body, answer.content_type, dict(cors))


async def post(request: HttpRequest, session: ClientSession, cors: Mapping[str, str]
               ) -> HttpResponse:
    return answer_post(session, request.body, cors)


def answer_post(session: ClientSession, body: bytes, cors: Mapping[str, str]) -> HttpResponse:
    """A POST of packets to ``session``."""
    try:
        read = session.polling_post(body)
    except EngineIOError as exc:
        return _failed(session, exc, cors)
    if not read:  # over the session's rate limits (rate_limit_messages, rate_limit_bytes)
        return engine_error(EngineErrorCode.BAD_REQUEST, 429, cors)
    return HttpResponse(200, b"ok", _OK_TYPE, dict(cors))
