"""What an outbox row is, shared by the consumer and every insert helper (no driver imports).

The helpers check names the way the server does (``smartsocket.protocol.names``) so that a bad
row fails in the application's transaction, where the mistake is, rather than in the consumer.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import msgspec

from smartsocket.protocol.names import check_event, name_problem

TABLE = "smartsocket_outbox"
CHANNEL = "smartsocket_outbox"  # the NOTIFY channel of schema.sql's trigger

# Two-key advisory locks of class 0x5350 ('SP'); schema.sql uses (CLASS, hashtext(room)) for
# rooms, so ours live in a class of their own.
LOCK_CLASS_CONSUMER = 21329
LEADER_KEY = 0
SCHEMA_KEY = 1

#: For DB-API drivers with ``%s`` placeholders (psycopg, Django): room, event, JSON text.
INSERT_SQL_PYFORMAT = (
    "INSERT INTO smartsocket_outbox (room, event, data) VALUES (%s, %s, CAST(%s AS jsonb))"
)
#: For asyncpg and other ``$n`` drivers.
INSERT_SQL_NUMERIC = (
    "INSERT INTO smartsocket_outbox (room, event, data) VALUES ($1, $2, CAST($3 AS jsonb))"
)

_json = msgspec.json.Encoder()


def schema_sql() -> str:
    """The migration (``schema.sql``): give it to your migration tool, or run ``apply_schema``."""
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def encode_row(room: str, event: str, data: Any) -> tuple[str, str, str]:
    """Check a row's names and encode its data to JSON text; raise ValueError or TypeError."""
    problem = name_problem("room", room)
    if problem is not None:
        raise ValueError(f"{problem}: {room!r}")
    check_event(event)
    return room, event, _json.encode(data).decode()


def row_problem(room: str, event: str) -> str | None:
    """Why the consumer must not publish a row (it was inserted without the helpers), or None."""
    problem = name_problem("room", room) or name_problem("event", event)
    if problem is None and event.startswith("$"):
        problem = "event names starting with '$' are reserved"
    return problem
