"""Databases and a recording publish callable for the outbox tests (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")

SHARED = "postgresql://postgres@127.0.0.1:5432"


@asynccontextmanager
async def database(server: str = SHARED) -> AsyncIterator[str]:
    """A fresh database with the outbox schema on ``server``; dropped afterwards (only ours)."""
    from smartsocket.outbox import apply_schema

    name = f"smartsocket_outbox_test_{secrets.token_hex(6)}"
    await admin_execute(server, f'CREATE DATABASE "{name}"')
    try:
        dsn = f"{server}/{name}"
        await apply_schema(dsn)
        yield dsn
    finally:
        # A new connection: a test may have restarted the server under the first one.
        await admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def admin_execute(server: str, sql: str) -> None:
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


class Recorder:
    """A publish callable that remembers what it was given, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.hook: Callable[[str, str, Any], Any] | None = None

    async def __call__(self, room: str, event: str, data: Any) -> None:
        if self.hook is not None:
            await self.hook(room, event, data)
        self.calls.append((room, event, data))

    def room(self, room: str) -> list[Any]:
        return [data for r, _, data in self.calls if r == room]


async def until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Wait for ``condition`` with a bounded timeout (a poll, not a sleep-as-synchronisation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM smartsocket_outbox"))
    finally:
        await conn.close()
