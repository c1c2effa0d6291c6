"""The outbox consumer: the only module that imports asyncpg.

One connection does everything, and that is the point:
- it holds the session advisory lock that makes this consumer the leader (one per database),
- it LISTENs for the commit-time NOTIFY (latency) and re-reads on a timer (the safety net),
- it reads, publishes and deletes rows in one transaction per batch.
If that connection dies, PostgreSQL rolls back the batch's transaction and releases the lock in
the same instant, so a standby can never take over while the old leader can still delete rows.

Delivery: a row is published, then deleted in the transaction that read it. When the commit
succeeds the row is gone: it is published exactly once. When the connection is lost between a
publish and that commit, the delete did not happen (or PostgreSQL cannot tell us that it did),
and the next leader publishes the row again: at-least-once, never at-most-once. A lost message
is silent; a repeated one is visible, and the window is at most one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

from smartsocket.backoff import backoff_delay
from smartsocket.outbox.rows import (
    CHANNEL,
    INSERT_SQL_NUMERIC,
    LEADER_KEY,
    LOCK_CLASS_CONSUMER,
    SCHEMA_KEY,
    encode_row,
    row_problem,
    schema_sql,
)

__all__ = ["OutboxConsumer", "OutboxUnusable", "Publish", "apply_schema", "check_database",
           "insert_row"]

log = logging.getLogger("smartsocket.outbox")

#: ``publish(room, event, data)``: the server's room broadcast, or an emitter's publish.
Publish = Callable[[str, str, Any], Awaitable[None]]

# FOR UPDATE is a second fence behind the leader lock: a reader that somehow runs beside the
# leader waits for its batch and then skips the rows it deleted, instead of publishing them too.
_SELECT = (
    "SELECT id, room, event, data::text FROM smartsocket_outbox"
    " ORDER BY seq, id LIMIT $1 FOR UPDATE"
)
_DELETE = "DELETE FROM smartsocket_outbox WHERE id = ANY($1::bigint[])"

# What a lost or restarting database looks like through asyncpg.
_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class _PublishFailed(Exception):
    """The publish callable raised; the rows before the failing one are already deleted."""


class OutboxUnusable(Exception):
    """The outbox database refuses us for a reason retrying cannot fix."""


# What waiting cannot fix: a wrong password or role, a database or table that does not exist.
_PERMANENT = (
    asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError,
    asyncpg.InsufficientPrivilegeError,
)


async def check_database(dsn: str, timeout: float = 5.0) -> bool:
    """One attempt at what the consumer needs: connect and find the table. Raises
    ``OutboxUnusable`` for a mistake that retrying cannot fix (credentials, no such database,
    no table: apply ``schema.sql``); returns False, with a warning, when the database does not
    answer now (the consumer retries with backoff: the rows wait in the table)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except _PERMANENT as exc:
        raise OutboxUnusable(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # a malformed URL (asyncpg's ClientConfigurationError too)
        raise OutboxUnusable(f"invalid URL: {exc}") from None
    except _DB_ERRORS as exc:
        log.warning("outbox: database unavailable at start (%s: %s); retrying with backoff",
                    type(exc).__name__, exc)
        return False
    try:
        table = await conn.fetchval("SELECT to_regclass('smartsocket_outbox')", timeout=timeout)
    finally:
        await conn.close()
    if table is None:
        raise OutboxUnusable("no table smartsocket_outbox in that database: apply its "
                             "migration (smartsocket.outbox.schema_sql(), docs/outbox.md)")
    return True


async def apply_schema(conn_or_dsn: asyncpg.Connection | str) -> None:
    """Create the outbox table and its triggers if missing (idempotent; concurrent callers take
    turns on an advisory lock)."""
    conn = conn_or_dsn if isinstance(conn_or_dsn, asyncpg.Connection) else None
    if conn is None:
        conn = await asyncpg.connect(str(conn_or_dsn))
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)",
                               LOCK_CLASS_CONSUMER, SCHEMA_KEY)
            await conn.execute(schema_sql())
    finally:
        if conn is not conn_or_dsn:
            await conn.close()


async def insert_row(conn: asyncpg.Connection, room: str, event: str, data: Any) -> None:
    """Insert one row on an asyncpg connection, inside the caller's transaction."""
    await conn.execute(INSERT_SQL_NUMERIC, *encode_row(room, event, data))


