"""A round-robin HTTP proxy for tests: each request goes to the next upstream in turn (no
session affinity at all), WebSocket upgrades are refused (400) so Socket.IO clients stay on
long-polling. One request per client connection (answers carry ``Connection: close``).

In-process: ``async with round_robin([port_a, port_b]) as proxy: proxy.port``; as a process
(the Node tests): ``python tests/rrproxy.py PORT_A PORT_B`` prints ``listening PORT``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager


class RoundRobin:
    def __init__(self, upstreams: Sequence[int]) -> None:
        self._next = itertools.cycle(upstreams).__next__
        self.port = 0
        self.served: list[int] = []  # the upstream of each request, in order
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, body = await _read_message(reader)
            lines = head.split(b"\r\n")
            if any(line.lower().startswith(b"upgrade:") for line in lines[1:]):
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                await writer.drain()
                return
            upstream = self._next()
            self.served.append(upstream)
            kept = [line for line in lines[1:] if line and not line.lower().startswith(
                (b"connection:", b"keep-alive:"))]
            request = b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n" + body
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
            try:
                up_writer.write(request)
                await up_writer.drain()
                rhead, rbody = await _read_message(up_reader)
            finally:
                up_writer.close()
            rlines = [line for line in rhead.split(b"\r\n") if line and not line.lower()
                      .startswith((b"connection:", b"keep-alive:"))]
            writer.write(b"\r\n".join([*rlines, b"Connection: close"]) + b"\r\n\r\n" + rbody)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head, body


@asynccontextmanager
async def round_robin(upstreams: Sequence[int]) -> AsyncIterator[RoundRobin]:
    proxy = RoundRobin(upstreams)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def _main(ports: list[int]) -> None:
    proxy = RoundRobin(ports)
    await proxy.start()
    print(f"listening {proxy.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main([int(port) for port in sys.argv[1:]]))
