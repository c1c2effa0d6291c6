"""The insert helpers for SQLAlchemy and Django write rows in the application's transaction
(committed: published; rolled back: never), on the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from outboxdb import Recorder, database, until
from smartsocket.outbox import OutboxConsumer

pytest.importorskip("psycopg")


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as url:
        yield url


async def consume(dsn: str, count: int) -> list[tuple[str, str, Any]]:
    rec = Recorder()
    async with OutboxConsumer(dsn, rec, poll_interval=5.0):
        await until(lambda: len(rec.calls) >= count)
    return rec.calls


async def test_sqlalchemy_helper_session_and_connection(dsn: str) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    from smartsocket.outbox.sqlalchemy import insert_outbox_row

    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))

    def write() -> None:
        with Session(engine) as session, session.begin():
            insert_outbox_row(session, "orders", "order.created", {"id": 1})
        with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
            insert_outbox_row(session, "orders", "order.created", {"id": "rolled back"})
            raise RuntimeError
        with engine.begin() as conn:
            insert_outbox_row(conn, "orders", "order.paid", {"id": 1, "total": 9.5})
        with engine.connect() as conn, pytest.raises(ValueError):
            insert_outbox_row(conn, "orders", "$welcome", None)

    try:
        await asyncio.to_thread(write)
    finally:
        engine.dispose()
    assert await consume(dsn, 2) == [
        ("orders", "order.created", {"id": 1}),
        ("orders", "order.paid", {"id": 1, "total": 9.5}),
    ]


async def test_django_helper(dsn: str) -> None:
    pytest.importorskip("django")
    import django
    from django.conf import settings

    name = dsn.rsplit("/", 1)[1]
    if not settings.configured:
        settings.configure(DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": "postgres",
            "HOST": "127.0.0.1", "PORT": "5432"}})
        django.setup()
    from django.db import connections, transaction

    from smartsocket.outbox.django import insert_outbox_row

    if settings.DATABASES["default"]["NAME"] != name:
        pytest.skip("Django is already configured for another database in this process")

    def write() -> None:
        try:
            with transaction.atomic():
                insert_outbox_row("news", "story", {"title": "kept"})
            with pytest.raises(RuntimeError), transaction.atomic():
                insert_outbox_row("news", "story", {"title": "rolled back"})
                raise RuntimeError
            insert_outbox_row("news", "story", "autocommit")
            with transaction.atomic():  # a savepoint rolled back inside a committed transaction
                insert_outbox_row("news", "story", "outer")
                with pytest.raises(RuntimeError), transaction.atomic():
                    insert_outbox_row("news", "story", "savepoint rolled back")
                    raise RuntimeError
        finally:
            connections.close_all()

    await asyncio.to_thread(write)
    assert await consume(dsn, 3) == [
        ("news", "story", {"title": "kept"}),
        ("news", "story", "autocommit"),
        ("news", "story", "outer"),
    ]
