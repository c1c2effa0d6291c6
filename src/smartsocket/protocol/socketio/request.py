"""Checks of an Engine.IO HTTP request's method and query, before any session is touched.

Spec "Transports" / "Handshake": ``EIO`` (4, or 3 for older clients) and ``transport``
(``polling`` or ``websocket``) are mandatory, ``sid`` names an open session; without ``sid`` a
request opens one, which only a GET may do. The reference server answers a failed check with
400 and a JSON body (``errors.error_body``): unknown transport (0), bad handshake method (2),
bad request (3), unsupported protocol version (5). JSONP polling (``j=``) is refused: the v4
clients dropped it, and it needs script-injection escaping we would rather not carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smartsocket.protocol.socketio.errors import EngineErrorCode, EngineIOError
from smartsocket.protocol.socketio.session import POLLING, WEBSOCKET


class RequestRefused(EngineIOError):
    """The request's method or query breaks a rule; ``code`` says which (status 400)."""

    def __init__(self, code: EngineErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """What an accepted request asks: ``sid`` None opens a session."""

    eio: int
    transport: str
    sid: str | None
    method: str


def check_request(
    method: str,
    query: Mapping[str, str],
    *,
    transports: tuple[str, ...] = (POLLING, WEBSOCKET),
    allow_eio3: bool = True,
) -> EngineRequest:
    """Validates one request to the Engine.IO path; raises ``RequestRefused``."""
    version = query.get("EIO", "")
    if version not in ("3", "4") or (version == "3" and not allow_eio3):
        raise RequestRefused(
            EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION, f"unsupported EIO={version!r}"
        )
    transport = query.get("transport", "")
    if transport not in transports:
        raise RequestRefused(EngineErrorCode.UNKNOWN_TRANSPORT, f"transport {transport!r}")
    if "j" in query:
        raise RequestRefused(EngineErrorCode.BAD_REQUEST, "JSONP polling is not supported")
    sid = query.get("sid") or None
    if transport == WEBSOCKET and method != "GET":
        raise RequestRefused(EngineErrorCode.BAD_REQUEST, "a WebSocket opens with GET")
    if sid is None and method != "GET":
        raise RequestRefused(EngineErrorCode.BAD_HANDSHAKE_METHOD, f"handshake with {method}")
    if method not in ("GET", "POST"):
        raise RequestRefused(EngineErrorCode.BAD_REQUEST, f"method {method}")
    return EngineRequest(int(version), transport, sid, method)
