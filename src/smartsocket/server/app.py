"""``SmartSocket``: configuration, handlers, routing of requests, fan-out and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from smartsocket._version import __version__
from smartsocket.cluster.messages import PresenceMember, SocketRecord
from smartsocket.cluster.node import ClusterNode
from smartsocket.config import Config
from smartsocket.handlers import Handler
from smartsocket.history import HistoryLimits
from smartsocket.metrics import Stats
from smartsocket.policies import Join, Publish, RoomPolicy
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.names import check_event
from smartsocket.recovery import MemoryStore, Resumer, SessionStore, pick_store
from smartsocket.security import RateLimit
from smartsocket.server import http, prometheus
from smartsocket.server.admission import Admission
from smartsocket.server.api import HttpApi
from smartsocket.server.api_ops import Context
from smartsocket.server.broadcast import Broadcaster
from smartsocket.server.connections import Connections
from smartsocket.server.context import SocketContext
from smartsocket.server.dispatch import EventRouter, Tasks
from smartsocket.server.fanout import Exclude, Fanout
from smartsocket.server.heartbeat import Liveness, heartbeat
from smartsocket.server.listener import bind, run
from smartsocket.server.live import LiveStats
from smartsocket.server.local import LocalSide
from smartsocket.server.outbox import Outbox
from smartsocket.server.room_policy import RoomGate
from smartsocket.server.rooms import Room, RoomContext, RoomLimits, RoomRegistry, RoomsView
from smartsocket.server.socket import Socket
from smartsocket.server.socketio import Namespace, SocketIOEndpoint
from smartsocket.server.socketio.metrics import SocketIOCollector
from smartsocket.server.tokens import TokenSessions, verifier_for
from smartsocket.server.users import Users, check_user
from smartsocket.transport import (
    CLOSE_TIMEOUT,
    Accept,
    HandshakeRequest,
    HttpResponse,
    Serve,
    ServedConnections,
)

logger = logging.getLogger("smartsocket.server")

class SmartSocket:
    """A real-time WebSocket server: named events, acks, rooms and broadcasts.

    ``SmartSocket(8080, enable_compression=False)``; options are ``Config`` fields.
    ``SmartSocket.from_env()`` also reads environment variables.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str | None = None,
        config: Config | None = None,
        **options: Any,
    ) -> None:
        if port is not None:
            options["port"] = port
        if host is not None:
            options["host"] = host
        self._config = (config or Config()).replace(**options)
        self._sockets: dict[str, Socket] = {}
        self._registry = RoomRegistry()
        self._fan = Fanout(self._config, None)  # rebuilt with the config (setter below)
        self._users = Users()  # admitted sockets by user (server/users.py)
        # What the cluster may do with this node's sockets (cluster/ports.py).
        self._local = LocalSide(self._sockets, self._registry, self._fan, users=self._users)
        self._cluster = ClusterNode(self._local)  # cluster/: cross-node operations, presence
        self._broadcaster = Broadcaster(self._sockets, self._cluster, self._fan)
        self._broadcast = self._broadcaster.send  # bound once (Room.broadcast calls it)
        self._registry.hook = self._cluster
        # Token auth and room policies (server/tokens.py, server/room_policy.py), rebuilt with
        # the config. Token expiry reads this clock (Unix seconds; tests inject one).
        self._token_clock: Callable[[], float] = time.time
        self._policy_list: dict[str, RoomPolicy] = {}
        self._token_sessions = TokenSessions(None)
        self._room_gate = self._new_gate(self._config)
        # Per-room broadcast rates; they read the clock at each use (tests replace it).
        self._room_limits = RoomLimits(self._config, lambda: self._clock())
        self._room_context = RoomContext(
            self._registry, self._room_limits, self._broadcast, self._cluster, self._room_gate
        )
        self._tasks = Tasks()
        self._router = EventRouter(self._config, self._tasks)  # inbound events -> handlers
        self._connections = Connections(
            self._sockets, self._cluster, self._tasks.spawn, self._router.emit_local,
            self._users,
        )
        self._resumer: Resumer = Resumer(
            self._config, self._sockets, self._cluster, self._tasks.spawn,
            self._connections.welcome,
        )
        self._connections.resumer = self._resumer
        self._stats: Stats | None = None
        self._admission = self._new_admission(None)
        self._liveness = Liveness()  # the $ping/$pong in flight
        # What every Socket uses of this server (server/context.py). Its clock (integer ns)
        # is the rate limits' and the error-rate rule's; tests replace it (``_clock``).
        self._socket_context = SocketContext(
            self._config, self._registry, self._cluster, self._connections, self._resumer,
            self._liveness, self._router.dispatch, time.monotonic_ns, self.room,
            self._token_sessions, self._room_gate,
        )
        self._server: asyncio.Server | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sampler: asyncio.TimerHandle | None = None
        # Recovery: the session store in use (picked at start-up), and the memory one that
        # follows the configuration (the store on one node).
        self._recovery: SessionStore | None = None
        self._memory_store: MemoryStore | None = None
        self._outbox = Outbox()  # outbox_url: the PostgreSQL outbox consumer (server/outbox.py)
        self._sweeper: asyncio.TimerHandle | None = None
        self._prometheus: CollectorRegistry | None = None
        self._live = LiveStats(self.stats)  # /smartsocket/live connections
        self._served = ServedConnections()  # HTTP connections served by handlers
        self._closed: asyncio.Event | None = None
        self._port: int | None = None
        # Started (heartbeat, sampler), with or without a listener: ``start(listen=False)``
        # serves sockets that another transport carries (smartsocket.asgi, integrations).
        self._started = False
        # What a plain GET / answers: None is a short page naming this server and its
        # endpoints; the demo app puts its chat page here (its events are not the app's).
        self.home_page: bytes | None = None
        # Socket.IO clients (server/socketio/): admitted through open_socket like the rest.
        self._socketio = SocketIOEndpoint(self._config, self.open_socket, self._cluster)
        # POST /smartsocket/api/<operation> (server/api.py; on with ``api_secret``)
        self.api: HttpApi = HttpApi(
            Context(self, lambda: self._recovery)
        )
        self.config = self._config

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """Replace the configuration (before ``start()``): what derives from it is rebuilt."""
        if self._started:
            raise RuntimeError("cannot reconfigure a running server")
        self._config = config
        self._token_sessions = TokenSessions(verifier_for(config, lambda: self._token_clock()))
        self._room_gate = self._new_gate(config)
        self._room_context.gate = self._room_gate
        self._stats = Stats() if config.enable_metrics else None
        self._admission = self._new_admission(self._admission.hook)
        # With metrics off the stats keep their shape: counters that never move (zeros).
        self._still_stats = self._stats or Stats()
        self._memory_store = (
            MemoryStore(config, history=self._room_gate.history)
            if config.recovery_window else None
        )
        self._router.config = config
        self._room_limits.configure(config, self._stats)
        self._fan = Fanout(config, self._stats)
        local = self._local
        local.fanout, local.stats = self._fan, self._stats
        self._broadcaster.fanout = self._fan
        self._resumer.config = config
        self._socket_context.configure(
            config, self._stats, None, self._token_sessions, self._room_gate
        )
        self._use_store(self._memory_store)
        self._socketio.configure(config)
        self._liveness.stats = self._stats
        self._prometheus = None  # its collector reads this configuration's parts

    def _new_admission(self, hook: Handler | None) -> Admission:
        return Admission(
            self._config, spawn=self._tasks.spawn, admit=self._resumer.admit,
            tokens=self._token_sessions, stats=self._stats, hook=hook,
        )

    @property
    def _clock(self) -> Callable[[], int]:
        """The clock (integer ns) of rate limits and the error-rate rule; tests replace it."""
        return self._socket_context.clock

    @_clock.setter
    def _clock(self, clock: Callable[[], int]) -> None:
        self._socket_context.clock = clock

    def _new_gate(self, config: Config) -> RoomGate:
        gate = RoomGate(
            deny_by_default=config.rooms_deny_by_default,
            verifier=self._token_sessions.verifier, clock=lambda: self._token_clock(),
            monotonic_ns=lambda: self._clock(), has_room=self._registry.__contains__,
            history=HistoryLimits.of_config(config),
        )
        self._cluster.history = gate.history  # what the room logs keep in Redis, per room
        for pattern, policy in self._policy_list.items():
            gate.set(pattern, policy)
        return gate

    @classmethod
    def from_file(
        cls, path: str, environ: Mapping[str, str] | None = None, **options: Any
    ) -> SmartSocket:
        """A server configured by the TOML file ``path`` (options and ``[rooms."..."]``
        policies, docs/auth.md), overlaid by env vars, overlaid by ``options``."""
        import os

        from smartsocket.config_file import layered, load

        file = load(path)
        server = cls(config=Config(**layered(file, os.environ if environ is None else environ,
                                             options)))
        server.add_policies(file.rooms)
        return server

    def _use_store(self, store: SessionStore | None) -> None:
        """Recovery goes through ``store`` (None: off) from now on."""
        self._recovery = store
        self._local.recovery = self._broadcaster.recovery = self._resumer.store = store
        self._socket_context.recovery = store
        self._connections.configure(self._config, self._admission, self._stats, store)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> SmartSocket:
        """A server configured by env vars (``PORT``, ``SMARTSOCKET_*``), then ``options``."""
        return cls(config=Config.from_env(environ, **options))

    # registration

    def on_connection(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``handler(socket)`` for each new connection (sync or async; a decorator too)."""
        self._connections.handlers.append(Handler(handler, max_args=1, called_with="(socket)"))
        return handler

    def on(
        self, event: str, handler: Callable[..., Any] | None = None
    ) -> Callable[..., Any]:
        """Handle ``event`` from any client: ``handler(socket, data)``; the return value is the
        ack reply. ``"disconnect"`` handlers get ``(socket, reason)``. Usable as a decorator."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            second = {"disconnect": "reason", "error": "error"}.get(event, "data")
            called_with = f"(socket, {second})"
            self._router.add_handler(event, Handler(fn, max_args=2, called_with=called_with))
            return fn

        return register(handler) if handler is not None else register

    def namespace(self, name: str) -> Namespace:
        """A Socket.IO namespace of the application's own (``/`` is the application itself):
        its ``on(event)``, ``on_connection`` and ``disconnect`` handlers serve the Socket.IO
        clients that connect to it (docs/socketio.md). Unknown namespaces are refused."""
        return self._socketio.namespace(name, lambda: EventRouter(self._config, self._tasks))

    def authenticate(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Authenticate connections: ``hook(request: AuthRequest)`` (sync or async) returns the
        identity (stored as ``socket.identity`` and ``socket.data["identity"]``), or None /
        raises AuthError to refuse. It runs at the upgrade (refusal: HTTP 401; async hooks run
        just after it, refusal: close 4001) and again for a ``$auth`` message. A decorator.
        The identity's ``"user"`` item (a dict) or ``.user`` attribute (an object), a str or
        an int, becomes ``socket.user`` (see ``to_user``)."""
        self._admission.set_hook(hook)
        return hook

    def policy(
        self, pattern: str, policy: RoomPolicy | None = None, *,
        join: str | Iterable[str] = "anyone", publish: str = "members", presence: bool = False,
        history_size: int | None = None, history_ttl: float | None = None,
        rate: float | None = None, burst: float | None = None,
    ) -> RoomPolicy:
        """Set the policy of the rooms ``pattern`` matches (``chat:*``, ``admin``, ``*``):
        who may ``join`` (anyone, authenticated, grant, user, subscription, server; several
        of which any suffices) and ``publish`` (members, grant, server) from the client side
        (``socket.join``, ``socket.publish``), ``presence``, history and a broadcast ``rate``
        (per second) with its ``burst``. Raises ValueError. See docs/auth.md."""
        if policy is None:
            policy = RoomPolicy(
                join=frozenset(Join(j) for j in ((join,) if isinstance(join, str) else join)),
                publish=Publish(publish), presence=presence, history_size=history_size,
                history_ttl=history_ttl, rate_limit_messages=rate, rate_limit_burst=burst,
            )
        self._room_gate.set(pattern, policy)  # checks the pattern first
        self._policy_list[pattern] = policy
        if policy.presence:
            self._cluster.enable_presence(pattern)
        return policy

    def add_policies(self, policies: Mapping[str, RoomPolicy]) -> None:
        """Several policies by pattern (e.g. a config file's ``rooms``)."""
        for pattern, policy in policies.items():
            self.policy(pattern, policy)

    @property
    def policies(self) -> Mapping[str, RoomPolicy]:
        """The room policies by pattern (read-only)."""
        return types.MappingProxyType(self._policy_list)

    def expire_tokens(self) -> int:
        """Close the sockets whose token expired without a refresh (4003) and end room
        memberships whose subscription token did, now (a timer does it every second)."""
        return self._token_sessions.expire_due()

    def rate_limit(
        self, event: str, messages: float | None, *, burst: float | None = None,
        bytes: float | None = None,
    ) -> None:
        """Per-socket rate limit for one event, instead of the default one (None: no limit)."""
        self._socket_context.overrides[event] = RateLimit(messages, burst, bytes)

    def on_message(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``hook(socket, event, data)`` for every inbound event (e.g. custom metrics); like
        every handler it may take fewer arguments, and be async. A decorator too."""
        self._router.hooks.append(
            Handler(hook, max_args=3, called_with="(socket, event, data)")
        )
        return hook

    # rooms and broadcasts

    def room(self, name: str, *, presence: bool = False) -> Room:
        """The room called ``name`` (created when someone joins it). ``presence=True``: its
        members get ``$presence`` joined/left updates (see also ``presence_rooms``)."""
        if presence:
            self._cluster.enable_presence(name)
        return Room(self._room_context, name)

    @property
    def rooms(self) -> Mapping[str, Room]:
        return RoomsView(self._room_context)

    def remove_room(self, name: str) -> None:
        """Make every member leave ``name``."""
        for socket in self._registry.pop(name):
            socket.room_removed(name)

    @property
    def sockets(self) -> Mapping[str, Socket]:
        """Connected sockets by id (read-only)."""
        return types.MappingProxyType(self._sockets)

    def send(self, sid: str, event: str, data: Any = None, *, binary: bool | None = None) -> bool:
        """Send ``event`` to socket ``sid`` on any node (fire and forget). False when the
        socket is not here and cannot be reached (unknown id, or the broker is down). With
        recovery on, a session that dropped and may resume gets it on resuming."""
        recovery = self._recovery
        if recovery is not None and sid not in self._sockets and recovery.holds(sid):
            check_event(event)
            if binary is None:
                binary = envelope.needs_binary(data)
            payload = envelope.encode_event(event, data, binary=binary)
            if recovery.send_held(sid, payload, binary):
                return True
        return self._cluster.send(sid, event, data, binary)

    # sockets anywhere: every method works on one node too, local sockets take the fast path

    @property
    def node_id(self) -> str:
        """This node's id (the prefix of its sockets' ids in a cluster)."""
        return self._cluster.node_id

    @property
    def degraded(self) -> bool:
        """In a cluster and cut off from the broker: local delivery only, for now."""
        return self._cluster.degraded

    async def call(
        self, sid: str, event: str, data: Any = None, *, timeout: float | None = None,
        binary: bool | None = None,
    ) -> Any:
        """``socket.call`` for a socket on any node: its ack reply. Raises AckTimeout, AckError,
        or ConnectionClosed (also when there is no such socket)."""
        return await self._cluster.call(sid, event, data, timeout, binary)

    async def join(self, sid: str, room: str, *, timeout: float = 2.0) -> bool:
        """Make socket ``sid`` (on any node) join ``room``. False: no such socket. Raises
        LimitExceeded like ``socket.join``, TimeoutError if its node does not answer."""
        return await self._cluster.join(sid, room, timeout)

    async def leave(self, sid: str, room: str, *, timeout: float = 2.0) -> bool:
        """Make socket ``sid`` (on any node) leave ``room``. False: no such socket."""
        return await self._cluster.leave(sid, room, timeout)

    async def disconnect(
        self, sid: str, code: int = CloseCode.KICKED, reason: str = "", *, timeout: float = 2.0
    ) -> bool:
        """Close socket ``sid`` on any node (default 4000). False: no such socket."""
        return await self._cluster.disconnect(sid, code, reason, timeout)

    async def fetch_sockets(
        self, room: str | None = None, *, timeout: float = 2.0
    ) -> list[SocketRecord]:
        """Every socket in the cluster (or in ``room``): ``SocketRecord(sid, node, rooms,
        presence, user)``. Nodes that do not answer within ``timeout`` are left out."""
        return await self._cluster.fetch_sockets(room, timeout)

    async def socket_count(self, room: str | None = None, *, timeout: float = 2.0) -> int:
        """How many sockets the cluster has (in ``room``)."""
        return len(await self._cluster.fetch_sockets(room, timeout))

    async def presence(self, room: str, *, timeout: float = 2.0) -> list[PresenceMember]:
        """``room``'s members cluster-wide: ``PresenceMember(sid, node, info, user)``, with
        their ``socket.presence`` info and ``socket.user``."""
        return await self._cluster.presence(room, timeout)

    async def room_users(self, room: str, *, timeout: float = 2.0) -> list[str]:
        """The distinct users (``socket.user``) among ``room``'s members cluster-wide, sorted;
        members without a user are left out."""
        members = await self._cluster.presence(room, timeout)
        return sorted({member.user for member in members if member.user is not None})

    # users: every connection of one user, on every node (server/users.py, cluster/users.py)

    def set_user(self, socket: Socket, user: str | int | None) -> None:
        """Make ``user`` (an int becomes a str; None: no user) the user of ``socket``, e.g.
        in ``on_connection``; use this rather than assigning ``socket.user``, which the user
        index would not see."""
        checked = None if user is None else check_user(user)
        if checked == socket.user:
            return
        self._users.change(socket, checked, self._sockets.get(socket.id) is socket)
        cluster = self._cluster
        for room in socket.rooms if socket.connected else ():  # presence shows the user
            if cluster.is_presence_room(room):
                cluster.presence_state.changed(room, socket, joined=True, updated=True)

    def to_user(
        self, user: str | int, event: str, data: Any = None, *, binary: bool | None = None
    ) -> int:
        """Send ``event`` to every connection of ``user`` on every node (fire and forget).
        Returns the deliveries made on this node (the other nodes deliver theirs, uncounted)."""
        return self._cluster.to_user(check_user(user), event, data, binary)

    async def disconnect_user(
        self, user: str | int, code: int = CloseCode.KICKED, reason: str = "", *,
        timeout: float = 2.0,
    ) -> int:
        """Close every connection of ``user`` on every node (logout, ban; default 4000, so
        their sessions are not held for resuming). Returns how many were closed cluster-wide
        (a node that does not answer within ``timeout`` closes its own, uncounted)."""
        return await self._cluster.disconnect_user(check_user(user), code, reason, timeout)

    def user_sockets(self, user: str | int) -> list[Socket]:
        """``user``'s connections on this node."""
        return self._users.sockets(check_user(user))

    def on_server_event(
        self, name: str, handler: Callable[..., Any] | None = None
    ) -> Callable[..., Any]:
        """Handle ``name`` sent by another node with ``emit_to_servers``: ``handler(data)`` or
        ``handler(data, node_id)``, sync or async. Usable as a decorator."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._cluster.on_server_event(name, fn)
            return fn

        return register(handler) if handler is not None else register

    def emit_to_servers(self, name: str, data: Any = None) -> bool:
        """Send ``name`` to every other node's ``on_server_event`` handlers (not this one's).
        False when it could not be published (single node, or the broker is down)."""
        return self._cluster.emit_to_servers(name, data)

    def cluster_nodes(self) -> list[str]:
        """Ids of the nodes this one hears (itself first)."""
        return [self._cluster.node_id, *self._cluster.nodes]

    def broadcast(
        self, event: str, data: Any = None, *, exclude: Exclude = None,
        binary: bool | None = None,
    ) -> int:
        """Send ``event`` to every connected socket except ``exclude``. Returns the
        deliveries made on this node (in a cluster the other nodes deliver too, uncounted)."""
        senders = {s: s.send_frame for s in self._sockets.values()}
        return self._broadcast(senders, event, data, exclude, binary, None)

    emit = broadcast

    # HTTP and upgrade routing

    def _route(self, request: HandshakeRequest) -> HttpResponse | Accept | Serve:
        if self._socketio.handles(request.path):
            return self._socketio.route(request)
        return http.route_request(self, request)

    def open_live(self, request: HandshakeRequest) -> HttpResponse | Accept:
        """Admission of a reader of the live stats stream (``/smartsocket/live``, the
        dashboard's feed): the HTTP refusal, or the upgrade to accept. Hook for other
        transports, like ``open_socket``."""
        return self._live.accept(self.config, request)

    def open_socket(
        self, request: HandshakeRequest, socket_class: type[Socket] = Socket
    ) -> HttpResponse | Socket:
        """Admission of a new WebSocket: shutting down, ``max_connections``, origin and
        authentication at the upgrade (refusals are counted in the stats).

        Hook for other transports (smartsocket.asgi, smartsocket.integrations): they do the
        WebSocket-level checks (subprotocol; no compression of ours) and call this. It returns
        the HTTP refusal to send, or a ``Socket``: once the upgrade is accepted the transport
        calls ``socket.on_open(conn)`` with a ``SocketConnection``, then ``on_message`` for
        each message and ``on_close`` once, exactly like the native transport.
        """
        if self._connections.closing:
            return HttpResponse(503, b"server is shutting down\n", headers={"Retry-After": "1"})
        if len(self._connections.open) >= self.config.max_connections:
            return self._refuse(HttpResponse(503, b"server full\n", headers={"Retry-After": "5"}))
        admitted = self._admission.check_upgrade(request)
        if isinstance(admitted, HttpResponse):
            return self._refuse(admitted)
        authenticated, identity = admitted
        return socket_class(
            self._socket_context, request, authenticated=authenticated, identity=identity
        )

    def _refuse(self, response: HttpResponse) -> HttpResponse:
        if self._stats is not None:
            self._stats.rejected_connections += 1
        return response

    def _metrics_registry(self) -> CollectorRegistry:
        if self._prometheus is None:
            self._prometheus = prometheus.registry_for(prometheus.ServerCollector(
                self._sockets, self._registry, self._resumer, self._stats
            ))
            self._prometheus.register(
                SocketIOCollector(self._socketio, lambda: len(self._sockets))
            )
        return self._prometheus

    def metrics(self) -> bytes:
        """The figures in the Prometheus text format (what ``/metrics`` serves)."""
        return prometheus.exposition(self._metrics_registry())

    def health(self) -> tuple[int, dict[str, Any]]:
        """What ``/smartsocket/health`` answers: the HTTP status (503 while shutting down)
        and the body."""
        closing = self._connections.closing
        body: dict[str, Any] = {
            "status": "closing" if closing else "ok",
            "version": __version__,
            "connections": len(self._sockets),
        }
        if self._cluster.active:
            # Cut off from the broker the node still serves its own clients: "degraded", but
            # 200, so a load balancer keeps it (an outage of the broker must not empty the pool).
            section = self._cluster.stats_section()
            if section["status"] == "degraded" and not closing:
                body["status"] = "degraded"
            body["cluster"] = section
        return (503 if closing else 200), body

    def stats(self, *, cluster: bool = False) -> dict[str, Any]:
        """The figures served at /smartsocket/stats (this node's; in a cluster, a ``cluster``
        section too, with every node's figures and totals when ``cluster`` is true)."""
        figures = self._still_stats.snapshot(
            connections=len(self._sockets),
            rooms=len(self._registry),
            top_rooms=self._registry.largest(10),
        )
        if self._stats is None:
            figures["metrics"] = "disabled"  # the counters are zeros, not measurements
        if self._recovery is not None:
            figures["recovery"] = self._resumer.stats()
        if (outbox := self._outbox.stats()) is not None:
            figures["outbox"] = outbox
        if self._config.socketio:
            figures["socketio"] = self._socketio.stats()
        if self._cluster.active:
            section = figures["cluster"] = self._cluster.stats_section(aggregate=cluster)
            if "raw" in figures:
                figures["raw"]["clusterPublished"] = section["published"]
                figures["raw"]["clusterPublishFailed"] = section["publishFailed"]
                figures["raw"]["clusterReceived"] = section["received"]
        return figures

    # lifecycle

    @property
    def started(self) -> bool:
        """``start()`` has run and ``close()`` has not (with or without a listener)."""
        return self._started

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``); the configured one before start."""
        return self._port if self._port is not None else self.config.port

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.enable_encryption else "ws"
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/"

    @property
    def listening(self) -> str:
        """Where the server listens, for people: the bound address and a URL that reaches it
        ("every interface (0.0.0.0:8080), e.g. ws://127.0.0.1:8080/")."""
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            return f"every interface ({host or '0.0.0.0'}:{self.port}), e.g. {self.url}"
        return self.url

    async def start(self, *, listen: bool = True) -> None:
        """Start listening (returns once the port is bound).

        ``listen=False`` starts all but the listener (heartbeat, stats sampling): for a server
        whose sockets come through another transport only (smartsocket.asgi,
        smartsocket.integrations.aiohttp start it so on their first connection).
        """
        if self._started and (self._server is not None or not listen):
            return
        if not self._started:
            self._closed = asyncio.Event()
            self._connections.closing = False
            await self._token_sessions.start()  # a JWKS URL: keys before the first token
            await self._cluster.start(self.config)  # before the first socket (its id)
            # The session store, once: in Redis when the node logs its rooms there.
            self._use_store(pick_store(self.config, self._cluster, self._memory_store))
            if self.config.outbox_url:
                try:
                    await self._outbox.start(
                        self.config.outbox_url,
                        lambda room, event, data: self.room(room).broadcast(event, data),
                        lambda: self._cluster.degraded,
                    )
                except BaseException:
                    await self._close_cluster()
                    raise
        if listen:
            try:
                await self._listen()
            except BaseException:
                if not self._started:  # a port in use, a bad certificate: undo the cluster
                    await self._close_cluster()
                raise
        if not self._started:
            self._started = True
            loop = asyncio.get_running_loop()
            self._heartbeat_task = loop.create_task(
                heartbeat(
                    self._sockets, self.config, self._liveness, self._room_limits, self._registry
                )
            )
            if self._stats is not None:
                self._sampler = loop.call_later(1.0, self._sample)
            if self._recovery is not None:
                self._sweep()
        if listen:
            logger.info("listening on %s", self.listening, extra={"event": "listening",
                                                                  "url": self.url})

    async def _listen(self) -> None:
        # The clock is read at each use: tests replace ``_clock``.
        # Connections that served plain requests (the HTTP API...): closed by close().
        self._served = ServedConnections(self.config.max_connections_per_ip)
        self._server = await bind(self.config, self._route, lambda: self._clock(), self._served)
        self._port = self._server.sockets[0].getsockname()[1]

    async def serve(self) -> None:
        """Start, then run until ``close()``."""
        await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def __aenter__(self) -> SmartSocket:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting, let running handlers finish (up to ``timeout``,
        default ``shutdown_timeout``), close every client with 1001, wait for them to go."""
        if not self._started or self._connections.closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._connections.closing = True
        await self._outbox.stop()  # its batch in hand goes out to the sockets still here
        deadline = time.monotonic() + (
            self.config.shutdown_timeout if timeout is None else timeout
        )
        server = self._server
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
        self._token_sessions.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        self._live.close_all()
        self._served.close()  # HTTP requests still held (long-polls): 503
        for socket in list(self._connections.open):
            socket.fail(CloseCode.GOING_AWAY, "server shutting down")
        self._socketio.close_all()  # Socket.IO sessions that never connected a socket
        wait_until = min(deadline, time.monotonic() + CLOSE_TIMEOUT + 0.5)
        while self._connections.open and time.monotonic() < wait_until:
            await asyncio.sleep(0.01)
        for socket in list(self._connections.open):
            conn = socket.connection
            if conn is not None:
                conn.abort()
        await self._close_cluster()  # after the sockets: their presence leaves go out first
        for task in list(self._tasks):
            task.cancel()
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._server = None
        self._port = None
        self._started = False
        assert self._closed is not None
        self._closed.set()
        logger.info("closed")

    async def _close_cluster(self) -> None:
        await self._outbox.stop()
        self._use_store(self._memory_store)
        await self._cluster.close()

    def listen(self, callback: Callable[[], Any] | None = None) -> None:
        """Run the server until SIGINT or SIGTERM, then close gracefully (blocking)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            await self.start()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: loop.create_task(self.close()))
            # The server owns this process: what exists now (modules, the app) lives as long
            # as it does, so the cyclic GC need not traverse it again. Without this, each full
            # collection walked ~100k start-up objects: 30-40 ms loop stalls under a
            # reconnect storm (bench/RESULTS.md, soak).
            gc.freeze()
            if callback is not None:
                callback()
            assert self._closed is not None
            await self._closed.wait()

        run(main())

    def _sample(self) -> None:
        """Once a second: counters for the rates in the stats, and the live stats stream."""
        assert self._stats is not None
        self._stats.sample()
        self._sampler = asyncio.get_running_loop().call_later(1.0, self._sample)
        if self._live.readers:
            self._live.push()

    def _sweep(self) -> None:
        """Every few seconds: expire held sessions and history nobody can resume from."""
        assert self._recovery is not None
        interval = max(0.5, min(5.0, self._config.recovery_window / 4))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)
        for sid in self._recovery.sweep(self._registry):
            self._cluster.ended_here(sid)
