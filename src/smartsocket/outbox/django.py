"""Insert outbox rows through Django's database connection, in the current transaction
(it never publishes).

    with transaction.atomic():
        order.save()
        insert_outbox_row(f"orders:{order.customer_id}", "order.created", {"id": order.pk})

Django is imported here only: ``smartsocket.outbox`` itself does not need it.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from smartsocket.outbox.rows import INSERT_SQL_PYFORMAT, encode_row

__all__ = ["insert_outbox_row"]


def insert_outbox_row(room: str, event: str, data: Any, *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Queue ``event`` with ``data`` for ``room`` on database ``using``; it is published once
    the transaction commits (outside ``atomic()``, Django autocommits it at once).

    Call it late in the transaction: the row holds its room's order lock until commit.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(INSERT_SQL_PYFORMAT, encode_row(room, event, data))
