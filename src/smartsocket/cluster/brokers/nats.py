"""``NatsAdapter``: nodes joined through NATS core pub/sub (nats-py).

``pip install smartsocket[nats]``. Channels are subjects (room names are made subject-safe by
the node). The client's own reconnect is off: like the Redis adapter, the link is owned by
``BrokerAdapter``, which reports the node degraded, reconnects with backoff and resubscribes.
``no_echo`` keeps the server from sending a node its own messages.

A dead server (a paused process, a black hole: TCP stays open, nothing answers) is found by the
client's pings: one every ``idle_timeout`` (``cluster_link_timeout``), and the link is stale at
the first one sent while the previous is unanswered, one to two periods after the server last
answered (as the Redis adapters' watchdog).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from smartsocket.cluster.brokers.base import LINK_TIMEOUT, BrokerAdapter, Outbound
from smartsocket.errors import MissingDependency


class NatsAdapter(BrokerAdapter):
    name = "nats"

    def __init__(self, url: str, idle_timeout: float = LINK_TIMEOUT) -> None:
        super().__init__(url, idle_timeout)
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise MissingDependency("cluster_url nats://... needs nats-py", "nats") from exc
        self._nc: Any = None
        self._subs: dict[str, Any] = {}
        self._gone: asyncio.Event | None = None
        # What nats-py's error callback last said: the cause behind its generic errors. Kept
        # apart from last_error, which _note_failure compares to log a repeated failure once.
        self._cause: str | None = None

    async def _connect(self) -> None:
        import nats

        gone = self._gone = asyncio.Event()

        async def lost() -> None:
            gone.set()

        async def error(exc: Exception) -> None:
            self._cause = f"{type(exc).__name__}: {exc}"

        self._cause = None
        try:
            self._nc = await nats.connect(
                self.url, allow_reconnect=False, max_reconnect_attempts=1,
                reconnect_time_wait=0, connect_timeout=2,
                ping_interval=self.idle_timeout, max_outstanding_pings=1, no_echo=True,
                disconnected_cb=lost, closed_cb=lost, error_cb=error,
            )
        except Exception as exc:  # "no servers available": say why (refused, timed out, ...)
            if self._cause is None:
                raise
            raise ConnectionError(self._cause) from exc
        self._subs = {}
        for channel in sorted(self._channels):
            self._subs[channel] = await self._nc.subscribe(channel, cb=self._on_message)
        await self._nc.flush(timeout=2)
        for channel in self._subs:
            self._subscribed(channel)

    async def _on_message(self, message: Any) -> None:
        self._receive(message.subject, message.data)

    async def _serve(self) -> None:
        assert self._gone is not None
        await self._gone.wait()
        why = self._nc.last_error if self._nc is not None else None  # e.g. stale: no PONG
        if why is not None:
            raise ConnectionError(f"NATS connection closed ({type(why).__name__}: {why})")
        raise ConnectionError(self._cause or "NATS connection closed")

    async def _send(self, batch: list[Outbound]) -> None:
        nc = self._nc
        if not nc.is_connected:
            raise ConnectionError("NATS connection lost")
        for channel, data in batch:
            assert type(data) is bytes  # no scripts on NATS (recovery needs Redis)
            await nc.publish(channel, data)

    async def send_now(self, batch: list[Outbound]) -> None:
        """As ``BrokerAdapter.send_now``, returning once the NATS server has the batch: the
        client only buffers a publish; a flush (PING, answered after what came before) says
        the server read it."""
        await super().send_now(batch)
        nc = self._nc
        if nc is None:
            raise ConnectionError("NATS connection lost")
        await nc.flush(timeout=2)

    async def _apply(self, subscribe: bool, channel: str) -> None:
        if subscribe:
            if channel not in self._subs:
                self._subs[channel] = await self._nc.subscribe(channel, cb=self._on_message)
            await self._nc.flush(timeout=2)
            self._subscribed(channel)
        else:
            sub = self._subs.pop(channel, None)
            if sub is not None:
                await sub.unsubscribe()

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        self._subs = {}
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
