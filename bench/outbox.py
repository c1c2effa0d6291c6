"""Outbox latency and throughput on the real PostgreSQL (127.0.0.1:5432 unless --server).

    .venv/bin/python -m bench.outbox [--rows 1000] [--seconds 5] [--writers 4] [--server URL]
        [--parts publish,throughput,capacity,delivery] [--redis redis://127.0.0.1:6379]

A database of its own is created and dropped. The consumer and the writers run in this process
(one event loop), so the figures include sharing one core between them; PostgreSQL runs in its
own processes.

- Latency: one writer, one row per transaction, the next row only after the previous one was
  published (an idle pipeline). Measured from just before COMMIT is sent until ``publish`` is
  called: the commit itself, the NOTIFY, the consumer's read/publish/delete round trip. p50 and
  p99 over ``--rows`` rows.
- Throughput: ``--writers`` writers commit rows as fast as they can for ``--seconds`` seconds,
  one row per transaction and then 100 rows per transaction, over 10 rooms; sustained rows/s
  published, measured until the outbox is empty again (bounded by the writers' commits here).
- Consumer capacity: ``--backlog`` rows committed in one statement beforehand, then the time
  the consumer takes to publish and delete them all, for several batch sizes.
- Delivery (commit to the members, issue 18): two ``smartsocket serve --outbox-url ...`` nodes
  joined by Redis (a ``--cluster-prefix`` of their own; both run a consumer, the advisory lock
  makes one the leader), a member of room ``bench`` on each (``smartsocket.Client`` in this
  process). Latency: one row per transaction, the next once both members got the previous
  one; from just before COMMIT to each member's receipt, p50/p99 over ``--rows`` rows. Then
  ``--writers`` writers commit one row per transaction for ``--seconds``: rows/s delivered to
  every member (until both got every row), and the latency of every 100th row, stamped at its
  INSERT just before its COMMIT, to each member's receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from bench.emitter import start_node
from smartsocket import Client
from smartsocket.outbox import OutboxConsumer, apply_schema, insert_row


class Members:
    """One member of room ``bench`` on each node, counting rows and timing stamped ones."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self.counts = [0] * len(clients)
        self.stamped: list[float] = []  # ms from a row's stamp to a member's receipt
        self.waiting: list[asyncio.Future[float]] = []
        for k, client in enumerate(clients):
            client.on("tick", self._handler(k))

    def _handler(self, k: int) -> Any:
        def received(data: Any) -> None:
            now = time.perf_counter()
            self.counts[k] += 1
            if isinstance(data, dict):
                self.stamped.append((now - data["at"]) * 1000)
            if self.waiting and not self.waiting[k].done():
                self.waiting[k].set_result(now)
        return received


@asynccontextmanager
async def two_nodes(dsn: str, redis: str) -> AsyncIterator[Members]:
    prefix = f"benchoutbox{uuid.uuid4().hex[:8]}"
    nodes = [start_node(redis, prefix, ["--outbox-url", dsn]) for _ in range(2)]
    clients = [Client(url, reconnect=False) for _, url in nodes]
    try:
        for client in clients:
            await client.connect()
            assert await client.call("join", "bench")
        yield Members(clients)
    finally:
        for client in clients:
            await client.close()
        for proc, _ in nodes:
            proc.terminate()
            proc.wait(10)


async def delivery_latency(dsn: str, members: Members, rows: int) -> list[float]:
    samples: list[float] = []
    loop = asyncio.get_running_loop()
    conn = await asyncpg.connect(dsn)
    for i in range(rows + 50):  # the first 50 warm up (and wait for a leader)
        members.waiting = [loop.create_future() for _ in members.clients]
        tx = conn.transaction()
        await tx.start()
        await insert_row(conn, "bench", "tick", i)
        start = time.perf_counter()
        await tx.commit()
        times = await asyncio.wait_for(asyncio.gather(*members.waiting), 30)
        if i >= 50:
            samples.extend((t - start) * 1000 for t in times)
    members.waiting = []
    await conn.close()
    return samples


async def delivery_throughput(dsn: str, members: Members, seconds: float,
                              writers: int) -> tuple[int, float]:
    base = min(members.counts)
    members.stamped.clear()
    written = 0

    async def writer(until: float) -> None:
        nonlocal written
        conn = await asyncpg.connect(dsn)
        i = 0
        while time.perf_counter() < until:
            async with conn.transaction():
                data: Any = {"at": time.perf_counter()} if i % 100 == 0 else i
                await insert_row(conn, "bench", "tick", data)
            i += 1
            written += 1
        await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(writer(start + seconds) for _ in range(writers)))
    deadline = time.perf_counter() + 60
    while min(members.counts) - base < written and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    return min(members.counts) - base, time.perf_counter() - start


