"""Room members for bench/api.py that cost the bench process little per delivery.

A member is a raw WebSocket client on an asyncio ``Protocol``: the upgrade by hand (no
extension: every frame arrives uncompressed), the server's frames (unmasked) parsed from the
received bytes in one loop, and per frame only what the bench checks: events ``t`` counted
(the stamped ones, ``{"at": ...}``, timed from the arrival of the read that held them), other
events counted by name (``$gap``: the server told of a loss; ``w``: the warm-up), ``$ping``
answered with ``$pong``, a ping frame with a pong, a close frame with a close. The
``websockets`` library spent ~10 µs of the bench's single core per delivery, more than the
server spent on the publish: the batch rate measured the members, not the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

_STAMP = b'"at"'
_EVENT = b'["t"'
_PING = b'["$ping'
_WARM = b'["w"'
_MASK = b"\x00\x00\x00\x00"  # a valid mask key: the frame's bytes are sent as they are


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked (key 0) client frame; control and bench payloads are < 126 bytes."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + _MASK + payload


class RawMember(asyncio.Protocol):
    """A room member counting deliveries and timing the stamped ones (see the module doc)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sid = ""
        self.warm = False
        self.other: dict[str, int] = {}  # other events by name ($gap: the server told of a loss)
        self.count = 0
        self.latencies: list[float] = []
        self.waiter: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[str] = loop.create_future()  # the socket id
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.closing = False  # our close frame is sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.host.encode(), key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError("closed before the welcome"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            assert buf.startswith(b"HTTP/1.1 101"), buf[:200]
            self.upgraded = True
            buf = buf[end + 4:]
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                length = int.from_bytes(buf[start:start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(buf[start:start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            head = buf[pos]
            pos = end
            if head == 0x81:  # a whole text frame: what the bench gets
                self._message(buf[start:end], now)
            else:
                self._control(head, buf[start:end])
        self.buffer = buf[pos:]

    def _message(self, message: bytes, now: float) -> None:
        if message[:4] == _EVENT:
            self.count += 1
            if _STAMP in message:
                self.latencies.append((now - json.loads(message)[1]["at"]) * 1000)
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if message[:7] == _PING:
            value = json.loads(message)[1:2]
            self.send(json.dumps(["$pong", *value]).encode())
            return
        self.warm = self.warm or message[:4] == _WARM
        name = message[2:message.find(b'"', 2)].decode()
        self.other[name] = self.other.get(name, 0) + 1
        if name == "$welcome" and not self.welcome.done():
            self.welcome.set_result(json.loads(message)[1]["sid"])

    def _control(self, head: int, payload: bytes) -> None:
        opcode = head & 0x0F
        assert head & 0x80 and opcode in (8, 9, 10), f"unexpected frame {head:#x}"
        assert self.transport is not None
        if opcode == 9:
            self.transport.write(_client_frame(10, payload))
        elif opcode == 8:
            if not self.closing:  # the server's close: answered (ours: this is the answer)
                self.transport.write(_client_frame(8, payload[:2]))
            self.transport.close()

    def send(self, message: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_client_frame(1, message))

    async def close(self) -> None:
        """The close handshake (the server's answer awaited at most 5 s)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.closing = True
        self.transport.write(_client_frame(8, (1000).to_bytes(2, "big")))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        except TimeoutError:
            self.transport.close()


async def connect(host: str) -> RawMember:
    """A member connected to ``host`` (``address:port``), its welcome received."""
    address, port = host.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    _, member = await loop.create_connection(lambda: RawMember(host), address, int(port))
    member.sid = await asyncio.wait_for(member.welcome, 30)
    return member
