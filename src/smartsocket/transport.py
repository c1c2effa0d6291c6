"""The picows adapter: the only module that imports picows.

It turns picows frames into whole, validated messages for a ``ConnectionHandler`` and gives the
layers above a small write API. Server-side writes are coalesced: every frame for a connection
in one event-loop iteration goes out in one ``write``/``writev`` at the end of the iteration
(DESIGN.md: the number of system calls, not Python, bounds fan-out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket as socket_module
import ssl as ssl_module
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs

import picows
from multidict import CIMultiDict, CIMultiDictProxy, istr  # picows' own header type
from picows import WSFrame, WSMsgType, WSTransport, WSUpgradeRequest, WSUpgradeResponse
from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

from smartsocket.compression import (
    DecompressedTooLarge,
    DeflateError,
    DeflateParams,
    MessageDeflater,
    MessageInflater,
    NegotiationError,
    accept_response,
    client_offer,
)
from smartsocket.handshake import HeadPacer, RequestGate
from smartsocket.http_requests import (
    HandshakeRequest,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    Serve,
    ServedConnections,
)
from smartsocket.protocol.assembler import (
    FrameError,
    MessageAssembler,
    check_close_payload,
)
from smartsocket.protocol.codes import CloseCode, is_valid_close_code
from smartsocket.security import TokenBucket

logger = logging.getLogger("smartsocket.transport")

try:  # picows' faster socket transport (a picows dependency): ~1.5x throughput, ~5 KB/conn more
    import aiofastnet

    _HAS_AIOFASTNET = True
except ImportError:  # pragma: no cover - picows installs it
    _HAS_AIOFASTNET = False

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
# How long we wait for the peer's answer to our close frame before dropping the TCP connection.
CLOSE_TIMEOUT = 2.0
# Inbound frames are charged to the connection's frame budget in batches of this many: a
# clock read per 32 frames, not per frame (the budget only matters for floods).
FRAME_BATCH = 32
_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack

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
# What picows keeps of the 101 response once it is sent: nothing needs its headers again.
_SENT_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


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


def build_frame(payload: bytes, *, binary: bool = False, rsv1: bool = False) -> bytes:
    """An unmasked (server-to-client) data frame carrying ``payload`` in one piece."""
    b0 = (0x82 if binary else 0x81) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _pack_16(b0, 126, n) + payload
    return _pack_64(b0, 127, n) + payload


C_contra = TypeVar("C_contra", bound="Connection", contravariant=True)


class ConnectionHandler(Protocol[C_contra]):
    """What the layer above implements for each connection."""

    def on_open(self, conn: C_contra) -> None: ...

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        """A whole message (inflated if it was compressed; ``wire_size`` is what it took on
        the wire). A memoryview is only valid during the call: decode it at once."""

    def on_close(self, code: int, reason: str) -> None: ...


class _Gone:
    """The handler of a connection after its on_close: everything is ignored."""

    def on_open(self, conn: Any) -> None:
        pass

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        pass

    def on_close(self, code: int, reason: str) -> None:
        pass


_GONE = _Gone()


class Connection(picows.WSListener):
    """One WebSocket connection: frames in, messages out to ``handler``."""

    __slots__ = (
        "_assembler",
        "_clock",
        "_close_timer",
        "_frame_budget",
        "_frames",
        "_inflater",
        "_max_fragments",
        "_max_size",
        "_throttle",
        "_tr",
        "closed",
        "deflater",
        "disconnected",
        "handler",
        "paused",
        "remote_address",
    )

    def __init__(
        self,
        handler: ConnectionHandler[Any],
        *,
        max_message_size: int | None,
        deflater: MessageDeflater | None = None,
        inflater: MessageInflater | None = None,
        max_fragments: int | None = None,
        frame_rate: float = 0.0,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.handler = handler
        self._max_size = max_message_size
        self._max_fragments = max_fragments
        # Every inbound frame costs the server a Python call, whatever it is (data,
        # continuation, PING, or anything after our close frame): past ``frame_rate`` frames
        # per second the connection is not read until its budget refills. TCP backpressure:
        # nothing is dropped, and a flood no longer takes the CPU its neighbours need.
        self._frame_budget = (
            TokenBucket(frame_rate, frame_rate, clock()) if frame_rate > 0 else None
        )
        self._frames = 0
        self._clock = clock
        self._throttle: asyncio.TimerHandle | None = None
        self.deflater = deflater  # permessage-deflate negotiated: compress what pays
        self._inflater = inflater
        # Made on the first fragmented or compressed frame: most connections never need one.
        self._assembler: MessageAssembler | None = None
        self._tr: WSTransport | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed = False  # a close frame was sent or the transport is gone: send nothing more
        self.disconnected = False  # the TCP connection is gone
        self.paused = False  # the OS send buffer is over its high-water mark
        self.remote_address: tuple[Any, ...] | None = None

    # picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._tr = transport
        self.remote_address = transport.underlying_transport.get_extra_info("peername")
        self.handler.on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self._frames += 1
        if self._frames >= FRAME_BATCH:
            self._charge_frames()
        op = frame.msg_type
        # Fast path: a whole, uncompressed message in one frame, on an open connection.
        if (
            (op is _TEXT or op is _BINARY)
            and frame.fin
            and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
            and (self._assembler is None or not self._assembler.in_message)
            and not self.closed
        ):
            if self._max_size is not None and frame.payload_size > self._max_size:
                self._protocol_error(CloseCode.MESSAGE_TOO_BIG, "message too big")
                return
            self.handler.on_message(
                frame.get_payload_as_memoryview(), op is _BINARY, frame.payload_size
            )
            return
        if self.closed and op is not _CLOSE:
            return  # we sent a close frame: RFC 6455 1.4, the rest is discarded
        if op is not _TEXT and op is not _BINARY and op is not _CONTINUATION:
            # Control frames. picows' auto-pong is off so that RSV bits are checked here too
            # (RFC 6455 5.2: no extension defines them on control frames).
            if frame.rsv1 or frame.rsv2 or frame.rsv3:
                self._protocol_error(CloseCode.PROTOCOL_ERROR, "RSV bit set on a control frame")
            elif op is _CLOSE:
                self._on_close_frame(frame.get_payload_as_bytes())
            elif op is _PING and not self.closed:
                self._pong(frame.get_payload_as_bytes())
            return  # PONG needs nothing
        try:
            assembler = self._assembler
            if assembler is None:
                assembler = self._assembler = MessageAssembler(
                    max_size=self._max_size, deflate=self._inflater is not None,
                    max_fragments=self._max_fragments,
                )
            message = assembler.feed(
                op.value, frame.fin, frame.rsv1, frame.rsv2, frame.rsv3,
                frame.get_payload_as_bytes(),
            )
        except FrameError as exc:
            self._protocol_error(exc.code, exc.reason)
            return
        if message is None:
            return
        payload = message.payload
        if message.compressed:
            assert self._inflater is not None  # the assembler refuses RSV1 otherwise
            try:
                payload = self._inflater.decompress(payload, self._max_size)
            except DeflateError as exc:
                self._protocol_error(CloseCode.INVALID_TEXT, str(exc))
                return
            except DecompressedTooLarge as exc:
                self._protocol_error(CloseCode.MESSAGE_TOO_BIG, str(exc))
                return
        self.handler.on_message(payload, message.binary, len(message.payload))

    def _charge_frames(self) -> None:
        count, self._frames = self._frames, 0
        budget = self._frame_budget
        if budget is None or self._tr is None:
            return
        wait = budget.spend(self._clock(), count)
        if wait and self._throttle is None:
            self._tr.underlying_transport.pause_reading()
            loop = asyncio.get_running_loop()
            self._throttle = loop.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttle = None
        if self._tr is not None and not self.disconnected:
            self._tr.underlying_transport.resume_reading()

    @property
    def throttled(self) -> bool:
        """Not read for now: over its inbound frame budget."""
        return self._throttle is not None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.disconnected = True
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        self._drop_buffer()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        code, reason = _close_outcome(transport)
        handler = self.handler
        # Break the reference cycles through this connection (handler <-> connection, and
        # connection -> picows transport -> protocol -> connection): freed by reference
        # counting, not left for the cyclic GC, whose full collections over thousands of
        # closed connections stalled the loop for ~200 ms after a reconnect storm.
        self.handler = _GONE
        self._tr = None
        self._assembler = None
        self._release()
        handler.on_close(code, reason)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # closing

    def _on_close_frame(self, payload: bytes) -> None:
        try:
            code, reason = check_close_payload(payload)
        except FrameError as exc:
            self._protocol_error(exc.code, exc.reason)
            return
        if self.closed:  # the answer to our close: the handshake is complete
            self._disconnect()
        else:  # RFC 6455 5.5.1: echo the close, then the server drops TCP
            self.close(code, reason)
            self._drop_after_answer()

    def _drop_after_answer(self) -> None:
        """End the TCP connection once our close frame answers the peer's."""
        self._disconnect()

    def _protocol_error(self, code: int, reason: str) -> None:
        logger.info("closing %s: %s (%d)", self.remote_address, reason, code)
        self.close(code, reason)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame (after anything already queued) and drop the connection once the
        peer answers, or after ``CLOSE_TIMEOUT``."""
        tr = self._tr
        if self.closed or tr is None:
            return
        if not is_valid_close_code(code):
            raise ValueError(f"{code} may not be sent in a close frame")
        # Control frames carry at most 125 bytes: cut the reason on a character boundary.
        reason_bytes = reason.encode()[:123].decode("utf-8", "ignore").encode()
        self.flush_pending()
        self.closed = True
        self._drop_buffer()
        tr.send_close(picows.WSCloseCode(code), reason_bytes)
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(CLOSE_TIMEOUT, self._disconnect)

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        if self._tr is not None:
            self.closed = True
            self._tr.disconnect(graceful=False)

    def _disconnect(self) -> None:
        if self._tr is not None:
            self._tr.disconnect()

    # writing: overridden by the server and client sides

    def send_message(self, payload: bytes, binary: bool = False) -> int:
        """Send one message, compressed when deflate was negotiated and it pays; returns the
        payload bytes it took on the wire."""
        deflater = self.deflater
        if deflater is not None and len(payload) >= deflater.threshold:
            compressed = deflater.compress(payload)
            if compressed is not None:
                self._send(compressed, binary, True)
                return len(compressed)
        self._send(payload, binary, False)
        return len(payload)

    def _send(self, payload: bytes, binary: bool, rsv1: bool) -> None:
        raise NotImplementedError

    def _pong(self, payload: bytes) -> None:
        """Answer a PING (RFC 6455 5.5.2)."""
        if self._tr is not None:
            self._tr.send_pong(payload)

    def flush_pending(self) -> None:
        """Write what was coalesced (``WriteCoalescer`` calls it once per loop iteration)."""

    def _drop_buffer(self) -> None:
        pass

    def _release(self) -> None:
        """Drop references the connection no longer needs once disconnected."""

    @property
    def write_buffer_size(self) -> int:
        if self._tr is None or self.closed:
            return 0
        size: int = self._tr.underlying_transport.get_write_buffer_size()
        return size


def _close_outcome(transport: WSTransport) -> tuple[int, str]:
    """The close code and reason of a finished connection: the peer's, else ours, else 1006."""
    handshake = transport.close_handshake
    if handshake is not None:
        info = handshake.recv if handshake.recv is not None else handshake.sent
        if info is not None:
            code = info.code.value
            return (code if code else CloseCode.NORMAL), info.reason
    return 1006, "connection lost"


