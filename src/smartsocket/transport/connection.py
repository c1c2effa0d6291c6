"""The connection base: picows frames in, whole validated messages out to a
``ConnectionHandler``, and the close handshake. ``ServerConnection`` and ``ClientConnection``
add the write sides."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import picows
from picows import WSFrame, WSMsgType, WSTransport

from smartsocket.compression import (
    DecompressedTooLarge,
    DeflateError,
    MessageDeflater,
    MessageInflater,
)
from smartsocket.protocol.assembler import (
    FrameError,
    MessageAssembler,
    check_close_payload,
)
from smartsocket.protocol.codes import CloseCode, is_valid_close_code
from smartsocket.security import TokenBucket
from smartsocket.transport.closing import close_outcome, close_timer

logger = logging.getLogger("smartsocket.transport")

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
# Inbound frames are charged to the connection's frame budget in batches of this many: a
# clock read per 32 frames, not per frame (the budget only matters for floods).
FRAME_BATCH = 32


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
        code, reason = close_outcome(transport)
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
        self._close_timer = close_timer(self._disconnect)

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

