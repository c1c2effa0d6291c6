"""``outbox_url``: the outbox consumer started with the server (server/outbox.py), on the real
PostgreSQL (a database of our own per test) and the real Redis: rows reach clients through the
server's broadcast, once, in order; never after a rollback; a lost database connection loses
nothing; two servers of one cluster deliver each row once; start-up mistakes in one line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clusters import BROKERS, ROOT, free_port, joining_app, prefix
from outboxdb import SHARED, admin_execute, asyncpg, database, until
from smartsocket import Client
from smartsocket.outbox import insert_row
from smartsocket.testing import connected, running


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as url:
        yield url


async def insert(dsn: str, rows: list[tuple[str, Any]], *, commit: bool = True) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        for room, data in rows:
            await insert_row(conn, room, "row", data)
        await (tx.commit() if commit else tx.rollback())
    finally:
        await conn.close()


def collect(client: Client) -> list[Any]:
    got: list[Any] = []
    client.on("row", got.append)
    return got


def first_seen(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


async def test_committed_rows_reach_a_client_once_in_order_rolled_back_never(dsn: str) -> None:
    async with running(joining_app(outbox_url=dsn)) as server, connected(server) as client:
        got = collect(client)
        await client.call("join", "orders")
        await insert(dsn, [("orders", n) for n in range(10)])
        await insert(dsn, [("orders", "never") for _ in range(5)], commit=False)
        for start in range(10, 100, 10):  # one transaction per 10 rows
            await insert(dsn, [("orders", n) for n in range(start, start + 10)])
        await insert(dsn, [("elsewhere", "x")])
        await until(lambda: len(got) >= 100, what="100 rows")
        assert server.stats()["outbox"]["leader"]
        await until(lambda: server.stats()["outbox"]["published"] == 101, what="all published")
        assert got == list(range(100))  # once each, in commit order, no rolled-back row


async def test_a_lost_database_connection_loses_nothing(dsn: str) -> None:
    async with running(joining_app(outbox_url=dsn)) as server, connected(server) as client:
        got = collect(client)
        await client.call("join", "r")
        await until(lambda: server.stats()["outbox"]["leader"], what="leadership")
        await insert(dsn, [("r", n) for n in range(50)])
        await until(lambda: len(got) >= 10, what="the stream")
        conn = await asyncpg.connect(dsn)
        try:  # the consumer's backend goes, as in a database restart
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert killed >= 1
        await insert(dsn, [("r", n) for n in range(50, 100)])
        await until(lambda: first_seen(got) == list(range(100)), timeout=30, what="every row")
        assert server.stats()["outbox"]["reconnects"] >= 1
    # At least once: a batch in flight when its connection went may come again, in order.
    assert set(got) == set(range(100))


async def test_two_servers_of_a_cluster_deliver_each_row_once(dsn: str) -> None:
    options = {"outbox_url": dsn, "cluster_url": BROKERS["redis"], "cluster_prefix": prefix()}
    async with running(joining_app(**options)) as a, running(joining_app(**options)) as b, \
            connected(a) as on_a, connected(b) as on_b:
        got_a, got_b = collect(on_a), collect(on_b)
        for client in (on_a, on_b):
            await client.call("join", "shared")
        await until(
            lambda: [a.stats()["outbox"]["leader"], b.stats()["outbox"]["leader"]].count(True)
            == 1, what="one leader",
        )
        for start in range(0, 60, 6):
            await insert(dsn, [("shared", n) for n in range(start, start + 6)])
        await until(lambda: len(got_a) >= 60 and len(got_b) >= 60, what="60 rows on both")
        await asyncio.sleep(0.1)
        assert got_a == got_b == list(range(60))
        published = a.stats()["outbox"]["published"] + b.stats()["outbox"]["published"]
        assert published == 60


async def test_an_unreachable_database_does_not_stop_the_server() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    async with running(joining_app(outbox_url=url)) as server, connected(server) as client:
        assert await client.call("join", "r")
        assert not server.stats()["outbox"]["leader"]  # it keeps retrying with backoff


def serve(*args: str, hide_asyncpg: bool = False) -> subprocess.CompletedProcess[str]:
    code = "import sys\n"
    if hide_asyncpg:
        code += "sys.modules['asyncpg'] = None\n"
    code += "from smartsocket.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", "0", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


@pytest.fixture
async def bare() -> AsyncIterator[str]:
    """A database without the outbox table."""
    name = f"smartsocket_outbox_bare_{prefix()}"
    await admin_execute(SHARED, f'CREATE DATABASE "{name}"')
    try:
        yield f"{SHARED}/{name}"
    finally:
        await admin_execute(SHARED, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(("url", "message"), [
    (f"{SHARED}/smartsocket_no_such_db", "InvalidCatalogNameError"),
    ("", "no table smartsocket_outbox"),  # the bare database
    ("mysql://x", "must start with postgresql://"),
])
async def test_mistakes_stop_the_start_in_one_line(url: str, message: str, bare: str) -> None:
    done = await asyncio.to_thread(serve, "--outbox-url", url or bare)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert message in lines[-1] and "outbox_url" in lines[-1]


def test_without_asyncpg_the_start_names_the_extra(dsn: str) -> None:
    done = serve("--outbox-url", dsn, hide_asyncpg=True)
    assert done.returncode == 1
    assert "smartsocket[postgres]" in done.stderr.strip().splitlines()[-1]


async def test_a_consumer_of_its_own_publishes_through_an_emitter(dsn: str) -> None:
    """The consumer outside the servers (docs/outbox.md): rows reach a server's client through
    an AsyncEmitter on the cluster's Redis."""
    from smartsocket import AsyncEmitter
    from smartsocket.outbox import OutboxConsumer

    options = {"cluster_url": BROKERS["redis"], "cluster_prefix": prefix()}
    async with running(joining_app(**options)) as server, connected(server) as client, \
            AsyncEmitter(BROKERS["redis"], prefix=options["cluster_prefix"]) as emitter, \
            OutboxConsumer(dsn, emitter.publish):
        got = collect(client)
        await client.call("join", "feed")
        await insert(dsn, [("feed", n) for n in range(20)])
        await insert(dsn, [("feed", "never")], commit=False)
        await insert(dsn, [("feed", 20)])
        await until(lambda: len(got) >= 21, what="21 rows")
        await asyncio.sleep(0.05)
        assert got == list(range(21))