class WriteCoalescer:
    """Flushes every connection that has queued frames once, at the end of the loop iteration.

    The first frame queued for a connection in an iteration registers it here; ``call_soon``
    runs the flush after the current batch of I/O callbacks, so under load batches grow by
    themselves and under light load no latency is added.
    """

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[ServerConnection] = []
        self._scheduled = False

    def add(self, conn: ServerConnection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        self._scheduled = False
        for conn in dirty:
            conn.flush_pending()


class ServerConnection(Connection):
    """Server side: frames are unmasked, so they can be built once and shared by a broadcast."""

    __slots__ = ("_coalescer", "_high", "_max_buffer", "_out", "_pending_pong", "_raw")

    def __init__(
        self,
        handler: ConnectionHandler[ServerConnection],
        coalescer: WriteCoalescer,
        *,
        max_message_size: int | None,
        deflate: DeflateParams | None = None,
        compression_level: int = 1,
        compression_threshold: int = 256,
        write_buffer_high: int = 64 << 10,
        max_write_buffer: int | None = None,
        max_fragments: int | None = None,
        frame_rate: float = 0.0,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._high = write_buffer_high
        self._max_buffer = max_write_buffer
        deflater = inflater = None
        if deflate is not None:
            deflater = MessageDeflater(
                deflate, True, level=compression_level, threshold=compression_threshold
            )
            inflater = MessageInflater(deflate, True)
        super().__init__(
            handler, max_message_size=max_message_size, deflater=deflater, inflater=inflater,
            max_fragments=max_fragments, frame_rate=frame_rate, clock=clock,
        )
        self._coalescer = coalescer
        self._out: list[bytes] = []
        # The payload of the PING to answer at the next flush. RFC 6455 5.5.3: with pongs still
        # unsent, answering only the latest ping is enough; so a ping flood costs one pong per
        # loop iteration at most, and that pong goes through the same write path (and the same
        # max_write_buffer check) as every other frame. picows' send_pong wrote straight to
        # the transport: a peer that sent pings and never read grew the server's memory by
        # ~200 MB/s (issue 14).
        self._pending_pong: bytes | None = None
        self._raw: asyncio.Transport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        response = transport.response
        if response is not None:  # sent: ~0.6 KB per connection that nothing reads again
            response.headers = _SENT_HEADERS  # type: ignore[assignment]  # read-only on purpose
        self._raw = raw = transport.underlying_transport
        # Over the high-water mark the transport calls pause_writing: the socket is slow.
        raw.set_write_buffer_limits(high=self._high, low=self._high // 4)
        super().on_ws_connected(transport)

    def send_frame(self, frame: bytes) -> None:
        """Queue a prebuilt frame; it goes out with the connection's other frames this loop
        iteration. Hot path: one call per delivery of a broadcast."""
        out = self._out
        if not out:
            if self.closed:
                return
            self._coalescer.add(self)
        out.append(frame)

    def _send(self, payload: bytes, binary: bool, rsv1: bool) -> None:
        self.send_frame(build_frame(payload, binary=binary, rsv1=rsv1))

    def _pong(self, payload: bytes) -> None:
        if self._pending_pong is None and not self._out:
            self._coalescer.add(self)
        self._pending_pong = payload

    def flush_pending(self) -> None:
        out = self._out
        pong = self._pending_pong
        if pong is not None:
            self._pending_pong = None
            if not self.closed:
                out.append(bytes((0x8A, len(pong))) + pong)  # control frames carry <= 125 bytes
        if not out or self.closed or self._raw is None:
            return
        if self._tr is not None and self._tr.is_close_frame_sent:
            # picows failed the connection itself (e.g. a frame over max_frame_size): nothing
            # may follow its close frame (RFC 6455 5.5.1).
            self.closed = True
            out.clear()
            return
        raw = self._raw
        if len(out) == 1:
            raw.write(out[0])
        else:
            raw.writelines(out)  # one writev for the whole batch
        out.clear()
        # A peer that does not read makes our buffer grow: past the hard limit it is dropped,
        # so one slow reader cannot hold the server's memory. The transport calls
        # pause_writing as soon as its buffer passes write_buffer_high (every frame we write,
        # pongs included, goes through here), so the size is only read while paused: an
        # unconditional call after every flush cost ~4% of fan-out CPU (py-spy, issue 14).
        if (
            self.paused
            and self._max_buffer is not None
            and raw.get_write_buffer_size() > self._max_buffer
        ):
            logger.info(
                "dropping slow consumer %s", self.remote_address,
                extra={"event": "limit", "limit": "slow_consumer"},
            )
            self.close(CloseCode.SLOW_CONSUMER, "too slow to read")
            self.abort()

    def _drop_buffer(self) -> None:
        self._out.clear()
        self._pending_pong = None

    def _release(self) -> None:
        self._raw = None

    def _drop_after_answer(self) -> None:
        """Our close frame answers the peer's: end TCP without a reset.

        Closing a socket whose receive queue still holds bytes makes Linux send RST instead of
        FIN (RFC 1122 4.2.2.13, RFC 9293 3.6.1: "to show that data was lost"), and a RST makes
        the peer's TCP flush what it has not read yet (RFC 9293 3.10.7.4): our close frame with
        it, or a client still writing gets ECONNRESET and never reads it. A peer that sent anything
        after its close frame (RFC 6455 5.5.1 forbids it, but it happens, and a frame may be
        in flight) thus lost our answer. So: FIN right after the close frame (the server
        still closes first, RFC 6455 7.1.1, and the peer sees EOF as soon as before), then
        read and drop whatever still comes until the peer closes its side, which is when the
        socket is closed, with nothing unread; a peer that never does is aborted after
        CLOSE_TIMEOUT. Until then the connection stays open (closing) in the server's counts.
        """
        raw = self._raw
        if raw is None or raw.is_closing() or not raw.can_write_eof():
            # The TLS transports have no write_eof (can_write_eof() is False): no FIN to send
            # first, so close at once as before rather than make every TLS close wait for a
            # peer that waits for us (RFC 6455 7.1.1: the client waits for the server's close).
            self._disconnect()
            return
        if self._throttle is not None:  # over its frame budget: the drain must read
            self._throttle.cancel()
            self._throttle = None
            raw.resume_reading()
        # From here picows parses nothing: what follows is read and dropped by _Linger, so no
        # later frame (an oversized one, say) makes picows fail the connection and drop TCP
        # itself 10 ms on, with bytes unread.
        raw.set_protocol(_Linger(raw.get_protocol()))
        raw.write_eof()  # FIN after the queued close frame
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)


class _Linger(asyncio.Protocol):
    """A server connection's protocol after its close handshake and FIN: reads and drops
    what the peer still sends until it closes its side (see _drop_after_answer)."""

    __slots__ = ("_ws",)

    def __init__(self, ws: asyncio.BaseProtocol) -> None:
        self._ws = ws  # picows' protocol: told when the connection is gone

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the peer closed too: close the socket, nothing left unread

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.connection_lost(exc)  # -> on_ws_disconnected


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


# HTTP side of the listener


@dataclass(frozen=True, slots=True)
class Accept:
    """Accept a WebSocket upgrade; ``handler`` receives the connection's events."""

    handler: ConnectionHandler[ServerConnection]
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Sec-WebSocket-Protocol
    deflate: DeflateParams | None = None  # negotiated permessage-deflate, if any


Router = Callable[[HandshakeRequest], "HttpResponse | Accept | Serve"]
__all__ = [
    "Accept", "HandshakeRequest", "HttpLimits", "HttpRequest", "HttpResponse", "Router",
    "Serve", "ServedConnections", "connect", "create_server",
]


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
    picows_logger = logging.getLogger("picows.server")
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
