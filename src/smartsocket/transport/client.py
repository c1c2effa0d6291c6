"""The client side: ``ClientConnection`` (frames masked per frame, so picows frames and writes
each one) and ``connect``."""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Mapping

import picows
from picows import WSMsgType, WSUpgradeRequest, WSUpgradeResponse

from smartsocket.compression import (
    DeflateParams,
    MessageDeflater,
    MessageInflater,
    NegotiationError,
    accept_response,
    client_offer,
)
from smartsocket.transport.connection import Connection, ConnectionHandler

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY


class ClientConnection(Connection):
    """Client side: frames must be masked per frame, so picows frames and writes each one."""

    __slots__ = ("subprotocol",)

    def __init__(
        self,
        handler: ConnectionHandler[ClientConnection],
        *,
        max_message_size: int | None,
        deflate: DeflateParams | None = None,
        compression_threshold: int = 256,
    ) -> None:
        deflater = inflater = None
        if deflate is not None:
            deflater = MessageDeflater(deflate, False, threshold=compression_threshold)
            inflater = MessageInflater(deflate, False)
        super().__init__(
            handler, max_message_size=max_message_size, deflater=deflater, inflater=inflater
        )
        self.subprotocol: str | None = None

    def _send(self, payload: bytes, binary: bool, rsv1: bool) -> None:
        if self.closed or self._tr is None:
            return
        self._tr.send(_BINARY if binary else _TEXT, payload, rsv1=rsv1)


async def connect(
    url: str,
    handler: ConnectionHandler[ClientConnection],
    *,
    subprotocol: str,
    extra_headers: Mapping[str, str] | None = None,
    ssl: ssl_module.SSLContext | None = None,
    max_message_size: int | None,
    timeout: float,
    compression: bool = True,
    compression_threshold: int = 256,
) -> ClientConnection:
    """Open a client connection offering ``subprotocol`` (and permessage-deflate when
    ``compression``); ``handler`` gets its events."""
    headers = {"Sec-WebSocket-Protocol": subprotocol, **(extra_headers or {})}
    if compression:
        headers["Sec-WebSocket-Extensions"] = client_offer()

    def factory(request: WSUpgradeRequest, response: WSUpgradeResponse) -> ClientConnection:
        answer = response.headers.getall("Sec-WebSocket-Extensions", [])
        # NegotiationError here fails the handshake: RFC 7692 7 (and 6455 9.1).
        params = accept_response(", ".join(answer) or None) if compression else None
        if params is None and answer:
            raise NegotiationError("server answered an extension that was not offered")
        conn = ClientConnection(
            handler, max_message_size=max_message_size, deflate=params,
            compression_threshold=compression_threshold,
        )
        conn.subprotocol = response.headers.get("Sec-WebSocket-Protocol")
        return conn

    _, listener = await picows.ws_connect(
        factory,
        url,
        ssl_context=ssl,
        websocket_handshake_timeout=timeout,
        enable_auto_pong=False,  # on_ws_frame answers pings after checking RSV bits
        max_frame_size=max_message_size or 2**62,
        extra_headers=headers,
        max_redirects=0,
        logger_name="client",
    )
    assert isinstance(listener, ClientConnection)
    return listener


HandshakeError = picows.WSHandshakeError


def handshake_status(exc: BaseException) -> int | None:
    """The HTTP status a refused upgrade answered (401, 403, 503...), if there was one."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status", None)
    return int(status) if status is not None else None
