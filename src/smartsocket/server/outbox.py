"""The transactional outbox of a server (``outbox_url``): the consumer of ``outbox/`` started
and stopped with the server, publishing each row through the server's room broadcast.

At start, one attempt checks what retrying cannot fix (asyncpg installed, credentials, the
database and its table): those stop the start with one line. A database that does not answer
is not one of them: the consumer retries with backoff while the server serves, and publishes
the rows committed meanwhile once it connects (they wait in the table). Every server of a
cluster runs a consumer; the advisory lock makes one of them the leader (docs/outbox.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from smartsocket.outbox.consumer import OutboxConsumer

logger = logging.getLogger("smartsocket.outbox")

Broadcast = Callable[[str, str, Any], object]


class BrokerDown(ConnectionError):
    """The cluster broker is down: a row published now would reach this node only."""


class Outbox:
    """The server's outbox consumer (none without ``outbox_url``)."""

    def __init__(self) -> None:
        self.consumer: OutboxConsumer | None = None

    async def start(self, url: str, broadcast: Broadcast, degraded: Callable[[], bool]) -> None:
        """Start consuming ``url``; ``broadcast(room, event, data)`` publishes a row, and while
        ``degraded()`` (the cluster broker is down) rows wait (the consumer retries them)."""
        try:
            from smartsocket.outbox.consumer import OutboxConsumer, OutboxUnusable, check_database
        except ImportError as exc:
            raise MissingDependency("outbox_url needs asyncpg", "postgres") from exc
        try:
            await check_database(url)
        except OutboxUnusable as exc:
            raise ConfigError("outbox_url", str(exc)) from None

        async def publish(room: str, event: str, data: Any) -> None:
            if degraded():
                raise BrokerDown("the cluster broker is down")
            broadcast(room, event, data)

        self.consumer = OutboxConsumer(url, publish)
        await self.consumer.start()

    async def stop(self) -> None:
        """Finish the batch in hand (published once, not again by the next leader)."""
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await consumer.stop()

    def stats(self) -> dict[str, Any] | None:
        consumer = self.consumer
        if consumer is None:
            return None
        return {"leader": consumer.is_leader, "published": consumer.published,
                "dropped": consumer.dropped, "reconnects": consumer.reconnects}
