"""Server-side connections: frames built once (unmasked, so a broadcast shares them) and
coalesced into one write per loop iteration; pongs on the same path; the linger after an
answered close."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy  # picows' own header type
from picows import WSTransport

from smartsocket.compression import DeflateParams, MessageDeflater, MessageInflater
from smartsocket.protocol.codes import CloseCode
from smartsocket.transport.closing import Linger, close_timer
from smartsocket.transport.coalescer import WriteCoalescer
from smartsocket.transport.connection import Connection, ConnectionHandler

logger = logging.getLogger("smartsocket.transport")

_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack
# What picows keeps of the 101 response once it is sent: nothing needs its headers again.
_SENT_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def build_frame(payload: bytes, binary: bool = False, rsv1: bool = False) -> bytes:
    """An unmasked (server-to-client) data frame carrying ``payload`` in one piece."""
    b0 = (0x82 if binary else 0x81) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _pack_16(b0, 126, n) + payload
    return _pack_64(b0, 127, n) + payload


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
        # From here picows parses nothing: what follows is read and dropped by Linger, so no
        # later frame (an oversized one, say) makes picows fail the connection and drop TCP
        # itself 10 ms on, with bytes unread.
        raw.set_protocol(Linger(raw.get_protocol()))
        try:
            raw.write_eof()  # FIN after the queued close frame
        except OSError:  # the peer is gone already (ENOTCONN after its reset): just drop it
            self.abort()
            return
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = close_timer(self.abort)

