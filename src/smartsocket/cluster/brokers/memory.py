"""``MemoryBroker`` and ``MemoryAdapter``: nodes in one process joined without a network
(``memory://NAME`` URLs; tests and embedded use)."""

from __future__ import annotations

import asyncio
import weakref
from typing import ClassVar

from smartsocket.cluster.brokers.base import Adapter, Backoff, Receive, StateCallback


class MemoryBroker:
    """An in-process broker: nodes in one process (tests, embedded use) share one by name.

    ``down()`` / ``up()`` simulate an outage: every adapter loses its link, then reconnects.
    """

    _named: ClassVar[weakref.WeakValueDictionary[str, MemoryBroker]] = (
        weakref.WeakValueDictionary()
    )

    def __init__(self) -> None:
        self._subscribers: dict[str, set[MemoryAdapter]] = {}
        self._adapters: set[MemoryAdapter] = set()
        self.available = True

    @classmethod
    def named(cls, name: str) -> MemoryBroker:
        broker = cls._named.get(name)
        if broker is None:
            broker = cls._named[name] = cls()
        return broker

    def down(self) -> None:
        self.available = False
        for adapter in list(self._adapters):
            adapter.link_lost()

    def up(self) -> None:
        self.available = True
        for adapter in list(self._adapters):
            adapter.link_back()

    def publish(self, channel: str, data: bytes) -> None:
        for adapter in list(self._subscribers.get(channel, ())):
            adapter.deliver_soon(channel, data)

    def attach(self, adapter: MemoryAdapter) -> None:
        """Know ``adapter`` (``down``/``up`` reach it) until ``forget``."""
        self._adapters.add(adapter)

    def forget(self, adapter: MemoryAdapter) -> None:
        self.detach(adapter)
        self._adapters.discard(adapter)

    def subscribe(self, adapter: MemoryAdapter, channel: str) -> None:
        self._subscribers.setdefault(channel, set()).add(adapter)

    def unsubscribe(self, adapter: MemoryAdapter, channel: str) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(adapter)
            if not subscribers:
                del self._subscribers[channel]

    def detach(self, adapter: MemoryAdapter) -> None:
        """Drop every subscription of ``adapter``."""
        for channel in list(self._subscribers):
            self.unsubscribe(adapter, channel)


class MemoryAdapter(Adapter):
    """Nodes in one process joined through a ``MemoryBroker`` (``memory://NAME`` URLs)."""

    name = "memory"

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        super().__init__()
        self.broker = broker if broker is not None else MemoryBroker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._backoff = Backoff()

    async def start(self, receive: Receive, state: StateCallback) -> None:
        self._receive, self._state = receive, state
        self._loop = asyncio.get_running_loop()
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self._closed:
            return
        if not self.broker.available:
            assert self._loop is not None
            self._retry = self._loop.call_later(self._backoff.next(), self._connect)
            return
        self._backoff.reset()
        self.broker.attach(self)
        for channel in self._channels:
            self.broker.subscribe(self, channel)
        self._set_state(True)

    def link_lost(self) -> None:
        """The broker went down (``MemoryBroker.down``)."""
        self.broker.detach(self)  # stays known to the broker: up() reconnects it
        self._set_state(False)

    def link_back(self) -> None:
        """The broker is up again (``MemoryBroker.up``)."""
        if self._retry is None and not self.connected:
            self._connect()

    def deliver_soon(self, channel: str, data: bytes) -> None:
        """Deliver on the next loop iteration, as a network broker would (never re-entrant)."""
        if self._loop is not None:
            self._loop.call_soon(self._deliver, channel, data)

    def _deliver(self, channel: str, data: bytes) -> None:
        if self.connected and channel in self._channels:
            self._receive(channel, data)

    def publish(self, channel: str, data: bytes) -> bool:
        if not self.connected:
            return False
        self.broker.publish(channel, data)
        return True

    def subscribe(self, channel: str) -> asyncio.Future[None]:
        self._channels.add(channel)
        if self.connected:
            self.broker.subscribe(self, channel)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self.broker.unsubscribe(self, channel)

    async def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self.broker.forget(self)
        self.connected = False
