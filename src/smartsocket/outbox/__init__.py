"""Transactional outbox on PostgreSQL: publish to rooms from the database transaction that
caused the message, once it commits, never if it rolls back.

- ``schema.sql`` (``schema_sql()``, ``apply_schema()``): the table, a trigger that keeps each
  room's rows in commit order, and a NOTIFY on commit.
- Insert helpers, one per way applications talk to PostgreSQL; they insert only:
  ``smartsocket.outbox.sqlalchemy.insert_outbox_row`` (Session or Connection),
  ``smartsocket.outbox.django.insert_outbox_row`` (``django.db.connection``),
  ``insert_row`` (asyncpg) and ``INSERT_SQL_PYFORMAT`` / ``INSERT_SQL_NUMERIC`` for the rest.
- ``OutboxConsumer``: the one process in a cluster that publishes the rows (asyncpg,
  ``smartsocket[postgres]``). ``docs/outbox.md`` states exactly what it guarantees.

The asyncpg parts load on first use, so the SQLAlchemy and Django helpers work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smartsocket.outbox.rows import (
    INSERT_SQL_NUMERIC,
    INSERT_SQL_PYFORMAT,
    encode_row,
    schema_sql,
)

if TYPE_CHECKING:
    from smartsocket.outbox.consumer import (
        OutboxConsumer,
        OutboxUnusable,
        Publish,
        apply_schema,
        check_database,
        insert_row,
    )

__all__ = [
    "INSERT_SQL_NUMERIC",
    "INSERT_SQL_PYFORMAT",
    "OutboxConsumer",
    "OutboxUnusable",
    "Publish",
    "apply_schema",
    "check_database",
    "encode_row",
    "insert_row",
    "schema_sql",
]

_LAZY = {"OutboxConsumer", "OutboxUnusable", "Publish", "apply_schema", "check_database",
         "insert_row"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from smartsocket.outbox import consumer

        return getattr(consumer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