class OutboxConsumer:
    """Publish committed outbox rows through ``publish``, one consumer per database at a time.

    Every instance connects; the one that takes the leader lock consumes, the others retry
    every ``standby_interval`` seconds. ``poll_interval`` bounds the delay when a NOTIFY is
    lost (it never is while the connection lives; it is the net under the net).
    """

    def __init__(
        self,
        dsn: str,
        publish: Publish,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        standby_interval: float = 1.0,
        reconnect_delay: tuple[float, float] = (0.1, 5.0),
        retry_delay: float = 0.5,
        query_timeout: float = 10.0,
        create_table: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._dsn = dsn
        self._publish = publish
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._standby_interval = standby_interval
        self._delay_min, self._delay_max = reconnect_delay
        self._retry_delay = retry_delay
        self._timeout = query_timeout
        self._create_table = create_table
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leader = False
        #: Rows handed to ``publish`` (a row published again after a lost commit counts twice).
        self.published = 0
        #: Rows deleted without publishing: names the server refuses (inserted without helpers).
        self.dropped = 0
        #: Connections lost or refused since start.
        self.reconnects = 0
        self._last_failure: str | None = None  # the database error logged last

    @property
    def is_leader(self) -> bool:
        """Whether this instance holds the leader lock right now."""
        return self._leader

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the outbox consumer is already running")
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="smartsocket-outbox")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand (so its rows are not published twice), then disconnect.
        After ``timeout`` seconds the task is cancelled: its batch rolls back and is
        published again by the next leader."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> OutboxConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0  # failures in a row (backoff); a connection that led resets it
        while not self._stopping.is_set():
            # Jitter so that a restarted database is not hit by every node at once.
            delay = backoff_delay(attempt + 1, base=self._delay_min, maximum=self._delay_max)
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                if self._create_table:
                    await apply_schema(conn)
                if await self._lead(conn):
                    attempt, self._last_failure = 0, None
                    delay = backoff_delay(1, base=self._delay_min, maximum=self._delay_max)
                    await self._consume(conn)
            except _DB_ERRORS as exc:
                self.reconnects += 1
                # Once per outage (and per new cause), then DEBUG: a database down for an hour
                # must not write a warning every few seconds.
                failure = f"{exc.__class__.__name__}: {exc}"
                level = logging.DEBUG if failure == self._last_failure else logging.WARNING
                self._last_failure = failure
                log.log(level, "outbox: database unavailable (%s); retrying with backoff "
                        "(next in %.2fs)", failure, delay)
            except Exception:  # a bug must not end publishing for good: log it and start over
                self.reconnects += 1
                log.exception("outbox: unexpected error; reconnecting in %.2fs", delay)
            finally:
                self._leader = False
                if conn is not None:
                    await self._close(conn)
            if not self._stopping.is_set():
                await self._sleep(delay)
                attempt += 1

    async def _lead(self, conn: asyncpg.Connection) -> bool:
        """Wait (connected) until this connection holds the leader lock; False when stopping."""
        while not self._stopping.is_set():
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                      LOCK_CLASS_CONSUMER, LEADER_KEY, timeout=self._timeout)
            if got:
                self._leader = True
                log.info("outbox: this consumer leads")
                return True
            await self._sleep(self._standby_interval)
        return False

    async def _consume(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(CHANNEL, self._notified)
        conn.add_termination_listener(self._terminated)
        while not self._stopping.is_set():
            # Cleared before reading: a commit that lands during the batch wakes the next round.
            self._wake.clear()
            try:
                await self._drain(conn)
            except _PublishFailed as exc:
                log.error("outbox: publish failed (%r); retrying in %.2fs",
                          exc.__cause__, self._retry_delay)
                await self._sleep(self._retry_delay)
                continue
            if conn.is_closed():
                raise ConnectionError("outbox connection closed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    async def _drain(self, conn: asyncpg.Connection) -> None:
        """Publish and delete batches until none is left."""
        while not self._stopping.is_set():
            failure: BaseException | None = None
            async with conn.transaction():
                rows = await conn.fetch(_SELECT, self._batch_size, timeout=self._timeout)
                if not rows:
                    return
                done: list[int] = []
                for row_id, room, event, text in rows:
                    problem = row_problem(room, event)
                    data: Any = None
                    if problem is None:
                        try:
                            data = msgspec.json.decode(text)
                        except msgspec.DecodeError as exc:  # jsonb's text should always decode
                            problem = f"data: {exc}"
                        except RecursionError:  # jsonb nests deeper than msgspec decodes
                            problem = "data: nested too deeply (~1000 levels)"
                    if problem is not None:
                        # Retrying cannot fix the row, and keeping it would hold up the rest.
                        log.error("outbox: dropping row %d: %s", row_id, problem)
                        self.dropped += 1
                    else:
                        try:
                            await self._publish(room, event, data)
                        except Exception as exc:  # the callable is the application's
                            failure = exc
                            break
                        self.published += 1
                    done.append(row_id)
                if done:
                    await conn.execute(_DELETE, done, timeout=self._timeout)
            if failure is not None:
                raise _PublishFailed() from failure
            if len(rows) < self._batch_size:
                return

    # -- helpers -----------------------------------------------------------------------------

    def _notified(self, *_: object) -> None:
        self._wake.set()

    def _terminated(self, *_: object) -> None:
        self._wake.set()  # the loop notices the closed connection and reconnects

    async def _sleep(self, seconds: float) -> None:
        """Sleep that ends early on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _close(self, conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), self._timeout)
        except (*_DB_ERRORS, TimeoutError):
            conn.terminate()
