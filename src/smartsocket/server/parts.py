"""The parts of one server, composed with explicit constructor arguments.

``Parts`` builds them once (none holds the server) and keeps the ones that derive from the
configuration in step with it: ``configure`` is what the server's ``config`` setter runs
(the stats, the fan-out, admission, token auth and room policies, the memory session store,
and every part that reads an option), ``use_store`` what switches recovery's store at start
and close. The server keeps its public API and delegates to these parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.cluster.node import ClusterNode
from smartsocket.handlers import Handler
from smartsocket.metrics import Stats
from smartsocket.recovery import MemoryStore, Resumer, SessionStore
from smartsocket.server.access import Access
from smartsocket.server.admission import Admission
from smartsocket.server.broadcast import Broadcaster
from smartsocket.server.connections import Connections
from smartsocket.server.context import SocketContext
from smartsocket.server.dispatch import EventRouter, Tasks
from smartsocket.server.fanout import Fanout
from smartsocket.server.heartbeat import Liveness
from smartsocket.server.local import LocalSide
from smartsocket.server.outbox import Outbox
from smartsocket.server.rooms import RoomContext, RoomLimits, RoomRegistry
from smartsocket.server.users import Users

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.server.rooms import Room
    from smartsocket.server.socket import Socket


class Parts:
    """Every part of one server; ``room`` is the server's room handle by name (what
    ``socket.publish`` broadcasts through). ``configure`` completes it (the server's
    ``config`` setter runs it at construction)."""

    def __init__(self, config: Config, room: Callable[[str], Room]) -> None:
        self.config = config
        self.sockets: dict[str, Socket] = {}
        self.registry = RoomRegistry()
        self.fanout = Fanout(config, None)  # rebuilt with the config
        self.users = Users()  # admitted sockets by user (server/users.py)
        # What the cluster may do with this node's sockets (cluster/ports.py).
        self.local = LocalSide(self.sockets, self.registry, self.fanout, users=self.users)
        self.cluster = ClusterNode(self.local)  # cluster/: cross-node operations, presence
        self.broadcaster = Broadcaster(self.sockets, self.cluster, self.fanout)
        self.registry.hook = self.cluster
        # Token auth and room policies (server/access.py), rebuilt with the config. The
        # clocks are read at each use (tests replace them).
        self.access = Access(
            config, monotonic_ns=lambda: self.socket_context.clock(),
            has_room=self.registry.__contains__, enable_presence=self.cluster.enable_presence,
        )
        # Per-room broadcast rates.
        self.room_limits = RoomLimits(config, lambda: self.socket_context.clock())
        self.room_context = RoomContext(
            self.registry, self.room_limits, self.broadcaster.send, self.cluster,
            self.access.gate,
        )
        self.tasks = Tasks()
        self.router = EventRouter(config, self.tasks)  # inbound events -> handlers
        self.connections = Connections(
            self.sockets, self.cluster, self.tasks.spawn, self.router.emit_local, self.users,
        )
        self.resumer = Resumer(
            config, self.sockets, self.cluster, self.tasks.spawn, self.connections.welcome,
        )
        self.connections.resumer = self.resumer
        self.stats: Stats | None = None
        # With metrics off the stats keep their shape: counters that never move (zeros).
        self.still_stats = Stats()
        # Socket.IO sessions without a socket, by address (the endpoint sets it): they count
        # against max_connections_per_ip beside the sockets.
        self.pending_at: Callable[[Any], int] = lambda ip: 0
        self.admission = self._new_admission(None)
        self.liveness = Liveness()  # the $ping/$pong in flight
        # What every Socket uses of this server (server/context.py). Its clock (integer ns)
        # is the rate limits' and the error-rate rule's; tests replace it.
        self.socket_context = SocketContext(
            config, self.registry, self.cluster, self.connections, self.resumer,
            self.liveness, self.router.dispatch, time.monotonic_ns, room,
            self.access.tokens, self.access.gate,
        )
        # Recovery: the session store in use (picked at start-up), and the memory one that
        # follows the configuration (the store on one node).
        self.recovery: SessionStore | None = None
        self.memory_store: MemoryStore | None = None
        self.outbox = Outbox()  # outbox_url: the PostgreSQL outbox consumer (server/outbox.py)

    def configure(self, config: Config) -> None:
        """Rebuild what derives from ``config`` and hand it to the parts that read it."""
        self.config = config
        access = self.access
        access.configure(config)
        self.room_context.gate = access.gate
        self.cluster.history = access.gate.history  # what the room logs keep in Redis, per room
        self.stats = Stats() if config.enable_metrics else None
        self.admission = self._new_admission(self.admission.hook)
        self.still_stats = self.stats or Stats()
        self.memory_store = (
            MemoryStore(config, history=access.gate.history) if config.recovery_window else None
        )
        self.router.config = config
        self.room_limits.configure(config, self.stats)
        self.fanout = Fanout(config, self.stats)
        local = self.local
        local.fanout, local.stats = self.fanout, self.stats
        self.broadcaster.fanout = self.fanout
        self.resumer.config = config
        self.socket_context.configure(config, self.stats, None, access.tokens, access.gate)
        self.use_store(self.memory_store)
        self.liveness.stats = self.stats

    def use_store(self, store: SessionStore | None) -> None:
        """Recovery goes through ``store`` (None: off) from now on."""
        self.recovery = store
        self.local.recovery = self.broadcaster.recovery = self.resumer.store = store
        self.socket_context.recovery = store
        self.connections.configure(self.config, self.admission, self.stats, store)

    def _new_admission(self, hook: Handler | None) -> Admission:
        return Admission(
            self.config, spawn=self.tasks.spawn, admit=self.resumer.admit,
            tokens=self.access.tokens, stats=self.stats, hook=hook,
            pending=lambda ip: self.pending_at(ip),
        )
