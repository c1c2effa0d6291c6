"""Redis drops a node's subscription that reads too slowly: is the loss told (``$gap``)?

    .venv/bin/python -m bench.slow_subscriber [--recovery 0] [--seconds 30]

A throwaway ``redis-server`` (a free port, ``client-output-buffer-limit pubsub 256kb 128kb 1``:
Redis's default is 32 MB hard, 8 MB for 60 s) and two ``smartsocket serve`` nodes on it, a room
member on each (``websockets``). Node B is paused (SIGSTOP) while batches of 1,000 publishes go
to node A's HTTP API, until Redis has dropped B's subscription (or ``--seconds``); then B is
resumed and the members' counts and ``$gap`` notices are printed with both nodes' figures.
A correct node either delivers every accepted publish or says ``$gap``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import redis
import websockets

SECRET = "bench-slow-subscriber-0123456789"
HEADERS = {"Authorization": f"Bearer {SECRET}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--client-output-buffer-limit", "pubsub 262144 131072 1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def node(port: int, cluster_prefix: str, recovery: float) -> Iterator[tuple[Any, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0",
         "--api-secret", SECRET, "--rate-limit-messages", "0", "--log-level", "WARNING",
         "--cluster-url", f"redis://127.0.0.1:{port}", "--cluster-prefix", cluster_prefix,
         "--recovery-window", str(recovery), "--history-size", "100", "--node-timeout", "60"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
        yield proc, line.rsplit(" ", 1)[1].strip().replace("ws://", "").rstrip("/")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(30)


class Member:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.got = 0
        self.gaps = 0
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                if message.startswith('["n"'):
                    self.got += 1
                elif message.startswith('["$gap'):
                    self.gaps += 1
                elif message.startswith('["$ping'):
                    await self.ws.send(json.dumps(["$pong", *json.loads(message)[1:2]]))


async def join(http: aiohttp.ClientSession, host: str) -> Member:
    ws = await websockets.connect(f"ws://{host}/", max_size=None)
    sid = json.loads(await ws.recv())[1]["sid"]
    async with http.post(f"http://{host}/smartsocket/api/join",
                         json={"sid": sid, "room": "r"}, headers=HEADERS) as response:
        assert response.status == 200
    return Member(ws)


async def figures(http: aiohttp.ClientSession, host: str) -> str:
    async with http.post(f"http://{host}/smartsocket/api/stats", json={},
                         headers=HEADERS) as response:
        stats = (await response.json())["result"]
    c, r = stats["cluster"], stats.get("recovery") or {}
    return (f"published {c['published']}, received {c['received']}, reconnects "
            f"{c['reconnects']}, gaps {c.get('gaps', 0) + r.get('gaps', 0)}")


async def main(args: argparse.Namespace) -> None:
    name = "benchslow" + uuid.uuid4().hex[:8]
    with redis_server() as port, node(port, name, args.recovery) as (_, a), \
            node(port, name, args.recovery) as (b_proc, b):
        watcher = redis.Redis(port=port)
        async with aiohttp.ClientSession() as http:
            here, there = await join(http, a), await join(http, b)
            before = len(watcher.client_list(_type="pubsub"))
            os.kill(b_proc.pid, signal.SIGSTOP)
            accepted = refused = 0
            until = time.monotonic() + args.seconds
            ops = [{"op": "publish", "room": "r", "event": "n", "data": "x" * 100}] * 1000
            while time.monotonic() < until:
                async with http.post(f"http://{a}/smartsocket/api/batch",
                                     json={"operations": ops}, headers=HEADERS) as response:
                    results = (await response.json())["results"]
                accepted += sum(1 for item in results if "result" in item)
                refused += sum(1 for item in results if "error" in item)
                if len(watcher.client_list(_type="pubsub")) < before:
                    break
            dropped = len(watcher.client_list(_type="pubsub")) < before
            os.kill(b_proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                here.got < accepted or (there.got < accepted and not there.gaps)
            ):
                await asyncio.sleep(0.1)
            print(f"recovery {args.recovery:g}: {accepted:,} publishes accepted ({refused:,} "
                  f"refused); Redis dropped B's subscription: {dropped}; A's member got "
                  f"{here.got:,}, B's member got {there.got:,} and {there.gaps} $gap")
            print(f"  A: {await figures(http, a)}; B: {await figures(http, b)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recovery", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
