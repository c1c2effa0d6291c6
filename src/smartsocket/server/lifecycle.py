"""Starting and stopping one server: ``Lifecycle`` owns what runs while it is started.

In order at start: the token keys (a JWKS URL), the cluster node (before the first socket:
its id), the session store (``recovery.pick_store``: in Redis when the node logs its rooms
there), the outbox consumer, the listener, then the heartbeat, the stats sampler and the
recovery sweeper. ``close`` undoes it gracefully: stop accepting, let handlers finish, close
every client with 1001, then leave the cluster. ``start(listen=False)`` starts all but the
listener (sockets carried by another transport: smartsocket.asgi, integrations).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.protocol.codes import CloseCode
from smartsocket.recovery import pick_store
from smartsocket.server.heartbeat import heartbeat
from smartsocket.server.listener import bind
from smartsocket.transport import CLOSE_TIMEOUT, ServedConnections

if TYPE_CHECKING:
    from smartsocket.server.live import LiveStats
    from smartsocket.server.parts import Parts
    from smartsocket.transport import Router

logger = logging.getLogger("smartsocket.server")


class Lifecycle:
    """The started state of a server's ``parts``: ``route`` answers its requests, ``live``
    is its stats stream, ``publish(room, event, data)`` what the outbox publishes through,
    ``close_sessions`` ends the sessions of other endpoints that are no socket yet (Socket.IO
    sessions that never connected one), once the sockets were told to close."""

    def __init__(
        self, parts: Parts, live: LiveStats, route: Router,
        publish: Callable[[str, str, Any], Any], close_sessions: Callable[[], None],
    ) -> None:
        self._parts = parts
        self._live = live
        self._route = route
        self._publish = publish
        self._close_sessions = close_sessions
        self.server: asyncio.Server | None = None  # the listener
        self.port: int | None = None  # the bound port while listening
        self._served = ServedConnections()  # HTTP connections served by handlers
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sampler: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed: asyncio.Event | None = None
        # Started (heartbeat, sampler), with or without a listener.
        self.started = False

    async def start(self, listen: bool) -> bool:
        """Start (once) and listen if ``listen`` and not yet; True: it bound the port now."""
        if self.started and (self.server is not None or not listen):
            return False
        parts = self._parts
        if not self.started:
            self._closed = asyncio.Event()
            parts.connections.closing = False
            await parts.access.tokens.start()  # a JWKS URL: keys before the first token
            await parts.cluster.start(parts.config)  # before the first socket (its id)
            # The session store, once: in Redis when the node logs its rooms there.
            parts.use_store(pick_store(parts.config, parts.cluster, parts.memory_store))
            if parts.config.outbox_url:
                cluster = parts.cluster
                try:
                    await parts.outbox.start(
                        parts.config.outbox_url, self._publish, lambda: cluster.degraded
                    )
                except BaseException:
                    await self._close_cluster()
                    raise
        if listen:
            try:
                # Connections that served plain requests (the HTTP API...): closed by close().
                self._served = ServedConnections(parts.config.max_connections_per_ip)
                # The clock is read at each use: tests replace the server's ``_clock``.
                self.server = await bind(
                    parts.config, self._route, lambda: parts.socket_context.clock(),
                    self._served,
                )
                self.port = self.server.sockets[0].getsockname()[1]
            except BaseException:
                if not self.started:  # a port in use, a bad certificate: undo the cluster
                    await self._close_cluster()
                raise
        if not self.started:
            self.started = True
            loop = asyncio.get_running_loop()
            self._heartbeat_task = loop.create_task(
                heartbeat(parts.sockets, parts.config, parts.liveness, parts.room_limits,
                          parts.registry)
            )
            if parts.stats is not None:
                self._sampler = loop.call_later(1.0, self._sample)
            if parts.recovery is not None:
                self._sweep()
        return listen

    async def wait_closed(self) -> None:
        """Until ``close`` has run (returns at once if never started)."""
        if self._closed is not None:
            await self._closed.wait()

    async def close(self, timeout: float | None) -> None:
        parts = self._parts
        connections = parts.connections
        if not self.started or connections.closing:
            await self.wait_closed()
            return
        connections.closing = True
        await parts.outbox.stop()  # its batch in hand goes out to the sockets still here
        deadline = time.monotonic() + (
            parts.config.shutdown_timeout if timeout is None else timeout
        )
        server = self.server
        if server is not None:
            server.close()
            self._served.close(busy=False)  # idle HTTP keep-alives; answers close theirs
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        parts.access.tokens.stop()
        tasks = parts.tasks
        if tasks:
            await asyncio.wait(set(tasks), timeout=max(0.0, deadline - time.monotonic()))
        self._live.close_all()
        self._served.close()  # HTTP requests still held (long-polls): 503
        for socket in list(connections.open):
            socket.fail(CloseCode.GOING_AWAY, "server shutting down")
        self._close_sessions()
        wait_until = min(deadline, time.monotonic() + CLOSE_TIMEOUT + 0.5)
        while connections.open and time.monotonic() < wait_until:
            await asyncio.sleep(0.01)
        for socket in list(connections.open):
            conn = socket.connection
            if conn is not None:
                conn.abort()
        await self._close_cluster()  # after the sockets: their presence leaves go out first
        for task in list(tasks):
            task.cancel()
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.server = None
        self.port = None
        self.started = False
        assert self._closed is not None
        self._closed.set()
        logger.info("closed")

    async def _close_cluster(self) -> None:
        parts = self._parts
        await parts.outbox.stop()
        parts.use_store(parts.memory_store)
        await parts.cluster.close()

    def _sample(self) -> None:
        """Once a second: counters for the rates in the stats, and the live stats stream."""
        stats = self._parts.stats
        assert stats is not None
        stats.sample()
        self._sampler = asyncio.get_running_loop().call_later(1.0, self._sample)
        if self._live.readers:
            self._live.push()

    def _sweep(self) -> None:
        """Every few seconds: expire held sessions and history nobody can resume from."""
        parts = self._parts
        assert parts.recovery is not None
        interval = max(0.5, min(5.0, parts.config.recovery_window / 4))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)
        for sid in parts.recovery.sweep(parts.registry):
            parts.cluster.ended_here(sid)