async def delivery(dsn: str, redis: str, rows: int, seconds: float, writers: int) -> None:
    async with two_nodes(dsn, redis) as members:
        samples = await delivery_latency(dsn, members, rows)
        print(f"commit-to-delivery latency, 2 nodes (Redis), a member on each, over {rows} "
              f"rows: p50 {statistics.median(samples):.2f} ms, p99 {pct(samples, 0.99):.2f} ms,"
              f" max {max(samples):.2f} ms")
        n, elapsed = await delivery_throughput(dsn, members, seconds, writers)
        lat = members.stamped
        print(f"sustained delivery, {writers} writers, 1 row per transaction: "
              f"{n / elapsed:,.0f} rows/s to every member ({n} rows in {elapsed:.2f} s); "
              f"insert-to-delivery under load p50 {statistics.median(lat):.1f} ms, "
              f"p99 {pct(lat, 0.99):.1f} ms ({len(lat)} samples)")


async def latency(dsn: str, rows: int) -> tuple[list[float], list[float]]:
    published = asyncio.Event()
    at = 0.0

    async def publish(room: str, event: str, data: Any) -> None:
        nonlocal at
        at = time.perf_counter()
        published.set()

    samples, commits = [], []
    conn = await asyncpg.connect(dsn)
    async with OutboxConsumer(dsn, publish) as consumer:
        while not consumer.is_leader:
            await asyncio.sleep(0.01)
        for i in range(rows + 50):  # the first 50 warm up the connections and plans
            published.clear()
            tx = conn.transaction()
            await tx.start()
            await insert_row(conn, "bench", "tick", i)
            start = time.perf_counter()
            await tx.commit()
            committed = time.perf_counter()
            await asyncio.wait_for(published.wait(), 10)
            if i >= 50:
                samples.append((at - start) * 1000)
                commits.append((committed - start) * 1000)
    await conn.close()
    return samples, commits


async def throughput(dsn: str, seconds: float, writers: int, per_tx: int) -> tuple[int, float]:
    count = 0

    async def publish(room: str, event: str, data: Any) -> None:
        nonlocal count
        count += 1

    written = 0

    async def writer(k: int, until: float) -> None:
        nonlocal written
        conn = await asyncpg.connect(dsn)
        i = 0
        while time.perf_counter() < until:
            async with conn.transaction():
                for _ in range(per_tx):
                    await insert_row(conn, f"room{(k + i) % 10}", "tick", i)
                    i += 1
            written += per_tx
        await conn.close()

    async with OutboxConsumer(dsn, publish) as consumer:
        while not consumer.is_leader:
            await asyncio.sleep(0.01)
        start = time.perf_counter()
        await asyncio.gather(*(writer(k, start + seconds) for k in range(writers)))
        while count < written:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
    return count, elapsed


async def drain(dsn: str, rows: int, batch_size: int) -> float:
    """The consumer's own capacity: ``rows`` committed beforehand, timed from start to empty."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "INSERT INTO smartsocket_outbox (room, event, data)"
        " SELECT 'room' || (i % 10), 'tick', jsonb_build_object('n', i)"
        " FROM generate_series(1, $1) AS i", rows)
    await conn.close()
    count = 0
    done = asyncio.Event()

    async def publish(room: str, event: str, data: Any) -> None:
        nonlocal count
        count += 1
        if count == rows:
            done.set()

    start = time.perf_counter()
    async with OutboxConsumer(dsn, publish, batch_size=batch_size):
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - start
    return rows / elapsed


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--parts", default="publish,throughput,capacity,delivery")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    name = f"smartsocket_outbox_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{args.server}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{args.server}/{name}"
    try:
        await apply_schema(dsn)
        if "publish" in parts:
            samples, commits = await latency(dsn, args.rows)
            print(f"commit-to-publish latency over {len(samples)} rows: "
                  f"p50 {statistics.median(samples):.2f} ms, p99 {pct(samples, 0.99):.2f} ms, "
                  f"max {max(samples):.2f} ms (of which the writer's COMMIT itself: "
                  f"p50 {statistics.median(commits):.2f} ms, p99 {pct(commits, 0.99):.2f} ms)")
        for per_tx in (1, 100) if "throughput" in parts else ():
            n, elapsed = await throughput(dsn, args.seconds, args.writers, per_tx)
            print(f"sustained, {args.writers} writers, {per_tx} row(s) per transaction: "
                  f"{n / elapsed:,.0f} rows/s published ({n} rows in {elapsed:.2f} s)")
        for batch_size in (100, 500, 2000) if "capacity" in parts else ():
            rate = await drain(dsn, args.backlog, batch_size)
            print(f"consumer capacity, backlog of {args.backlog} rows, batch_size {batch_size}:"
                  f" {rate:,.0f} rows/s published")
        if "delivery" in parts:
            await delivery(dsn, args.redis, args.rows, args.seconds, args.writers)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
