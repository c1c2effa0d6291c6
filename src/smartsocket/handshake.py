"""The HTTP request head, read before picows sees it, and every request that is not a
WebSocket upgrade.

picows parses the request itself and accepts only ``GET ... HTTP/1.1`` with a head under
16 KiB: anything else got HTTP 400, and a larger head a TCP reset. Load balancers' health checks
use ``HEAD`` and ``HTTP/1.0`` (HAProxy's and nginx's defaults), a client whose cookies grew
past 16 KiB deserves a status it can log, and the HTTP API and long-polling need bodies and
answers that come later. So each new connection starts with a ``RequestGate``: it buffers the
head (bounded), hands every ``GET ... HTTP/1.1`` WebSocket upgrade over to picows unchanged
(``transport/listener.py`` builds the picows protocol; this module does not import picows), and
serves every other request itself through the router: a sync answer (connection closed), or a
``Serve`` handler that gets the body and answers when it likes, on a kept-alive connection
(``http_requests.py``). After a hand-over the gate is gone: reads go straight to picows, so
established WebSockets pay nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs

from multidict import CIMultiDict

from smartsocket.http_requests import (
    HandshakeRequest,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    Serve,
    ServedConnections,
    peer_ip,
)

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
# What a plain request (anything but a WebSocket upgrade) gets: an answer now, or a handler.
PlainRouter = Callable[[HandshakeRequest], "HttpResponse | Serve"]


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
    status: int, headers: dict[str, str], body: bytes, *, head_only: bool = False,
    keep_alive: bool = False,
) -> bytes:
    """An HTTP/1.1 response that closes the connection, or keeps it (``head_only``: headers
    only, for a HEAD request; Content-Length still says what a GET would get, RFC 9110
    9.3.2)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    connection = "keep-alive" if keep_alive else "close"
    lines += [f"Content-Length: {len(body)}", f"Connection: {connection}", "", ""]
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


def response_headers(response: HttpResponse) -> dict[str, str]:
    return {"Content-Type": response.content_type, "Cache-Control": "no-store",
            **response.headers}


def _wants_websocket(head: bytes | bytearray) -> bool:
    """Whether a request head has an ``Upgrade`` header naming ``websocket`` (those go to
    picows unparsed; everything else is a plain request served here)."""
    lower = head.lower()
    at = lower.find(b"\r\nupgrade:")
    while at >= 0:
        end = lower.find(b"\r\n", at + 2)
        if b"websocket" in lower[at + 10 : end if end >= 0 else len(lower)]:
            return True
        at = lower.find(b"\r\nupgrade:", at + 2)
    return False


def _content_length(headers: Headers) -> int:
    """The body's length (0 without the header); HeadError 400 when it is not one number
    (RFC 9112 6.3: differing values are an error), 411 for a chunked body (not supported)."""
    if any(key.lower() == "transfer-encoding" for key, _ in headers):
        raise HeadError(411, "Transfer-Encoding is not supported; send a Content-Length")
    values = {value.strip() for key, value in headers if key.lower() == "content-length"}
    if not values:
        return 0
    value = values.pop()
    if values or not value.isdigit() or not value.isascii():
        raise HeadError(400, "invalid Content-Length")
    return int(value)


# Gate states
_HEAD, _QUEUED, _BODY, _SERVING, _DONE = range(5)


