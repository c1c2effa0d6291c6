"""The HTTP request head, read before picows sees it.

picows parses the request itself and accepts only ``GET ... HTTP/1.1`` with a head under
16 KiB: anything else got HTTP 400, and a larger head a TCP reset. Load balancers' health checks
use ``HEAD`` and ``HTTP/1.0`` (HAProxy's and nginx's defaults), and a client whose cookies grew
past 16 KiB deserves a status it can log. So each new connection starts with a ``RequestGate``:
it buffers the head (bounded), answers what picows would refuse, and hands every
``GET ... HTTP/1.1`` over to picows unchanged (``transport.py`` builds the picows protocol; this
module does not import picows). After the hand-over the gate is gone: reads go straight to
picows, so established connections pay nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from http import HTTPStatus

logger = logging.getLogger("smartsocket.transport")

# picows' own limit on the request head (it drops the connection past it).
MAX_HEAD = 16 * 1024
MAX_HEADERS = 128  # picows' limit on the number of header lines
# After an error answer, how long unread request bytes are drained before the socket is closed:
# closing with unread data makes the kernel send a reset, which can destroy the answer in flight.
LINGER = 2.0
# Request heads served per event-loop iteration. A reconnect storm brings thousands of heads in
# one read of the selector; serving them all at once (~100 us each: routing, the socket, the
# 101, $welcome) stalled every established connection for the whole batch (~300 ms for 2,000).
# In batches, their traffic runs between two batches.
HEADS_PER_TICK = 8

Headers = list[tuple[str, str]]
# (method, target, headers) -> (status, headers, body) of a plain HTTP answer.
PlainRouter = Callable[[str, str, Headers], tuple[int, dict[str, str], bytes]]


class HeadError(Exception):
    """The request head cannot be served; answer ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def split_head(head: bytes) -> tuple[str, str, str, Headers]:
    """(method, target, version, headers) of a request head (without its final CRLF CRLF)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[1]:
        raise HeadError(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadError(431, f"more than {MAX_HEADERS} header lines")
    headers: Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise HeadError(400, "malformed header line")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    method, target, version = (part.decode("latin-1") for part in parts)
    return method, target, version, headers


def tokens(headers: Headers, name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` header line, lower-cased."""
    name = name.lower()
    return {
        token.strip().lower()
        for key, value in headers
        if key.lower() == name
        for token in value.split(",")
    }


def render(
    status: int, headers: dict[str, str], body: bytes, *, head_only: bool = False
) -> bytes:
    """An HTTP/1.1 response that closes the connection (``head_only``: headers only, for a
    HEAD request; Content-Length still says what a GET would get, RFC 9110 9.3.2)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    out = "\r\n".join(lines).encode("latin-1")
    return out if head_only else out + body


def error_response(status: int, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    return render(status, {"Content-Type": "text/plain; charset=utf-8"}, body)


class HeadPacer:
    """Serves complete request heads, at most HEADS_PER_TICK per loop iteration, in order."""

    __slots__ = ("_loop", "_queue", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[RequestGate] = deque()
        self._scheduled = False

    def submit(self, gate: RequestGate) -> None:
        self._queue.append(gate)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        queue = self._queue
        for _ in range(min(HEADS_PER_TICK, len(queue))):
            queue.popleft().proceed()
        if queue:
            self._loop.call_soon(self._run)  # the next iteration, after the selector's events
        else:
            self._scheduled = False


class RequestGate(asyncio.Protocol):
    """The first protocol of every server connection (see the module docstring)."""

    __slots__ = (
        "_buffer", "_done", "_lost", "_make_ws", "_pacer", "_route", "_timeout", "_timer",
        "_transport",
    )

    def __init__(
        self, make_ws: Callable[[], asyncio.BufferedProtocol], route: PlainRouter,
        timeout: float | None, pacer: HeadPacer | None = None,
    ) -> None:
        self._make_ws = make_ws
        self._route = route
        self._timeout = timeout
        self._pacer = pacer
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # a whole head arrived: queued, answered (draining) or handed over
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # aiofastnet's: duck-typed
        if self._timeout is not None:  # slowloris: picows' handshake_timeout, until hand-over
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return  # draining after an error answer
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) >= MAX_HEAD:
                self._answer(error_response(431, "request headers larger than 16 KiB"))
            return
        if end >= MAX_HEAD:
            self._answer(error_response(431, "request headers larger than 16 KiB"))
            return
        self._done = True
        if self._pacer is None:
            self.proceed()
            return
        assert self._transport is not None
        self._transport.pause_reading()  # nothing more until served: the queue holds heads only
        self._pacer.submit(self)

    def proceed(self) -> None:
        """Serve the complete head: hand it to picows, or answer it here."""
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            return
        if self._pacer is not None:
            transport.resume_reading()  # reads go to whichever protocol we leave in place
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        line = bytes(buffer[: buffer.find(b"\r\n")])
        method, _, rest = line.partition(b" ")
        version = rest.rpartition(b" ")[2]
        if method == b"GET" and version == b"HTTP/1.1":
            self._hand_over()  # the common case: picows parses it, as it always did
        elif method in (b"GET", b"HEAD") and version in (b"HTTP/1.0", b"HTTP/1.1"):
            self._plain(bytes(buffer[:end]), head_only=method == b"HEAD")
        else:
            self._hand_over()  # picows answers 400 (unsupported method or version)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()

    # outcomes

    def _plain(self, head: bytes, *, head_only: bool) -> None:
        try:
            method, target, _, headers = split_head(head)
        except HeadError as exc:
            self._answer(error_response(exc.status, exc.reason))
            return
        if "websocket" in tokens(headers, "Upgrade"):  # RFC 6455 4.1: GET, HTTP/1.1 or later
            self._answer(error_response(400, "a WebSocket upgrade needs GET and HTTP/1.1"))
            return
        try:
            status, extra, body = self._route(method, target, headers)
        except Exception:
            logger.exception("router failed for %s", target)
            status, extra, body = 500, {}, b"internal server error\n"
        self._answer(render(status, extra, body, head_only=head_only))

    def _answer(self, response: bytes) -> None:
        """Send a final answer, then read and drop what the peer still sends until it closes
        (or LINGER passes): a close with unread bytes would reset the connection."""
        transport = self._transport
        assert transport is not None
        self._done = True
        self._buffer = bytearray()
        self._cancel_timer()
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def _hand_over(self) -> None:
        transport = self._transport
        assert transport is not None
        self._done = True
        self._cancel_timer()
        data, self._buffer = memoryview(bytes(self._buffer)), bytearray()
        protocol = self._make_ws()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        # Feed what we read through picows' buffer interface, as the transport would.
        while data and not transport.is_closing():
            target = memoryview(protocol.get_buffer(len(data)))
            n = min(len(target), len(data))
            target[:n] = data[:n]
            data = data[n:]
            protocol.buffer_updated(n)

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
