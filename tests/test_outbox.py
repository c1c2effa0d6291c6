"""The outbox consumer against the real PostgreSQL at 127.0.0.1:5432 (a database of our own per
test): delivered once and in order, never after a rollback, commit order per room, lost
connections, two consumers."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from outboxdb import Recorder, asyncpg, count_rows, database, until
from smartsocket.outbox import OutboxConsumer, encode_row, insert_row, schema_sql

FAST = {"poll_interval": 5.0, "standby_interval": 0.05, "reconnect_delay": (0.02, 0.2),
        "retry_delay": 0.02}


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as url:
        yield url


async def until_empty(dsn: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await count_rows(dsn) != 0:
        assert asyncio.get_running_loop().time() < deadline, "outbox not emptied"
        await asyncio.sleep(0.01)


async def insert_committed(dsn: str, rows: list[tuple[str, str, Any]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for room, event, data in rows:
                await insert_row(conn, room, event, data)
    finally:
        await conn.close()


async def test_committed_rows_are_published_once_in_order(dsn: str) -> None:
    rec = Recorder()
    async with OutboxConsumer(dsn, rec, batch_size=7, **FAST) as consumer:  # type: ignore[arg-type]
        await until(lambda: consumer.is_leader, what="leadership")
        expected: dict[str, list[int]] = {"a": [], "b": [], "c": []}
        n = 0
        for _ in range(20):  # 20 transactions of 6 rows over 3 rooms
            batch = []
            for room in "abcabc":
                batch.append((room, "tick", {"n": n}))
                expected[room].append(n)
                n += 1
            await insert_committed(dsn, batch)
        await until(lambda: len(rec.calls) >= n, what="all rows")
        await until_empty(dsn)  # every publish is followed by its delete's commit
    assert len(rec.calls) == n == consumer.published
    for room, ns in expected.items():
        assert [d["n"] for d in rec.room(room)] == ns
    assert {event for _, event, _ in rec.calls} == {"tick"}


async def test_rows_committed_before_the_consumer_starts_are_published(dsn: str) -> None:
    await insert_committed(dsn, [("r", "e", i) for i in range(50)])
    rec = Recorder()
    async with OutboxConsumer(dsn, rec, **FAST):  # type: ignore[arg-type]
        await until(lambda: len(rec.calls) == 50)
    assert rec.room("r") == list(range(50))


async def test_rolled_back_rows_are_never_published(dsn: str) -> None:
    rec = Recorder()
    async with OutboxConsumer(dsn, rec, **FAST) as consumer:  # type: ignore[arg-type]
        conn = await asyncpg.connect(dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await insert_row(conn, "r", "e", "rolled back")
            await tx.rollback()
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await insert_row(conn, "r", "e", "raised")
                    raise RuntimeError
            await insert_committed(dsn, [("r", "e", "committed")])
        finally:
            await conn.close()
        await until(lambda: len(rec.calls) == 1)
        await until_empty(dsn)
    assert rec.calls == [("r", "e", "committed")]
    assert consumer.published == 1


async def test_commit_order_per_room_not_id_or_xid_order(dsn: str) -> None:
    """A inserts for room r first (lower xid, lower id), B second; B commits first. Room r is
    published B then A: commit order. Neither waits for the other before committing."""
    rec = Recorder()
    a, b = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        async with OutboxConsumer(dsn, rec, **FAST):  # type: ignore[arg-type]
            ta, tb = a.transaction(), b.transaction()
            await ta.start()
            await tb.start()
            await insert_row(a, "r", "e", "A")
            await insert_row(b, "r", "e", "B")
            ids = await a.fetch("SELECT id, xid::text FROM smartsocket_outbox")
            await tb.commit()
            await until(lambda: rec.room("r") == ["B"])  # A's open transaction holds nothing up
            await ta.commit()
            await until(lambda: len(rec.room("r")) == 2)
        assert rec.room("r") == ["B", "A"]
        (a_id, a_xid), = ids  # A sees only its own row
        assert a_id == 1 and int(a_xid) > 0
    finally:
        for conn in (a, b):
            await conn.close()


async def test_transactions_over_several_rooms_in_opposite_orders_do_not_deadlock(
        dsn: str) -> None:
    rec = Recorder()
    a, b = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        async with OutboxConsumer(dsn, rec, **FAST):  # type: ignore[arg-type]
            for _ in range(20):
                ta, tb = a.transaction(), b.transaction()
                await ta.start()
                await tb.start()
                for room in "xyz":
                    await insert_row(a, room, "e", "a")
                for room in "zyx":
                    await insert_row(b, room, "e", "b")
                await asyncio.gather(ta.commit(), tb.commit())
            await until(lambda: len(rec.calls) == 120)
        for room in "xyz":
            assert sorted(rec.room(room)) == ["a"] * 20 + ["b"] * 20
    finally:
        for conn in (a, b):
            await conn.close()


async def test_concurrent_writers_publish_each_room_in_commit_order(dsn: str) -> None:
    """Writers insert their outbox row first and then take their room's counter row (a row
    lock held to commit): ids follow insert order, counter values follow commit order, and the
    two often disagree. Each room must be published in counter order."""
    rec = Recorder()
    rooms = ["x", "y", "z"]
    setup = await asyncpg.connect(dsn)
    await setup.execute("CREATE TABLE counters (room text PRIMARY KEY, n int NOT NULL)")
    await setup.executemany("INSERT INTO counters VALUES ($1, 0)", [(r,) for r in rooms])
    await setup.close()

    async def writer(k: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for i in range(15):
                room = rooms[(k + i) % len(rooms)]
                async with conn.transaction():
                    row_id = await conn.fetchval(
                        "INSERT INTO smartsocket_outbox (room, event) VALUES ($1, 'e')"
                        " RETURNING id", room)
                    await asyncio.sleep(0.001 * ((k * 7 + i) % 3))  # vary the interleaving
                    n = await conn.fetchval(
                        "UPDATE counters SET n = n + 1 WHERE room = $1 RETURNING n", room)
                    await conn.execute("UPDATE smartsocket_outbox SET data ="
                                       " jsonb_build_object('n', $1::int, 'id', id)"
                                       " WHERE id = $2", n, row_id)
        finally:
            await conn.close()

    async with OutboxConsumer(dsn, rec, **FAST):  # type: ignore[arg-type]
        await asyncio.gather(*(writer(k) for k in range(6)))
        await until(lambda: len(rec.calls) == 90)
    inversions = 0
    for room in rooms:
        published = rec.room(room)
        assert [d["n"] for d in published] == list(range(1, len(published) + 1))
        ids = [d["id"] for d in published]
        inversions += sum(1 for x, y in itertools.pairwise(ids) if x > y)
    # Commit order differed from id order somewhere (not asserted: it depends on timing).
    logging.getLogger("test").info("rows published out of id order: %d", inversions)


async def test_lost_connection_mid_stream_loses_nothing(dsn: str) -> None:
    # (Backends are picked in this test's own database: another run of this test on the same
    # PostgreSQL has the same application_name, and it was killed and counted too.)
    rec = Recorder()
    admin = await asyncpg.connect(dsn)
    try:
        async with OutboxConsumer(f"{dsn}?application_name=outbox-lost", rec,
                                  **FAST) as consumer:  # type: ignore[arg-type]
            await insert_committed(dsn, [("r", "e", i) for i in range(100)])
            await until(lambda: len(rec.calls) == 100)
            await until_empty(dsn)  # the last delete committed: nothing is in flight
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'outbox-lost' AND datname = current_database()")
            assert killed == 1
            for i in range(100, 200, 10):  # commits while the consumer reconnects
                await insert_committed(dsn, [("r", "e", j) for j in range(i, i + 10)])
            await until(lambda: len(rec.calls) == 200)
            assert consumer.reconnects >= 1
        assert rec.room("r") == list(range(200))
    finally:
        await admin.close()


async def test_a_publish_cut_before_its_commit_is_repeated_not_lost(dsn: str) -> None:
    """The one ambiguous window: published, then the connection dies before the delete commits.
    The row comes again (at-least-once); nothing after it is lost or reordered."""
    rec = Recorder()
    admin = await asyncpg.connect(dsn)
    entered, release = asyncio.Event(), asyncio.Event()

    async def hook(room: str, event: str, data: Any) -> None:
        if data == 3 and not release.is_set():
            entered.set()
            await release.wait()

    rec.hook = hook
    try:
        await insert_committed(dsn, [("r", "e", i) for i in range(6)])
        async with OutboxConsumer(f"{dsn}?application_name=outbox-cut", rec, batch_size=1,
                                  **FAST):  # type: ignore[arg-type]
            await asyncio.wait_for(entered.wait(), 20)
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE application_name = 'outbox-cut'"
                                " AND datname = current_database()")
            release.set()
            await until(lambda: rec.room("r")[-1:] == [5])
        assert rec.room("r") == [0, 1, 2, 3, 3, 4, 5]
    finally:
        await admin.close()


async def test_two_consumers_deliver_each_row_once(dsn: str) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = OutboxConsumer(dsn, rec_a, **FAST)  # type: ignore[arg-type]
    b = OutboxConsumer(dsn, rec_b, **FAST)  # type: ignore[arg-type]
    await a.start()
    await b.start()
    try:
        await until(lambda: a.is_leader or b.is_leader)
        for i in range(0, 100, 5):
            await insert_committed(dsn, [("r", "e", j) for j in range(i, i + 5)])
        await until(lambda: len(rec_a.calls) + len(rec_b.calls) == 100)
        assert not (a.is_leader and b.is_leader)
        leader, standby = (a, b) if a.is_leader else (b, a)
        await leader.stop()  # the standby takes over
        await until(lambda: standby.is_leader, what="failover")
        await insert_committed(dsn, [("r", "e", j) for j in range(100, 120)])
        await until(lambda: len(rec_a.calls) + len(rec_b.calls) == 120)
    finally:
        await a.stop()
        await b.stop()
    got = sorted(rec_a.room("r") + rec_b.room("r"))
    assert got == list(range(120))
    for rec in (rec_a, rec_b):
        assert rec.room("r") == sorted(rec.room("r"))


async def test_a_failing_publish_is_retried_in_order(dsn: str) -> None:
    rec = Recorder()
    failures = [2, 2, 5]

    async def hook(room: str, event: str, data: Any) -> None:
        if failures and data == failures[0]:
            failures.pop(0)
            raise ConnectionError("server busy")

    rec.hook = hook
    await insert_committed(dsn, [("r", "e", i) for i in range(8)])
    async with OutboxConsumer(dsn, rec, **FAST) as consumer:  # type: ignore[arg-type]
        await until(lambda: len(rec.calls) == 8)
    assert rec.room("r") == list(range(8))
    assert consumer.published == 8


async def test_rows_the_server_would_refuse_are_dropped(dsn: str) -> None:
    rec = Recorder()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO smartsocket_outbox (room, event) VALUES ($1, 'e')",
                           "bad\u202eroom")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO smartsocket_outbox (room, event) VALUES ('r', '$x')")
    finally:
        await conn.close()
    await insert_committed(dsn, [("r", "e", "after")])
    async with OutboxConsumer(dsn, rec, **FAST) as consumer:  # type: ignore[arg-type]
        await until(lambda: len(rec.calls) == 1)
    assert rec.calls == [("r", "e", "after")]
    assert consumer.dropped == 1


async def test_a_row_nested_too_deeply_is_dropped_not_retried_forever(dsn: str) -> None:
    # PostgreSQL takes jsonb nested deeper than the decoder goes: the RecursionError escaped
    # the batch, the consumer reconnected and read the same row again, for good.
    rec = Recorder()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO smartsocket_outbox (room, event, data) "
                           "VALUES ('r', 'e', $1::jsonb)", "[" * 1200 + "]" * 1200)
    finally:
        await conn.close()
    await insert_committed(dsn, [("r", "e", "after")])
    async with OutboxConsumer(dsn, rec, **FAST) as consumer:  # type: ignore[arg-type]
        await until(lambda: len(rec.calls) == 1)
    assert rec.calls == [("r", "e", "after")]
    assert (consumer.dropped, consumer.reconnects) == (1, 0)
    assert await count_rows(dsn) == 0


def test_encode_row_checks_names_before_the_database() -> None:
    assert encode_row("r", "e", {"a": [1, None]}) == ("r", "e", '{"a":[1,null]}')
    for room, event in (("", "e"), ("r", ""), ("r", "$welcome"), ("a\nb", "e")):
        with pytest.raises(ValueError):
            encode_row(room, event, None)
    with pytest.raises(TypeError):
        encode_row("r", "e", object())
    assert "smartsocket_outbox" in schema_sql()


async def test_schema_applies_again_and_the_consumer_can_create_it(dsn: str) -> None:
    from smartsocket.outbox import apply_schema

    await insert_committed(dsn, [("r", "e", "kept")])
    await apply_schema(dsn)  # the table is left alone, its rows too
    assert await count_rows(dsn) == 1
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE smartsocket_outbox")
    finally:
        await conn.close()
    rec = Recorder()
    async with OutboxConsumer(dsn, rec, create_table=True, **FAST):  # type: ignore[arg-type]
        await until_table(dsn)
        await insert_committed(dsn, [("r", "e", "new")])
        await until(lambda: len(rec.calls) == 1)
    assert rec.calls == [("r", "e", "new")]


async def until_table(dsn: str) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    conn = await asyncpg.connect(dsn)
    try:
        while not await conn.fetchval("SELECT to_regclass('smartsocket_outbox') IS NOT NULL"):
            assert asyncio.get_running_loop().time() < deadline, "table not created"
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def test_stop_and_consumer_arguments(dsn: str) -> None:
    with pytest.raises(ValueError):
        OutboxConsumer(dsn, Recorder(), batch_size=0)
    consumer = OutboxConsumer(dsn, Recorder(), **FAST)  # type: ignore[arg-type]
    await consumer.stop()  # not started: nothing to do
    await consumer.start()
    with pytest.raises(RuntimeError):
        await consumer.start()
    await consumer.stop()
    assert not consumer.is_leader


async def test_a_database_that_stays_down_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One WARNING for the outage (with its cause), then DEBUG: a warning every few seconds
    for as long as the database is down was noise that hid everything else."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    caplog.set_level(logging.DEBUG, "smartsocket.outbox")

    async def publish(room: str, event: str, data: Any) -> None:
        raise AssertionError("no database: nothing to publish")

    consumer = OutboxConsumer(f"postgresql://nobody@127.0.0.1:{port}/none", publish,
                              reconnect_delay=(0.01, 0.05))
    async with consumer:
        await until(lambda: consumer.reconnects >= 4, what="reconnect attempts")
    failures = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    warnings = [r for r in failures if r.levelno == logging.WARNING]
    assert len(failures) >= 4 and len(warnings) == 1, [r.getMessage() for r in failures]
    assert "ConnectionRefusedError" in warnings[0].getMessage()
