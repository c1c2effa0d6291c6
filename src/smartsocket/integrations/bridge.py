"""``Bridge``: a SmartSocket connection carried by another web server's WebSocket.

A ``Bridge`` gives a ``Socket`` (or the live stats feed, ``/smartsocket/live``) the
connection interface it uses natively (``server.socket.SocketConnection``). Two differences
from the native transport:

- **One writer task per connection.** Natively a send never waits: frames are queued and
  written by the event loop at the end of the iteration, with no task per connection. Here
  the host server's send is a coroutine (it may wait for its own buffer to drain), and sends
  from handlers and broadcasts must stay synchronous and ordered, so each connection has a
  queue drained by one writer task. The queue's size plays the role of the native write
  buffer: past ``write_buffer_high`` the socket counts as slow (``paused``), past
  ``max_write_buffer`` it is dropped with 4009.
- **Plain frames only.** ``deflater`` is None, so broadcasts hand a bridge the uncompressed
  frame they build once (``transport.build_frame``: unmasked, FIN set, 2/4/10-byte header);
  the bridge strips the header and sends the payload as a message. Compression, if any, is
  the host server's (per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from smartsocket.protocol.codes import CloseCode, is_valid_close_code
from smartsocket.transport import CLOSE_TIMEOUT, ConnectionHandler

if TYPE_CHECKING:
    from smartsocket.config import Config

logger = logging.getLogger("smartsocket.integrations")

_CLOSE: Any = object()  # queued after the last message once close() was called
_ABORTED = (1006, "connection aborted")


def frame_payload(frame: bytes) -> tuple[memoryview, bool]:
    """The payload of a frame built by ``transport.build_frame``, and whether it is binary."""
    b0 = frame[0]
    if b0 & 0x40:  # RSV1: a compressed frame; bridges are PLAIN members and never get one
        raise ValueError("compressed frame handed to a connection without deflate")
    n = frame[1] & 0x7F
    start = 2 if n < 126 else (4 if n == 126 else 10)
    return memoryview(frame)[start:], (b0 & 0x0F) == 0x2


class Bridge:
    """A SmartSocket connection carried by another server's WebSocket.

    Subclasses implement ``_send``, ``_send_close`` and ``_read_loop`` (which calls
    ``_deliver`` for each message and returns the close code and reason). ``run()`` serves
    the connection until it ends.
    """

    __slots__ = (
        "_buffered",
        "_deadline",
        "_high",
        "_max_buffer",
        "_max_size",
        "_out",
        "_reader",
        "_sent_close",
        "_timer",
        "_wakeup",
        "_writer",
        "closed",
        "handler",
        "paused",
        "remote_address",
    )

    deflater = None  # never compressed by us: see the module docstring

    def __init__(
        self, handler: ConnectionHandler[Any], config: Config,
        remote_address: tuple[Any, ...] | None,
    ) -> None:
        self.handler = handler  # a Socket, or live.StatsSubscriber
        self.remote_address = remote_address
        self.closed = False  # close() was called or the connection is gone: send nothing more
        self.paused = False  # more than write_buffer_high bytes wait in the queue
        self._out: deque[Any] = deque()
        self._buffered = 0
        self._high = config.write_buffer_high
        self._max_buffer = config.max_write_buffer
        self._max_size = config.max_message_size
        self._wakeup: asyncio.Future[None] | None = None
        self._sent_close: tuple[int, str] | None = None
        self._reader: asyncio.Task[tuple[int, str]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # what the host server's side implements

    async def _send(self, data: bytes | memoryview, binary: bool) -> None:
        raise NotImplementedError

    async def _send_close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    async def _read_loop(self) -> tuple[int, str]:
        raise NotImplementedError

    def _hard_close(self) -> None:
        """Drop the underlying connection at once, if the host server allows it."""

    # the connection interface the server uses (server.socket.SocketConnection)

    def send_frame(self, frame: bytes) -> None:
        """Queue a prebuilt (plain) frame's payload: the hot path of broadcasts."""
        if self.closed:
            return
        payload, binary = frame_payload(frame)
        self._push(payload, binary)

    def send_message(self, payload: bytes, binary: bool = False) -> int:
        if not self.closed:
            self._push(payload, binary)
        return len(payload)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close (after everything already queued); the connection ends once the peer
        answers. A peer that reads nothing is dropped after ``2 * CLOSE_TIMEOUT``."""
        if self.closed:
            return
        if not is_valid_close_code(code):
            raise ValueError(f"{code} may not be sent in a close frame")
        self.closed = True
        # Control frames carry at most 125 bytes: cut the reason on a character boundary.
        self._sent_close = (code, reason.encode()[:123].decode("utf-8", "ignore"))
        self._out.append(_CLOSE)
        self._wake()
        # The queue ahead of the close, then the host's close handshake, must not take
        # forever (natively the close frame is written at once, the peer has CLOSE_TIMEOUT).
        self._deadline = asyncio.get_running_loop().call_later(2 * CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        """End the connection now, without a close handshake."""
        self.closed = True
        self._out.clear()
        self._buffered = 0
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
        self._hard_close()

    @property
    def write_buffer_size(self) -> int:
        return 0 if self.closed else self._buffered

    # running

    async def run(self) -> None:
        """Serve the connection: ``handler.on_open`` now, its messages as they come, and
        ``handler.on_close`` once when it ends (whichever side closes, or if the host server
        cancels us)."""
        loop = asyncio.get_running_loop()
        self._writer = writer = loop.create_task(self._write_loop())
        self._reader = reader = loop.create_task(self._read_loop())
        outcome = _ABORTED
        try:
            self.handler.on_open(self)
            await asyncio.wait((reader,))
            if not reader.cancelled() and reader.exception() is None:
                outcome = reader.result()
            elif not reader.cancelled():
                logger.warning("connection from %s failed", self.remote_address,
                               exc_info=reader.exception())
            if self._sent_close is not None and not writer.done():
                # Our close is still on its way (the host may wait for the peer's answer).
                await asyncio.wait((writer,), timeout=CLOSE_TIMEOUT + 0.5)
        finally:
            self.closed = True
            self._out.clear()
            self._buffered = 0
            for timer in (self._timer, self._deadline):
                if timer is not None:
                    timer.cancel()
            reader.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((reader, writer), timeout=1)
            code, reason = self._sent_close or outcome
            self.handler.on_close(code, reason)

    def _deliver(self, payload: bytes, binary: bool) -> None:
        """One inbound message, from ``_read_loop``."""
        if self.closed:
            return  # after our close, RFC 6455 1.4: the rest is discarded
        if len(payload) > self._max_size:
            logger.info("closing %s: message too big", self.remote_address)
            self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        try:
            self.handler.on_message(payload, binary, len(payload))
        except Exception:
            logger.exception("message from %s failed", self.remote_address)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _push(self, data: bytes | memoryview, binary: bool) -> None:
        self._out.append((data, binary))
        size = self._buffered = self._buffered + len(data)
        if size > self._high:
            self.paused = True
            if size > self._max_buffer:
                # The peer reads slower than we send: drop it rather than hold the memory.
                logger.info("dropping slow consumer %s", self.remote_address)
                self.close(CloseCode.SLOW_CONSUMER, "too slow to read")
                self.abort()
                return
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    async def _write_loop(self) -> None:
        out = self._out
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not out:
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    continue
                item = out.popleft()
                if item is _CLOSE:
                    assert self._sent_close is not None
                    await self._send_close(*self._sent_close)
                    break
                data, binary = item
                self._buffered -= len(data)
                if self.paused and self._buffered <= self._high // 4:
                    self.paused = False
                await self._send(data, binary)
        except Exception as exc:  # the host server's connection is gone
            logger.debug("send to %s failed: %r", self.remote_address, exc)
            self.closed = True
            out.clear()
            self._buffered = 0
        # Closed (or broken): the host server ends the read side; give it CLOSE_TIMEOUT.
        reader = self._reader
        if reader is not None and not reader.done():
            self._timer = loop.call_later(CLOSE_TIMEOUT, reader.cancel)
