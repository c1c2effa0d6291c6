"""Emitter throughput and publish-to-delivery latency through Redis and NATS.

    .venv/bin/python -m bench.emitter [--seconds 3] [--messages 500] [--brokers redis,nats]

For each broker (the local Redis on 6379 and NATS on 4222 unless --redis / --nats):

- Throughput: publishes/s the broker took, for ``--seconds`` each, to a room without members
  (the emitter and the broker only, no fan-out): ``AsyncEmitter`` with 64 tasks awaiting one
  publish at a time (its writer batches them), ``AsyncEmitter.batch()`` of 1,000, the sync
  ``Emitter`` with ``batch()`` of 1,000 and one ``publish`` at a time.
- Latency: two SmartSocket nodes (processes, ``smartsocket serve``) joined by the broker, a
  member of the room on each (clients in this process); ``AsyncEmitter`` publishes one message
  at a time, the next once both members got it; from just before ``publish`` to each member's
  receipt, p50 and p99 over ``--messages`` messages (after 50 to warm up).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartsocket import AsyncEmitter, Client, Config, Emitter, SmartSocket, Socket

ROOT = Path(__file__).resolve().parent.parent


def create(config: Config | None = None) -> SmartSocket:
    """The nodes' app (``--app bench.emitter:create``): ``join`` acks once subscribed."""
    server = SmartSocket(config=config)

    @server.on("join")
    async def join(socket: Socket, room: str) -> bool:
        socket.join(room)
        return await server.room(room).subscribed()

    return server


async def async_concurrent(url: str, prefix: str, seconds: float) -> float:
    async with AsyncEmitter(url, prefix=prefix) as emitter:
        done = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await emitter.publish("empty", "tick", {"n": done})
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        return done / (time.perf_counter() - start)


async def async_batches(url: str, prefix: str, seconds: float) -> float:
    async with AsyncEmitter(url, prefix=prefix) as emitter:
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            async with emitter.batch() as batch:
                for n in range(1000):
                    batch.publish("empty", "tick", {"n": n})
            done += 1000
        return done / (time.perf_counter() - start)


def sync_rate(url: str, prefix: str, seconds: float, batched: bool) -> float:
    with Emitter(url, prefix=prefix) as emitter:
        emitter.connect()
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if batched:
                with emitter.batch() as batch:
                    for n in range(1000):
                        batch.publish("empty", "tick", {"n": n})
                done += 1000
            else:
                emitter.publish("empty", "tick", {"n": done})
                done += 1
        return done / (time.perf_counter() - start)


def start_node(url: str, prefix: str, extra: Sequence[str] = ()
               ) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartsocket", "serve", "--app", "bench.emitter:create",
         "--host", "127.0.0.1", "--port", "0", "--cluster-url", url, "--cluster-prefix", prefix,
         "--rate-limit-messages", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "listening on" in line, line
    return proc, line.rsplit(" ", 1)[1].strip()


async def latency(url: str, prefix: str, messages: int) -> list[float]:
    nodes = [start_node(url, prefix) for _ in range(2)]
    clients = [Client(node_url, reconnect=False) for _, node_url in nodes]
    try:
        for client in clients:
            await client.connect()
            assert await client.call("join", "bench")
        samples: list[float] = []
        arrived: list[asyncio.Future[float]] = []

        def received(data: Any) -> None:
            for future in arrived:
                if not future.done():
                    future.set_result(time.perf_counter())
                    return

        for client in clients:
            client.on("tick", received)
        async with AsyncEmitter(url, prefix=prefix) as emitter:
            for n in range(messages + 50):
                loop = asyncio.get_running_loop()
                arrived = [loop.create_future(), loop.create_future()]
                start = time.perf_counter()
                await emitter.publish("bench", "tick", n)
                times = await asyncio.wait_for(asyncio.gather(*arrived), 10)
                if n >= 50:
                    samples.extend((t - start) * 1000 for t in times)
        return samples
    finally:
        for client in clients:
            await client.close()
        for proc, _ in nodes:
            proc.terminate()
            proc.wait(10)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--brokers", default="redis,nats")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    print("| broker | AsyncEmitter, 64 tasks | AsyncEmitter batch 1000 | Emitter batch 1000 "
          "| Emitter one at a time | delivery p50 | delivery p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for broker in args.brokers.split(","):
        url = getattr(args, broker)
        prefix = "bench" + uuid.uuid4().hex[:8]
        concurrent = await async_concurrent(url, prefix, args.seconds)
        batches = await async_batches(url, prefix, args.seconds)
        sync_batches = await asyncio.to_thread(sync_rate, url, prefix, args.seconds, True)
        sync_single = await asyncio.to_thread(sync_rate, url, prefix, args.seconds, False)
        samples = await latency(url, prefix, args.messages)
        print(f"| {broker} | {concurrent:,.0f}/s | {batches:,.0f}/s | {sync_batches:,.0f}/s "
              f"| {sync_single:,.0f}/s | {statistics.median(samples):.2f} ms "
              f"| {percentile(samples, 99):.2f} ms |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