class RequestGate(asyncio.Protocol):
    """The first protocol of every server connection (see the module docstring)."""

    __slots__ = (
        "_buffer", "_counter", "_head", "_ip", "_limits", "_make_ws", "_pacer",
        "_request", "_route", "_served", "_state", "_task", "_timeout", "_timer", "_transport",
        "_wanted",
    )

    def __init__(
        self, make_ws: Callable[[], asyncio.BufferedProtocol], route: PlainRouter,
        timeout: float | None, pacer: HeadPacer | None = None,
        limits: HttpLimits | None = None, counter: ServedConnections | None = None,
    ) -> None:
        self._make_ws = make_ws
        self._route = route
        self._timeout = timeout
        self._pacer = pacer
        self._limits = limits or HttpLimits()
        self._counter = counter
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = _HEAD
        self._served = 0  # requests answered by a Serve handler on this connection
        self._ip: object = None  # counted in ``counter`` while set
        self._head: tuple[HandshakeRequest, Serve, bool, bool] | None = None  # body awaited
        self._wanted = 0  # bytes of body awaited
        self._request: HttpRequest | None = None
        self._task: asyncio.Task[HttpResponse] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # aiofastnet's: duck-typed
        if self._timeout is not None:  # slowloris: picows' handshake_timeout, until hand-over
            self._arm(self._timeout)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _DONE:
            return  # draining after an error answer
        buffer = self._buffer
        buffer += data
        if state == _HEAD:
            self._check_head()
        elif state == _BODY:
            if len(buffer) >= self._wanted:
                self._start()
        elif len(buffer) >= MAX_HEAD and self._transport is not None:
            self._transport.pause_reading()  # pipelined bytes while serving: bounded

    def _check_head(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) >= MAX_HEAD:
                self._answer(error_response(431, "request headers larger than 16 KiB"))
            return
        if end >= MAX_HEAD:
            self._answer(error_response(431, "request headers larger than 16 KiB"))
            return
        self._state = _QUEUED
        if self._pacer is None:
            self.proceed()
            return
        assert self._transport is not None
        self._transport.pause_reading()  # nothing more until served: the queue holds heads only
        self._pacer.submit(self)

    def proceed(self) -> None:
        """Serve the complete head: hand it to picows, or answer it here."""
        transport = self._transport
        if self._state == _DONE or transport is None or transport.is_closing():
            return
        if self._pacer is not None:
            transport.resume_reading()  # reads go to whichever protocol we leave in place
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        line = bytes(buffer[: buffer.find(b"\r\n")])
        method, _, rest = line.partition(b" ")
        version = rest.rpartition(b" ")[2]
        if method == b"GET" and version == b"HTTP/1.1" and _wants_websocket(buffer[:end]):
            self._hand_over()  # the common case: picows parses it, as it always did
        elif version in (b"HTTP/1.0", b"HTTP/1.1"):
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            self._plain(head, head_only=method == b"HEAD", http10=version == b"HTTP/1.0")
        else:
            self._hand_over()  # picows answers 400 (unsupported version)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _DONE
        self._cancel_timer()
        if self._request is not None:
            self._request.disconnected.set()
            self._request = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._ip is not None and self._counter is not None:
            self._counter.release(self._ip, self)
            self._ip = None

    # outcomes

    def _plain(self, head: bytes, *, head_only: bool, http10: bool) -> None:
        try:
            method, target, _, headers = split_head(head)
        except HeadError as exc:
            self._answer(error_response(exc.status, exc.reason))
            return
        if "websocket" in tokens(headers, "Upgrade"):  # RFC 6455 4.1: GET, HTTP/1.1 or later
            self._answer(error_response(400, "a WebSocket upgrade needs GET and HTTP/1.1"))
            return
        path, _, query = target.partition("?")
        request = HandshakeRequest(
            path, parse_qs(query) if query else {}, CIMultiDict(headers), method
        )
        try:
            outcome = self._route(request)
        except Exception:
            logger.exception("router failed for %s", path)
            outcome = HttpResponse(500, b"internal server error\n")
        if isinstance(outcome, Serve):
            keep = not http10 and "close" not in tokens(headers, "Connection")
            self._serve(request, outcome, headers, head_only=head_only, keep_alive=keep)
            return
        body = outcome.body
        self._answer(render(outcome.status, response_headers(outcome), body, head_only=head_only))

    def _serve(
        self, request: HandshakeRequest, serve: Serve, headers: Headers, *, head_only: bool,
        keep_alive: bool,
    ) -> None:
        limits = self._limits
        try:
            length = _content_length(headers)
        except HeadError as exc:
            self._refuse(serve, exc.status, exc.reason)
            return
        limit = limits.max_body if serve.max_body is None else serve.max_body
        if length > limit:
            self._refuse(serve, 413, f"request body larger than {limit} bytes")
            return
        if self._ip is None and self._counter is not None:
            assert self._transport is not None
            ip = peer_ip(self._transport.get_extra_info("peername"))
            if not self._counter.acquire(ip, self):
                logger.info(
                    "too many HTTP connections from %s", ip,
                    extra={"event": "limit", "limit": "http_per_ip", "ip": str(ip)},
                )
                self._refuse(serve, 429, "too many connections from your address")
                return
            self._ip = ip
        self._head = (request, serve, head_only, keep_alive)
        self._wanted = length
        if len(self._buffer) >= length:
            self._start()
            return
        self._state = _BODY
        self._arm(limits.body_timeout)  # the body may not trickle in forever
        if "100-continue" in tokens(headers, "Expect"):  # curl waits 1 s for it otherwise
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _refuse(self, serve: Serve, status: int, reason: str) -> None:
        if serve.errors is None:
            self._answer(error_response(status, reason))
            return
        try:
            response = serve.errors(status, reason)
        except Exception:
            logger.exception("error renderer failed")
            self._answer(error_response(status, reason))
            return
        self._answer(render(response.status, response_headers(response), response.body))

    def _start(self) -> None:
        """The body is in: run the handler."""
        assert self._head is not None and self._transport is not None
        head, serve, head_only, keep_alive = self._head
        self._head = None
        self._cancel_timer()
        buffer, length = self._buffer, self._wanted
        body = bytes(buffer[:length])
        del buffer[:length]
        self._state = _SERVING
        request = HttpRequest(
            head.method, head.path, head.query, head.headers, body,
            self._transport.get_extra_info("peername"), asyncio.Event(),
        )
        self._request = request
        task = asyncio.get_running_loop().create_task(serve.handler(request))
        self._task = task
        task.add_done_callback(lambda t: self._served_by(t, head_only, keep_alive))

    def _served_by(self, task: asyncio.Task[HttpResponse], head_only: bool, keep: bool) -> None:
        if task is not self._task:
            return  # the connection went away (task cancelled there)
        self._task = None
        self._request = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            response = task.result()
        except (Exception, asyncio.CancelledError):
            logger.exception("HTTP handler failed")
            response = HttpResponse(500, b"internal server error\n")
        if not isinstance(response, HttpResponse):
            logger.error("HTTP handler returned %r, not an HttpResponse", response)
            response = HttpResponse(500, b"internal server error\n")
        self._served += 1
        keep = (
            keep and self._served < self._limits.keepalive_requests
            and (self._counter is None or not self._counter.closing)
            and response.headers.get("Connection", "").lower() != "close"
        )
        headers = response_headers(response)
        headers.pop("Connection", None)
        data = render(response.status, headers, response.body, head_only=head_only, keep_alive=keep)
        if not keep:
            self._answer(data)
            return
        transport.write(data)
        self._state = _HEAD
        self._arm(self._limits.keepalive_timeout)  # idle, then the next head, bounded
        transport.resume_reading()
        if self._buffer:
            self._check_head()  # a pipelined request already in

    def shutdown(self, *, busy: bool) -> None:
        """The server is shutting down (``ServedConnections.close``)."""
        state = self._state
        if state == _SERVING and self._task is not None:
            if not busy:
                return  # its answer closes the connection (``closing``)
            task, self._task = self._task, None
            task.cancel()
            if self._request is not None:
                self._request.disconnected.set()
                self._request = None
            self._answer(error_response(503, "server shutting down"))
        elif state == _HEAD and not self._buffer and self._transport is not None:
            self._state = _DONE
            self._cancel_timer()
            self._transport.close()  # idle between requests: nothing is lost
        elif state in (_HEAD, _QUEUED, _BODY) and self._transport is not None:
            self._state = _DONE
            self._cancel_timer()
            self._transport.abort()  # a request half in: it was never going to be served

    def _answer(self, response: bytes) -> None:
        """Send a final answer, then read and drop what the peer still sends until it closes
        (or LINGER passes): a close with unread data would reset the connection."""
        transport = self._transport
        assert transport is not None
        self._state = _DONE
        self._buffer = bytearray()
        self._cancel_timer()
        transport.write(response)
        transport.resume_reading()  # drain (reading may be paused by a pipelined flood)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def _hand_over(self) -> None:
        transport = self._transport
        assert transport is not None
        self._state = _DONE
        self._cancel_timer()
        if self._ip is not None and self._counter is not None:
            self._counter.release(self._ip, self)  # a WebSocket now: admission counts it
            self._ip = None
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

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
