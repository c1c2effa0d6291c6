"""1,000 members of a busy room stop reading: the server drops them, its memory stays bounded,
and the members that read keep receiving everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from rawws import RawClient
from smartsocket import Client
from smartsocket.testing import Recorder

SLOW = 1000
MESSAGES = 150
TEXT = "x" * 32_000  # 32 KB per message: 32 MB per broadcast to all members
MAX_WRITE_BUFFER = 128 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def open_slow(port: int) -> RawClient:
    """A member that joins, then never reads (a tiny receive window, reading paused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws = await RawClient.open_socket(sock)
    assert (await ws.handshake()).status == 101
    await ws.recv_frame()  # $welcome
    ws.send_text(json.dumps(["join", {"room": "busy"}, 1]))
    await ws.recv_frame()
    ws.pause_reading()
    return ws


async def test_slow_members_are_dropped_and_memory_stays_bounded() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0",
        "--max-write-buffer", str(MAX_WRITE_BUFFER), "--write-buffer-high", "32768",
        "--max-connections-per-ip", "0", "--rate-limit-messages", "0", "--rate-limit-bytes", "0",
        "--no-compression",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ),
    )
    slow: list[RawClient] = []
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()[-1]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        readers = [Client(url, reconnect=False) for _ in range(2)]
        for reader in readers:
            await reader.connect()
            await reader.call("join", {"room": "busy"})
        recs = [Recorder(r, "chat") for r in readers]
        for _ in range(SLOW // 100):
            slow += await asyncio.gather(*(open_slow(port) for _ in range(100)))
        publisher = Client(url, reconnect=False)
        await publisher.connect()
        await publisher.call("join", {"room": "busy"})
        before = rss_kib(proc.pid)
        peak = before
        for i in range(MESSAGES):
            await publisher.call("chat", {"room": "busy", "text": f"{i}:{TEXT}"}, timeout=30)
            peak = max(peak, rss_kib(proc.pid))
        for rec in recs:  # well-behaved members got every message, in order
            for i in range(MESSAGES):
                assert (await rec.next("chat", timeout=30))["text"].startswith(f"{i}:")
        stats = json.loads(await _get(port, "/smartsocket/stats"))
        assert stats["raw"]["droppedSlow"] == SLOW
        assert stats["connections"] == 3
        # Bounded: at most max_write_buffer per slow member (plus slack), whereas without the
        # limit the server would hold MESSAGES x 32 KB for each of them (~4.8 GB).
        growth = (peak - before) * 1024
        assert growth < SLOW * MAX_WRITE_BUFFER + 64 * 1024 * 1024, f"RSS grew {growth >> 20} MB"
        for client in [*readers, publisher]:
            await client.close()
    finally:
        for ws in slow:
            ws.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()
