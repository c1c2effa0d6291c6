"""Socket.IO long-polling on SmartSocket: acked events per second over polling, HTTP requests
per second, and what an upgrade to WebSocket costs against connecting on WebSocket directly.

    .venv/bin/python -m bench.socketio_polling --seconds 3 --sessions 20

The server is a ``smartsocket serve`` subprocess; the generator is aiohttp in this process,
slower than the server: the figures are a lower bound of the server's rate. Raw Engine.IO v4
/ Socket.IO v5 packets, no client library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

import aiohttp

from smartsocket import Config, SmartSocket, Socket

APP = "bench.socketio_polling:app"


def app(config: Config | None = None) -> SmartSocket:
    server = SmartSocket(config=config)

    @server.on("echo")
    def echo(socket: Socket, data: Any) -> Any:
        return data

    return server


async def _open(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url, params={"EIO": "4", "transport": "polling"}) as resp:
        sid: str = json.loads((await resp.text())[1:])["sid"]
    params = {"EIO": "4", "transport": "polling", "sid": sid}
    async with http.post(url, params=params, data=b"40") as resp:
        await resp.read()
    async with http.get(url, params=params) as resp:
        await resp.read()  # the CONNECT answer
    return sid


async def _acks(http: aiohttp.ClientSession, url: str, end: float, counts: list[int]) -> None:
    sid = await _open(http, url)
    params = {"EIO": "4", "transport": "polling", "sid": sid}
    ack = 0
    while time.monotonic() < end:
        ack += 1
        async with http.post(url, params=params, data=b'421["echo",1]'.replace(
                b"421", b"42%d" % ack)) as resp:
            await resp.read()
        got = b""
        while b"43%d[" % ack not in got:
            async with http.get(url, params=params) as resp:
                got += await resp.read()
            counts[1] += 1
        counts[0] += 1
        counts[1] += 1


async def _upgrade(http: aiohttp.ClientSession, url: str, ws_url: str) -> None:
    sid = await _open(http, url)
    async with http.ws_connect(ws_url, params={"EIO": "4", "transport": "websocket",
                                               "sid": sid}) as ws:
        await ws.send_str("2probe")
        assert (await ws.receive()).data == "3probe"
        await ws.send_str("5")
        await ws.send_str('420["echo",1]')
        while "430[" not in (await ws.receive()).data:
            pass


async def _direct(http: aiohttp.ClientSession, ws_url: str) -> None:
    async with http.ws_connect(ws_url, params={"EIO": "4", "transport": "websocket"}) as ws:
        await ws.receive()  # open packet
        await ws.send_str("40")
        await ws.receive()  # CONNECT answer
        await ws.send_str('420["echo",1]')
        while "430[" not in (await ws.receive()).data:
            pass


async def run(port: int, seconds: float, sessions: int, connects: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/socket.io/"
    ws_url = f"ws://127.0.0.1:{port}/socket.io/"
    limits = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=limits) as http:
        counts = [0, 0]
        end = time.monotonic() + seconds
        start = time.monotonic()
        await asyncio.gather(*(_acks(http, url, end, counts) for _ in range(sessions)))
        elapsed = time.monotonic() - start
        t0 = time.perf_counter()
        for _ in range(connects):
            await _upgrade(http, url, ws_url)
        upgrade = (time.perf_counter() - t0) / connects
        t0 = time.perf_counter()
        for _ in range(connects):
            await _direct(http, ws_url)
        direct = (time.perf_counter() - t0) / connects
    return {
        "polling_acks_per_s": counts[0] / elapsed,
        "polling_requests_per_s": counts[1] / elapsed,
        "polling_then_upgrade_ms": upgrade * 1000,
        "websocket_direct_ms": direct * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--connects", type=int, default=50)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0",
         "--app", APP, "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        port = 0
        for line in server.stdout:
            found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found[1])
                break
        figures = asyncio.run(run(port, args.seconds, args.sessions, args.connects))
    finally:
        server.terminate()
        server.wait()
    for name, value in figures.items():
        print(f"{name:26} {value:12,.1f}")


if __name__ == "__main__":
    main()
