"""Insert outbox rows with SQLAlchemy, in the caller's transaction (it never publishes).

    with Session(engine) as session, session.begin():
        session.add(order)
        insert_outbox_row(session, f"orders:{order.customer_id}", "order.created", {"id": 7})

SQLAlchemy is imported here only: ``smartsocket.outbox`` itself does not need it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from smartsocket.outbox.rows import encode_row

__all__ = ["insert_outbox_row"]

_INSERT = text(
    "INSERT INTO smartsocket_outbox (room, event, data)"
    " VALUES (:room, :event, CAST(:data AS jsonb))"
)


def insert_outbox_row(bind: Session | Connection, room: str, event: str, data: Any) -> None:
    """Queue ``event`` with ``data`` for ``room``; it is published once the transaction commits.

    Call it late in the transaction: the row holds its room's order lock until commit.
    """
    room, event, payload = encode_row(room, event, data)
    bind.execute(_INSERT, {"room": room, "event": event, "data": payload})
