"""Outbox latency and throughput on the real PostgreSQL (127.0.0.1:5432 unless --server).

    .venv/bin/python -m bench.outbox [--rows 1000] [--seconds 5] [--writers 4] [--server URL]

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
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from typing import Any

import asyncpg

from smartsocket.outbox import OutboxConsumer, apply_schema, insert_row


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
    args = parser.parse_args()

    name = f"smartsocket_outbox_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{args.server}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{args.server}/{name}"
    try:
        await apply_schema(dsn)
        samples, commits = await latency(dsn, args.rows)
        print(f"commit-to-publish latency over {len(samples)} rows: "
              f"p50 {statistics.median(samples):.2f} ms, p99 {pct(samples, 0.99):.2f} ms, "
              f"max {max(samples):.2f} ms (of which the writer's COMMIT itself: "
              f"p50 {statistics.median(commits):.2f} ms, p99 {pct(commits, 0.99):.2f} ms)")
        for per_tx in (1, 100):
            n, elapsed = await throughput(dsn, args.seconds, args.writers, per_tx)
            print(f"sustained, {args.writers} writers, {per_tx} row(s) per transaction: "
                  f"{n / elapsed:,.0f} rows/s published ({n} rows in {elapsed:.2f} s)")
        for batch_size in (100, 500, 2000):
            rate = await drain(dsn, args.backlog, batch_size)
            print(f"consumer capacity, backlog of {args.backlog} rows, batch_size {batch_size}:"
                  f" {rate:,.0f} rows/s published")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
