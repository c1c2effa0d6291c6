"""How much speed mounting costs: echo acks per second with the Python client against the
same demo app served natively, under uvicorn (``smartsocket.asgi``) and under aiohttp
(``smartsocket.integrations.aiohttp``).

    python examples/bench_mounts.py                     # 2 s per measure, every server
    python examples/bench_mounts.py --duration 5 --modes native,uvicorn

Each server runs in its own process on 127.0.0.1; the clients run in this one. Two measures:
one client making one call at a time (round trips: latency-bound), and ``--clients`` clients
with ``--inflight`` calls each in flight (throughput). The client is one Python process
too, so it bounds the throughput figures as much as the server does; the server's CPU time
per ack (read from /proc, Linux) does not depend on the client. Compression and rate limits
are off on every side. Needs uvicorn and aiohttp (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator

MODES = ("native", "uvicorn", "aiohttp")
PAYLOAD = {"text": "hello", "n": 42}


def serve(mode: str, port: int) -> None:
    """Run the demo app on 127.0.0.1:port (the server half: a subprocess of the bench)."""
    from smartsocket.config import Config
    from smartsocket.demo import create_app

    config = Config(host="127.0.0.1", port=port, enable_compression=False,
                    rate_limit_messages=0, rate_limit_bytes=0)
    server = create_app(config)
    if mode == "native":
        server.listen()
    elif mode == "uvicorn":
        import uvicorn

        from smartsocket.asgi import SmartSocketASGI

        uvicorn.run(SmartSocketASGI(server), host="127.0.0.1", port=port, log_level="warning",
                    ws_per_message_deflate=False)
    elif mode == "aiohttp":
        from aiohttp import web

        from smartsocket.integrations.aiohttp import setup

        app = web.Application()
        setup(app, server, "/")
        web.run_app(app, host="127.0.0.1", port=port, print=None)
    else:
        raise SystemExit(f"unknown mode {mode}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def server_process(mode: str) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", mode, "--port", str(port),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"ws://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{mode} server did not start") from None
                await asyncio.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def measure(
    url: str, pid: int, clients: int, inflight: int, duration: float
) -> tuple[float, float | None]:
    """Echo acks per second over ``duration`` (after a short warm-up), and the server's CPU
    microseconds per ack."""
    from smartsocket import Client

    conns = [await Client(url, compression=False, reconnect=False).connect()
             for _ in range(clients)]
    counting = False
    done = 0
    stop = False

    async def caller(client: Client) -> None:
        nonlocal done
        while not stop:
            await client.call("echo", PAYLOAD)
            if counting:
                done += 1

    tasks = [asyncio.ensure_future(caller(c)) for c in conns for _ in range(inflight)]
    await asyncio.sleep(min(0.5, duration / 4))  # warm-up
    counting = True
    start, cpu_start = time.perf_counter(), cpu_seconds(pid)
    await asyncio.sleep(duration)
    counting = False
    elapsed, cpu_end = time.perf_counter() - start, cpu_seconds(pid)
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in conns:
        await client.close()
    cpu = None
    if cpu_start is not None and cpu_end is not None and done:
        cpu = (cpu_end - cpu_start) / done * 1e6
    return done / elapsed, cpu


async def bench(modes: list[str], duration: float, clients: int, inflight: int) -> None:
    results: dict[str, tuple[float, float, float | None]] = {}
    for mode in modes:
        async with server_process(mode) as (url, pid):
            serial, _ = await measure(url, pid, 1, 1, duration)
            parallel, cpu = await measure(url, pid, clients, inflight, duration)
        results[mode] = (serial, parallel, cpu)
        print(f"{mode}: {serial:,.0f} / {parallel:,.0f} acks/s", file=sys.stderr, flush=True)
    print(f"| server | 1 client, 1 call at a time | {clients} clients x {inflight} in flight "
          "| server CPU per ack |")
    print("|---|---|---|---|")
    for mode, (serial, parallel, cpu) in results.items():
        cost = "n/a" if cpu is None else f"{cpu:.0f} µs"
        print(f"| {mode} | {serial:,.0f} acks/s | {parallel:,.0f} acks/s | {cost} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measure")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=16, help="calls in flight per client")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    asyncio.run(bench(modes, args.duration, args.clients, args.inflight))


if __name__ == "__main__":
    main()
