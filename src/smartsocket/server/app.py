"""``SmartSocket``, the facade: configuration, registration, rooms, the cluster-facing API,
stats and HTTP; it composes its parts (server/parts.py) and delegates to them."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import signal
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from smartsocket.cluster.messages import PresenceMember, SocketRecord
from smartsocket.config import Config
from smartsocket.handlers import Handler
from smartsocket.metrics import Stats
from smartsocket.policies import Join, Publish, RoomPolicy
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.names import check_event
from smartsocket.security import RateLimit
from smartsocket.server import http
from smartsocket.server.api import HttpApi
from smartsocket.server.api_ops import Context
from smartsocket.server.dispatch import EventRouter
from smartsocket.server.fanout import Exclude
from smartsocket.server.figures import Figures
from smartsocket.server.lifecycle import Lifecycle
from smartsocket.server.listener import run
from smartsocket.server.live import LiveStats
from smartsocket.server.parts import Parts
from smartsocket.server.rooms import Room, RoomsView
from smartsocket.server.socket import Socket
from smartsocket.server.socketio import Namespace, SocketIOEndpoint
from smartsocket.server.users import check_user
from smartsocket.server.watchdog import EXIT_MARGIN, ExitWatchdog
from smartsocket.transport import (
    Accept,
    HandshakeRequest,
    HttpResponse,
    Serve,
)

logger = logging.getLogger("smartsocket.server")


# Set by the CLI while it imports the module of ``--app``: a ``listen()`` at that module's top
# level would run the server with the module's options instead of the command line's, and the
# import would never return.
importing_app: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "smartsocket_importing_app", default=None
)


class ListenAtImport(RuntimeError):
    """``listen()`` ran while ``smartsocket serve --app`` imported the module."""


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
        # The parts, composed once; those that derive from the config are rebuilt with it.
        parts = self._parts = Parts(self._config, self.room)
        # Bound once: the parts that stay (the rebuilt ones are read through ``_parts``).
        self._sockets, self._registry, self._cluster = parts.sockets, parts.registry, parts.cluster
        self._users, self._connections, self._tasks = parts.users, parts.connections, parts.tasks
        self._router, self._liveness, self._local = parts.router, parts.liveness, parts.local
        self._socket_context, self._resumer = parts.socket_context, parts.resumer
        self._access, self._outbox = parts.access, parts.outbox
        self._room_context = parts.room_context
        self._broadcast = parts.broadcaster.send  # (Room.broadcast calls it)
        self._live = LiveStats(self.stats)  # /smartsocket/live connections
        # Socket.IO clients (server/socketio/): admitted through open_socket like the rest.
        self._socketio = SocketIOEndpoint(
            self._config, self.open_socket, self._cluster,
            sockets=lambda: len(self._connections.open),
            sockets_at=lambda ip: self._parts.admission.count(ip),
            clock=lambda: self._socket_context.clock(),
        )
        parts.pending_at = self._socketio.pending_at  # sessions without a socket, per address
        # Started or not: the listener, the heartbeat, the sampler and sweeper, in order.
        self._life = Lifecycle(
            parts, self._live, self._route,
            lambda room, event, data: self.room(room).broadcast(event, data),
            self._socketio.close_all,
        )
        self._figures = Figures(parts, self._socketio)  # stats, health, /metrics
        # What a plain GET / answers: None is a short page naming this server and its
        # endpoints; the demo app puts its chat page here (its events are not the app's).
        self.home_page: bytes | None = None
        # POST /smartsocket/api/<operation> (server/api.py; on with ``api_secret``)
        self.api: HttpApi = HttpApi(Context(self, lambda: self._parts.recovery, self._cluster))
        self.config = self._config

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """Replace the configuration (before ``start()``): what derives from it is rebuilt."""
        if self._life.started:
            raise RuntimeError("cannot reconfigure a running server")
        self._config = config
        self._parts.configure(config)
        self._socketio.configure(config)
        self._figures.configure()

    @property
    def _stats(self) -> Stats | None:
        return self._parts.stats

    @property
    def _clock(self) -> Callable[[], int]:
        """The clock (integer ns) of rate limits and the error-rate rule; tests replace it."""
        return self._socket_context.clock

    @_clock.setter
    def _clock(self, clock: Callable[[], int]) -> None:
        self._socket_context.clock = clock

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
        self._parts.admission.set_hook(hook)
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
        self._access.set_policy(pattern, policy)
        return policy

    def add_policies(self, policies: Mapping[str, RoomPolicy]) -> None:
        """Several policies by pattern (e.g. a config file's ``rooms``)."""
        for pattern, policy in policies.items():
            self.policy(pattern, policy)

    @property
    def policies(self) -> Mapping[str, RoomPolicy]:
        """The room policies by pattern (read-only)."""
        return self._access.policies

    def expire_tokens(self) -> int:
        """Close the sockets whose token expired without a refresh (4003) and end room
        memberships whose subscription token did, now (a timer does it every second)."""
        return self._access.tokens.expire_due()

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
        recovery = self._parts.recovery
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

    async def wait_for_broker(self, timeout: float = 5.0) -> bool:
        """Wait until the broker link can take a burst of publishes (its queue at most half
        full); True at once on one node or when it can. False when the link is down or did
        not drain in ``timeout`` seconds. A broadcast while the queue is full raises
        LimitExceeded ``overloaded`` instead of being lost for the other nodes."""
        return await self._cluster.wait_writable(timeout)

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
        if socket.connected:  # presence shows the user
            self._cluster.presence_state.updated(socket, socket.rooms)

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
        if len(self._connections.open) + self._socketio.pending >= self.config.max_connections:
            return self._refuse(HttpResponse(503, b"server full\n", headers={"Retry-After": "5"}))
        admitted = self._parts.admission.check_upgrade(request)
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

    def metrics(self) -> bytes:
        """The figures in the Prometheus text format (what ``/metrics`` serves)."""
        return self._figures.metrics()

    def health(self) -> tuple[int, dict[str, Any]]:
        """What ``/smartsocket/health`` answers: the HTTP status (503 while shutting down)
        and the body."""
        return self._figures.health()

    def stats(self, *, cluster: bool = False) -> dict[str, Any]:
        """The figures served at /smartsocket/stats (this node's; in a cluster, a ``cluster``
        section too, with every node's figures and totals when ``cluster`` is true)."""
        return self._figures.stats(cluster)

    # lifecycle (server/lifecycle.py)

    @property
    def started(self) -> bool:
        """``start()`` has run and ``close()`` has not (with or without a listener)."""
        return self._life.started

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``); the configured one before start."""
        port = self._life.port
        return port if port is not None else self.config.port

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
        if await self._life.start(listen):
            logger.info("listening on %s", self.listening, extra={"event": "listening",
                                                                  "url": self.url})

    async def serve(self) -> None:
        """Start, then run until ``close()``."""
        await self.start()
        await self._life.wait_closed()

    async def __aenter__(self) -> SmartSocket:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting, let running handlers finish (up to ``timeout``,
        default ``shutdown_timeout``), close every client with 1001, wait for them to go."""
        await self._life.close(timeout)

    def listen(self, callback: Callable[[], Any] | None = None) -> None:
        """Run the server until SIGINT or SIGTERM, then close gracefully (blocking)."""
        spec = importing_app.get()
        if spec is not None:
            raise ListenAtImport(
                f"--app {spec}: the module calls listen() when imported, but smartsocket serve "
                "runs the server itself (with its flags): put that call under "
                "`if __name__ == \"__main__\":`"
            )

        watchdog = ExitWatchdog(self.config.shutdown_timeout + EXIT_MARGIN)
        closing: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references only

        def stop() -> None:
            loop = asyncio.get_running_loop()
            watchdog.arm(loop)  # the process exits even if something never ends
            if not closing:
                closing.add(loop.create_task(self.close()))

        async def main() -> None:
            loop = asyncio.get_running_loop()
            await self.start()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            # The server owns this process: what exists now (modules, the app) lives as long
            # as it does, so the cyclic GC need not traverse it again. Without this, each full
            # collection walked ~100k start-up objects: 30-40 ms loop stalls under a
            # reconnect storm (bench/RESULTS.md, soak).
            gc.freeze()
            if callback is not None:
                callback()
            await self._life.wait_closed()

        try:
            run(main())  # its end cancels and awaits every task left: watched too
        finally:
            watchdog.disarm()
