"""The end of a connection: how long a close handshake may take, the code and reason a
finished connection reports, and the protocol that lingers after the server answered a peer's
close (``ServerConnection._drop_after_answer``: FIN, then read and drop until the peer closes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from picows import WSTransport

from smartsocket.protocol.codes import CloseCode

# How long we wait for the peer's answer to our close frame before dropping the TCP connection.
CLOSE_TIMEOUT = 2.0


def close_timer(callback: Callable[[], None]) -> asyncio.TimerHandle:
    """Call ``callback`` once ``CLOSE_TIMEOUT`` has passed (read at each call: one setting for
    every close timer of the transport)."""
    return asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, callback)


def close_outcome(transport: WSTransport) -> tuple[int, str]:
    """The close code and reason of a finished connection: the peer's, else ours, else 1006."""
    handshake = transport.close_handshake
    if handshake is not None:
        info = handshake.recv if handshake.recv is not None else handshake.sent
        if info is not None:
            code = info.code.value
            return (code if code else CloseCode.NORMAL), info.reason
    return 1006, "connection lost"


class Linger(asyncio.Protocol):
    """A server connection's protocol after its close handshake and FIN: reads and drops
    what the peer still sends until it closes its side (``ServerConnection``'s
    ``_drop_after_answer``)."""

    __slots__ = ("_ws",)

    def __init__(self, ws: asyncio.BaseProtocol) -> None:
        self._ws = ws  # picows' protocol: told when the connection is gone

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the peer closed too: close the socket, nothing left unread

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.connection_lost(exc)  # -> on_ws_disconnected
