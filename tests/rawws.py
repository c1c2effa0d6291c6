"""A tiny raw WebSocket client for conformance tests: bytes on the wire, nothing hidden.

    ws = await RawClient.open(port)
    response = await ws.handshake("/", protocol="foo, smartsocket.v1")
    ws.send_frame(OP_TEXT, b'["echo", 1, 1]', fin=False)   # anything goes, even broken frames
    frame = await ws.recv_frame()
    await ws.wait_closed()

Received bytes are kept in our own buffer (not an ``asyncio.StreamReader``, which raises a
connection reset before handing out data it already holds), so a close frame that arrived just
before the server dropped the connection can still be read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
from dataclasses import dataclass, field

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as received (payload already unmasked)."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        """The code of a close frame; None when its payload is empty."""
        assert self.opcode == OP_CLOSE, f"not a close frame: opcode {self.opcode:#x}"
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> bytes:
        assert self.opcode == OP_CLOSE, f"not a close frame: opcode {self.opcode:#x}"
        return self.payload[2:]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """The server's answer to our HTTP request; ``headers`` keys are lower-case."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value a server must return for ``key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    masked: bool = True,
) -> bytes:
    """Build one frame; client frames are masked with a fresh random key (RFC 6455 5.3)."""
    b0 = (fin << 7) | (rsv1 << 6) | (rsv2 << 5) | (rsv3 << 4) | (opcode & 0x0F)
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((b0, mask_bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + mask(payload, key)


def close_payload(code: int | None = None, reason: bytes = b"") -> bytes:
    """The payload of a close frame: nothing, or a 2-byte code and a reason."""
    if code is None:
        return reason
    return code.to_bytes(2, "big") + reason


class _Buffer(asyncio.Protocol):
    """Collects received bytes and remembers EOF; readers wait on ``changed``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.error: Exception | None = None  # how the connection ended: None for a clean EOF
        self.changed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def eof_received(self) -> bool:
        self.eof = True
        self.changed.set()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self.changed.set()


class RawClient:
    """One TCP connection speaking WebSocket by hand."""

    def __init__(self, transport: asyncio.Transport, buffer: _Buffer) -> None:
        self._transport = transport
        self._buffer = buffer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        loop = asyncio.get_running_loop()
        transport, buffer = await loop.create_connection(_Buffer, host, port)
        return cls(transport, buffer)

    @classmethod
    async def open_socket(cls, sock: socket.socket) -> RawClient:
        """Wrap an already connected socket (e.g. one with a tiny receive buffer)."""
        loop = asyncio.get_running_loop()
        transport, buffer = await loop.create_connection(_Buffer, sock=sock)
        return cls(transport, buffer)

    def pause_reading(self) -> None:
        """Stop reading: the peer's data piles up in the kernel, then in the server."""
        self._transport.pause_reading()

    # HTTP

    async def request(
        self,
        path: str = "/",
        headers: dict[str, str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        """Send a GET with exactly ``headers`` (plus Host) and read the response head; the body
        too unless the status is 101 (then the bytes after the head are WebSocket frames)."""
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return await self.request_lines(lines, timeout=timeout)

    async def request_lines(
        self, lines: list[str], *, timeout: float = DEFAULT_TIMEOUT, head_only: bool = False
    ) -> HttpResponse:
        """Send a request head made of exactly ``lines`` (request line first; header names
        may repeat) and read the response like ``request``; ``head_only``: the answer to a
        HEAD request, whose body is empty whatever its Content-Length says."""
        self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async with asyncio.timeout(timeout):
            head = await self._read_until(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status, _, reason = status_line.partition(" ")[2].partition(" ")  # HTTP/1.1 101 ...
            parsed: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                parsed[name] = f"{parsed[name]}, {value}" if name in parsed else value
            body = b""
            if int(status) != 101 and not head_only:
                if "content-length" in parsed:
                    body = await self._read_exactly(int(parsed["content-length"]))
                else:
                    body = await self.read_until_eof(timeout)
        return HttpResponse(int(status), reason, parsed, body)

    async def handshake(
        self,
        path: str = "/",
        *,
        protocol: str | None = None,
        version: str = "13",
        extra: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        """A WebSocket upgrade request; ``protocol`` is the Sec-WebSocket-Protocol offer (none
        when None). Checks Sec-WebSocket-Accept when the server switches protocols."""
        key = base64.b64encode(os.urandom(16)).decode()
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": version,
        }
        if protocol is not None:
            headers["Sec-WebSocket-Protocol"] = protocol
        headers.update(extra or {})
        response = await self.request(path, headers, timeout=timeout)
        if response.status == 101:
            got = response.headers.get("sec-websocket-accept")
            assert got == accept_key(key), f"bad Sec-WebSocket-Accept {got!r}"
        return response

    # frames out

    def send_raw(self, data: bytes) -> None:
        self._transport.write(data)

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv1: bool = False,
        rsv2: bool = False,
        rsv3: bool = False,
    ) -> None:
        self.send_raw(encode_frame(opcode, payload, fin=fin, rsv1=rsv1, rsv2=rsv2, rsv3=rsv3))

    def send_text(self, payload: str | bytes, *, fin: bool = True) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.send_frame(OP_TEXT, data, fin=fin)

    def send_binary(self, payload: bytes, *, fin: bool = True) -> None:
        self.send_frame(OP_BINARY, payload, fin=fin)

    def send_close(self, code: int | None = None, reason: bytes = b"") -> None:
        self.send_frame(OP_CLOSE, close_payload(code, reason))

    async def send_in_pieces(self, data: bytes, size: int, delay: float = 0.002) -> None:
        """Write ``data`` (e.g. one encoded frame) ``size`` bytes at a time, pausing between
        writes so the server sees the pieces in separate reads."""
        for start in range(0, len(data), size):
            self.send_raw(data[start : start + size])
            await asyncio.sleep(delay)

    # frames in

    async def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame from the server (EOFError if the connection ends first)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self._read_exactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self._read_exactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self._read_exactly(8), "big")
            masked = bool(b1 & 0x80)
            key = await self._read_exactly(4) if masked else b""
            payload = await self._read_exactly(n)
        return Frame(
            opcode=b0 & 0x0F,
            payload=mask(payload, key) if masked else payload,
            fin=bool(b0 & 0x80),
            rsv1=bool(b0 & 0x40),
            rsv2=bool(b0 & 0x20),
            rsv3=bool(b0 & 0x10),
            masked=masked,
        )

    async def read_until_eof(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait until the server closes the TCP connection; return the bytes not yet read.
        TimeoutError if it stays open."""
        async with asyncio.timeout(timeout):
            while not self._buffer.eof:
                await self._wait()
        rest = bytes(self._buffer.data)
        self._buffer.data.clear()
        return rest

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the server to drop TCP, with nothing more sent on the connection."""
        rest = await self.read_until_eof(timeout)
        assert rest == b"", f"unexpected bytes before EOF: {rest[:60]!r}"

    @property
    def lost_error(self) -> Exception | None:
        """Why the connection ended: e.g. ConnectionResetError when the server sent a TCP
        reset; None while it is open or after a clean EOF (FIN)."""
        return self._buffer.error

    @property
    def at_eof(self) -> bool:
        return self._buffer.eof and not self._buffer.data

    def close(self) -> None:
        self._transport.close()

    # internals

    async def _wait(self) -> None:
        self._buffer.changed.clear()
        await self._buffer.changed.wait()

    async def _read_exactly(self, n: int) -> bytes:
        buf = self._buffer
        while len(buf.data) < n:
            if buf.eof:
                raise EOFError(f"connection closed with {len(buf.data)} of {n} bytes read")
            await self._wait()
        chunk = bytes(buf.data[:n])
        del buf.data[:n]
        return chunk

    async def _read_until(self, marker: bytes) -> bytes:
        buf = self._buffer
        while (end := buf.data.find(marker)) < 0:
            if buf.eof:
                raise EOFError(f"connection closed before {marker!r}: {bytes(buf.data)[:80]!r}")
            await self._wait()
        chunk = bytes(buf.data[:end])
        del buf.data[: end + len(marker)]
        return chunk
