"""``SmartSocket``: configuration, handlers, routing of requests, fan-out and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from smartsocket.cluster.messages import PresenceMember, SocketRecord
from smartsocket.cluster.node import ClusterNode
from smartsocket.config import Config
from smartsocket.handlers import Handler
from smartsocket.metrics import Stats
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.names import check_event
from smartsocket.security import Limiter, RateLimit
from smartsocket.server import http, live, prometheus
from smartsocket.server.admission import Admission
from smartsocket.server.api import HttpApi
from smartsocket.server.api_ops import Context
from smartsocket.server.broadcast import Broadcaster
from smartsocket.server.connections import Connections
from smartsocket.server.dispatch import EventRouter, Tasks
from smartsocket.server.fanout import Exclude, Fanout
from smartsocket.server.heartbeat import heartbeat
from smartsocket.server.listener import bind, run
from smartsocket.server.local import LocalSide
from smartsocket.server.recovery import Recovery
from smartsocket.server.resume import Resumer
from smartsocket.server.rooms import Room, RoomLimits, RoomRegistry, RoomsView
from smartsocket.server.socket import Socket
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
        # What the cluster may do with this node's sockets (cluster/ports.py).
        self._local = LocalSide(self._sockets, self._registry, self._fan)
        self._cluster = ClusterNode(self._local)  # cluster/: cross-node operations, presence
        self._broadcaster = Broadcaster(self._sockets, self._cluster, self._fan)
        self._broadcast = self._broadcaster.send  # bound once (Room.broadcast calls it)
        self._registry.hook = self._cluster
        self._limit_overrides: dict[str, RateLimit] = {}
        self._admission = Admission(self)
        self._default_limit: RateLimit | None = None
        # Per-room broadcast rates; they read the clock at each use (tests replace it).
        self._room_limits = RoomLimits(self._config, lambda: self._clock())
        # Rate limits and the error-rate rule read this clock (integer ns; tests inject one).
        self._clock: Callable[[], int] = time.monotonic_ns
        self._tasks = Tasks()
        self._spawn = self._tasks.spawn
        self._router = EventRouter(self._config, self._tasks)  # inbound events -> handlers
        # Bound once: a socket's inbound hot path reads one attribute, as before the split.
        self._dispatch = self._router.dispatch
        self._emit_local = self._router.emit_local
        self._connections = Connections(
            self._sockets, self._cluster, self._tasks.spawn, self._router.emit_local
        )
        self._resumer = Resumer(
            self._config, self._sockets, self._registry, self._cluster, self._tasks.spawn,
            self._connections.welcome,
        )
        self._connections.resumer = self._resumer
        # What a Socket calls as it opens, authenticates and closes (bound once).
        self._on_open = self._connections.on_open
        self._auth_message = self._connections.auth_message
        self._on_close = self._connections.on_close
        self._stats: Stats | None = None
        self._server: asyncio.Server | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sampler: asyncio.TimerHandle | None = None
        self._recovery: Recovery | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._prometheus: CollectorRegistry | None = None
        self._served = ServedConnections()
        self._stats_subscribers: dict[Any, None] = {}  # /smartsocket/live connections
        self._closed: asyncio.Event | None = None
        self._port: int | None = None
        # Started (heartbeat, sampler), with or without a listener: ``start(listen=False)``
        # serves sockets that another transport carries (smartsocket.asgi, integrations).
        self._started = False
        # What a plain GET / answers: None is a short page naming this server and its
        # endpoints; the demo app puts its chat page here (its events are not the app's).
        self.home_page: bytes | None = None
        # POST /smartsocket/api/<operation> (server/api.py; on with ``api_secret``)
        self.api: HttpApi = HttpApi(
            Context(self, lambda: self._recovery, self._cluster.room_channel)
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
        hook = self._admission._hook
        self._config = config
        self._admission = Admission(self)
        self._admission._hook = hook
        self._stats = Stats() if config.enable_metrics else None
        # With metrics off the stats keep their shape: counters that never move (zeros).
        self._still_stats = self._stats or Stats()
        self._recovery = Recovery(config) if config.recovery_window else None
        self._router.config = config
        self._room_limits.configure(config, self._stats)
        self._fan = Fanout(config, self._stats)
        local = self._local
        local.fanout, local.recovery, local.stats = self._fan, self._recovery, self._stats
        self._broadcaster.fanout, self._broadcaster.recovery = self._fan, self._recovery
        self._resumer.config, self._resumer.recovery = config, self._recovery
        self._connections.configure(config, self._admission, self._stats, self._recovery)
        self._default_limit = None
        if config.rate_limit_messages or config.rate_limit_bytes:
            self._default_limit = RateLimit(
                config.rate_limit_messages, config.rate_limit_burst, config.rate_limit_bytes
            )

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

    def authenticate(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Authenticate connections: ``hook(request: AuthRequest)`` (sync or async) returns the
        identity (stored as ``socket.identity`` and ``socket.data["identity"]``), or None /
        raises AuthError to refuse. It runs at the upgrade (refusal: HTTP 401; async hooks run
        just after it, refusal: close 4001) and again for a ``$auth`` message. A decorator."""
        self._admission.set_hook(hook)
        return hook

    def rate_limit(
        self, event: str, messages: float | None, *, burst: float | None = None,
        bytes: float | None = None,
    ) -> None:
        """Per-socket rate limit for one event, instead of the default one (None: no limit)."""
        self._limit_overrides[event] = RateLimit(messages, burst, bytes)

    def _new_limiter(self) -> Limiter | None:
        if self._default_limit is None and not self._limit_overrides:
            return None
        return Limiter(self._default_limit, self._limit_overrides)

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
        return Room(self, name)

    @property
    def rooms(self) -> Mapping[str, Room]:
        return RoomsView(self)

    def remove_room(self, name: str) -> None:
        """Make every member leave ``name``."""
        for socket in self._registry.pop(name):
            socket._rooms.pop(name, None)

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
        presence)``. Nodes that do not answer within ``timeout`` are left out."""
        return await self._cluster.fetch_sockets(room, timeout)

    async def socket_count(self, room: str | None = None, *, timeout: float = 2.0) -> int:
        """How many sockets the cluster has (in ``room``)."""
        return len(await self._cluster.fetch_sockets(room, timeout))

    async def presence(self, room: str, *, timeout: float = 2.0) -> list[PresenceMember]:
        """``room``'s members cluster-wide with their ``socket.presence`` info."""
        return await self._cluster.presence(room, timeout)

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
        senders = {s: s._send_frame for s in self._sockets.values()}
        return self._broadcast(senders, event, data, exclude, binary, None)

    emit = broadcast

    # HTTP and upgrade routing

    def _route(self, request: HandshakeRequest) -> HttpResponse | Accept | Serve:
        return http.route_request(self, request)

    def open_socket(self, request: HandshakeRequest) -> HttpResponse | Socket:
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
        return Socket(self, request, authenticated=authenticated, identity=identity)

    def _refuse(self, response: HttpResponse) -> HttpResponse:
        if self._stats is not None:
            self._stats.rejected_connections += 1
        return response

    def _metrics_registry(self) -> CollectorRegistry:
        if self._prometheus is None:
            self._prometheus = prometheus.registry_for(self)
        return self._prometheus

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
            figures["recovery"] = self._recovery.stats()
        if self._cluster.active:
            section = figures["cluster"] = self._cluster.stats_section(aggregate=cluster)
            if "raw" in figures:
                figures["raw"]["clusterPublished"] = section["published"]
                figures["raw"]["clusterPublishFailed"] = section["publishFailed"]
                figures["raw"]["clusterReceived"] = section["received"]
        return figures

    # lifecycle

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
            await self._cluster.start(self.config)  # before the first socket (its id)
            if self._recovery is not None:
                self._recovery.broker = self._cluster.recovery  # Redis holds it in a cluster
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
                heartbeat(self._sockets, self.config, self._room_limits, self._registry)
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
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        live.close_all(self)
        self._served.close()  # HTTP requests still held (long-polls): 503
        for socket in list(self._connections.open):
            socket.fail(CloseCode.GOING_AWAY, "server shutting down")
        wait_until = min(deadline, time.monotonic() + CLOSE_TIMEOUT + 0.5)
        while self._connections.open and time.monotonic() < wait_until:
            await asyncio.sleep(0.01)
        for socket in list(self._connections.open):
            if socket._conn is not None:
                socket._conn.abort()
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
        if self._recovery is not None:
            self._recovery.broker = None
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
        if self._stats_subscribers:
            live.push(self)

    def _sweep(self) -> None:
        """Every few seconds: expire held sessions and history nobody can resume from."""
        assert self._recovery is not None
        interval = max(0.5, min(5.0, self._config.recovery_window / 4))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)
        for sid in self._recovery.sweep(self._registry):
            self._cluster.ended_here(sid)
