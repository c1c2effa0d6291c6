"""``SmartSocket``: configuration, handlers, routing of requests, fan-out and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from smartsocket import compression
from smartsocket.cluster.api import ClusterAPI
from smartsocket.cluster.node import ClusterNode
from smartsocket.config import Config
from smartsocket.errors import ConfigError
from smartsocket.handlers import Handler
from smartsocket.metrics import Stats
from smartsocket.protocol import SUBPROTOCOL, envelope
from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.protocol.envelope import Event
from smartsocket.protocol.names import check_event
from smartsocket.security import Limiter, LimitExceeded, RateLimit, TokenBucket
from smartsocket.server import http, live, prometheus
from smartsocket.server.admission import Admission
from smartsocket.server.dispatch import EventRouter, Tasks
from smartsocket.server.fanout import Exclude, Fanout, count_members, exclude_ids, skip_set
from smartsocket.server.local import LocalSide
from smartsocket.server.recovery import Recovery
from smartsocket.server.resume import SessionResume
from smartsocket.server.rooms import Room, RoomRegistry, RoomsView, SendFrame
from smartsocket.server.socket import Socket
from smartsocket.transport import (
    CLOSE_TIMEOUT,
    Accept,
    HandshakeRequest,
    HttpResponse,
    create_server,
)

logger = logging.getLogger("smartsocket.server")

WS_PATHS = frozenset({"/", "/smartsocket", "/smartsocket/"})
# Closes after which a session is not held for resuming: the client or the application ended
# it, or it was refused.
_FINAL_CLOSES = frozenset(
    {CloseCode.NORMAL, CloseCode.KICKED, CloseCode.UNAUTHORIZED, CloseCode.RATE_LIMITED,
     CloseCode.POLICY_VIOLATION}
)


class SmartSocket(ClusterAPI, SessionResume):
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
        self._registry.hook = self._cluster
        self._open: dict[Socket, None] = {}  # every open connection, admitted or not
        self._limit_overrides: dict[str, RateLimit] = {}
        self._admission = Admission(self)
        self._default_limit: RateLimit | None = None
        self._room_limits: dict[str, TokenBucket] = {}
        # Rate limits and the error-rate rule read this clock (integer ns; tests inject one).
        self._clock: Callable[[], int] = time.monotonic_ns
        self._connection_handlers: list[Handler] = []
        self._tasks = Tasks()
        self._spawn = self._tasks.spawn
        self._router = EventRouter(self._config, self._tasks)  # inbound events -> handlers
        # Bound once: a socket's inbound hot path reads one attribute, as before the split.
        self._dispatch = self._router.dispatch
        self._emit_local = self._router.emit_local
        self._stats: Stats | None = None
        self._server: asyncio.Server | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sampler: asyncio.TimerHandle | None = None
        self._recovery: Recovery | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._early_resumes: dict[Socket, Event] = {}  # $resume sent before authentication
        self._prometheus: CollectorRegistry | None = None
        self._stats_subscribers: dict[Any, None] = {}  # /smartsocket/live connections
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._port: int | None = None
        # Started (heartbeat, sampler), with or without a listener: ``start(listen=False)``
        # serves sockets that another transport carries (smartsocket.asgi, integrations).
        self._started = False
        # What a plain GET / answers: None is a short page naming this server and its
        # endpoints; the demo app puts its chat page here (its events are not the app's).
        self.home_page: bytes | None = None
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
        self._fan = Fanout(config, self._stats)
        local = self._local
        local.fanout, local.recovery, local.stats = self._fan, self._recovery, self._stats
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
        self._connection_handlers.append(Handler(handler, max_args=1, called_with="(socket)"))
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
        return super().send(sid, event, data, binary=binary)

    def broadcast(
        self, event: str, data: Any = None, *, exclude: Exclude = None,
        binary: bool | None = None,
    ) -> int:
        """Send ``event`` to every connected socket except ``exclude``. Returns the
        deliveries made on this node (in a cluster the other nodes deliver too, uncounted)."""
        senders = {s: s._send_frame for s in self._sockets.values()}
        return self._fanout(senders, event, data, exclude, binary, None)

    emit = broadcast

    def _fanout(
        self, members: Mapping[Socket, SendFrame], event: str, data: Any,
        exclude: Exclude, binary: bool | None, room: str | None = None,
    ) -> int:
        """Encode once, deliver here (server/fanout.py), then in a cluster publish the encoded
        payload to the other nodes (``room`` None: to every socket). Returns the deliveries
        made on this node."""
        check_event(event)
        cluster = self._cluster
        recovery = self._recovery
        # Single-node recovery logs room messages here, even with no member here: a dropped
        # member may resume and want it. (In a cluster on Redis, Redis logs them.)
        logs_here = recovery is not None and room is not None and recovery.broker is None
        if not members and not cluster.active and not logs_here:
            return 0
        if binary is None:
            binary = envelope.needs_binary(data)
        if exclude is not None and not isinstance(exclude, Socket | str):
            exclude = tuple(exclude)  # read twice below
        skip = skip_set(exclude, self._sockets) if exclude is not None else None
        if logs_here:
            assert recovery is not None and room is not None
            ids = exclude_ids(exclude) if exclude is not None else None
            payload = recovery.room_message(room, event, data, binary, ids)
        else:
            payload = envelope.encode_event(event, data, binary=binary)
        if not cluster.active:
            return self._fan.deliver(members, payload, binary, skip)
        return self._publish(members, room, payload, binary, skip, exclude_ids(exclude))

    def _publish(
        self, members: Mapping[Socket, SendFrame], room: str | None, payload: bytes,
        binary: bool, skip: set[Socket] | None, ids: tuple[str, ...],
    ) -> int:
        """A broadcast in a cluster: delivered here, then published (or, with recovery on
        Redis, logged by Redis and delivered from the room channel by every node)."""
        cluster = self._cluster
        fan = self._fan
        if room is not None and cluster.logs_rooms:
            if cluster.publish_logged(room, payload, binary, ids, bool(members)):
                return count_members(members, skip)
            return fan.deliver(members, payload, binary, skip) if members else 0
        deflated, tried = fan.compress_for_publish(payload)
        count = fan.deliver(members, payload, binary, skip, deflated, tried) if members else 0
        cluster.publish_broadcast(room, payload, binary, deflated, tried, ids)
        return count

    def _check_room_rate(self, name: str) -> None:
        """Per-room broadcast rate (room_rate_limit_messages): raise LimitExceeded when over."""
        bucket = self._room_limits.get(name)
        if bucket is None:
            rate = self.config.room_rate_limit_messages
            burst = self.config.room_rate_limit_burst or max(1.0, 2 * rate)
            bucket = self._room_limits[name] = TokenBucket(rate, burst, self._clock())
        wait = bucket.take(self._clock())
        if wait:
            if self._stats is not None:
                self._stats.rate_limited += 1
            raise LimitExceeded(
                ErrorCode.RATE_LIMITED, f"room {name!r} is over its broadcast rate",
                retry_after=round(wait, 3),
            )

    # connection lifecycle (called by Socket)

    def _on_open(self, socket: Socket) -> None:
        self._open[socket] = None
        if self._admission.open(socket) and socket.authenticated:
            self._admit(socket)

    def _auth_message(self, socket: Socket, packet: Event) -> None:
        self._admission.auth_message(socket, packet)

    def _welcome_socket(
        self, socket: Socket, recovered: bool | None,
        replay: list[tuple[bytes, bool]] | None = None, frames: list[bytes] | None = None,
    ) -> None:
        """Welcome an admitted socket (after a resume: then the missed messages, and frames
        its rooms delivered while it resumed), then hand it to the application."""
        self._sockets[socket.id] = socket
        if self._stats is not None:
            self._stats.total_connections += 1
        logger.debug(
            "connected %s from %s", socket.id, socket.remote_address,
            extra={"event": "connect", "sid": socket.id, "remote": str(socket.remote_address)},
        )
        socket._send_payload(self._welcome(socket, recovered), False)
        for payload, binary in replay or ():
            socket._send_payload(payload, binary)
        for frame in frames or ():
            socket._send_frame(frame)
        if not self._connection_handlers:
            socket._flush_inbox()
            return
        handlers = self._connection_handlers
        if any(h.is_async for h in handlers):
            if socket._inbox is None:
                socket._inbox = []  # hold events until on_connection has registered handlers
            self._spawn(self._run_connection_handlers(socket, handlers))
            return
        for handler in handlers:
            try:
                handler.fn(*(socket,)[: handler.arity])
            except Exception:
                logger.exception("on_connection handler %s failed", handler.name)
                socket._fail(CloseCode.INTERNAL_ERROR, "connection handler failed")
                return
        socket._flush_inbox()

    async def _run_connection_handlers(self, socket: Socket, handlers: list[Handler]) -> None:
        try:
            for handler in handlers:
                result = handler.fn(*(socket,)[: handler.arity])
                if asyncio.iscoroutine(result):
                    await result
        except Exception:
            logger.exception("on_connection handler failed for %s", socket.id)
            socket._fail(CloseCode.INTERNAL_ERROR, "connection handler failed")
            return
        socket._flush_inbox()

    def _welcome(self, socket: Socket, recovered: bool | None = None) -> bytes:
        cfg = self._config
        info: dict[str, Any] = {
            "sid": socket.id,
            "token": socket.token,
            "protocol": 1,
            "pingInterval": round(cfg.ping_interval * 1000),
            "pingTimeout": round(cfg.ping_timeout * 1000),
            "maxMessageSize": cfg.max_message_size,
            "ackTimeout": round(cfg.message_timeout * 1000),
        }
        if self._recovery is not None:
            info["recovery"] = round(cfg.recovery_window * 1000)
        if recovered is not None:
            info["recovered"] = recovered
        return envelope.encode_event("$welcome", info)

    def _on_close(self, socket: Socket, code: int, reason: str) -> None:
        self._open.pop(socket, None)
        self._early_resumes.pop(socket, None)
        self._admission.close(socket)
        if self._stats is not None and code == CloseCode.SLOW_CONSUMER:
            self._stats.dropped_slow += 1
        if self._sockets.get(socket.id) is not socket:
            return  # never admitted: the application never saw it
        del self._sockets[socket.id]
        rec = socket._rec
        if rec is not None and rec.owner is socket:
            rec.owner = None
            assert self._recovery is not None
            # A shutdown ends sessions, unless Redis keeps them for another node to resume.
            if code not in _FINAL_CLOSES and (
                not self._closing or self._recovery.broker is not None
            ):
                self._recovery.hold(socket, rec)
            else:
                self._cluster.ended_here(socket.id)
        logger.debug(
            "disconnected %s: %d %s", socket.id, code, reason,
            extra={"event": "disconnect", "sid": socket.id, "code": code, "reason": reason},
        )
        self._emit_local(socket, "disconnect", reason or str(code))

    # HTTP and upgrade routing

    def _route(self, request: HandshakeRequest) -> HttpResponse | Accept:
        if not request.is_upgrade:
            return http.route(self, request)
        if request.path == live.PATH:
            return live.accept(self, request)
        if request.path not in WS_PATHS:
            return HttpResponse(404, b"no WebSocket endpoint here; use / or /smartsocket\n")
        if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            return HttpResponse(
                426, b"WebSocket version 13 required\n",
                headers={"Sec-WebSocket-Version": "13"},
            )
        headers: dict[str, str] = {}
        offered = request.header("Sec-WebSocket-Protocol")  # may repeat (RFC 6455 11.3.4)
        if offered is not None:
            names = [p.strip() for p in offered.split(",")]
            if SUBPROTOCOL not in names:
                return HttpResponse(
                    400, f"unsupported subprotocol; this server speaks {SUBPROTOCOL}\n".encode()
                )
            headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
        socket = self.open_socket(request)
        if isinstance(socket, HttpResponse):
            return socket
        deflate = None
        if self.config.enable_compression:
            deflate = compression.negotiate(
                request.header("Sec-WebSocket-Extensions"),
                context_takeover=self.config.compression_context_takeover,
                max_window_bits=self.config.compression_max_window_bits,
            )
            if deflate is not None:
                headers["Sec-WebSocket-Extensions"] = deflate.response_header()
        return Accept(socket, headers, deflate)

    def open_socket(self, request: HandshakeRequest) -> HttpResponse | Socket:
        """Admission of a new WebSocket: shutting down, ``max_connections``, origin and
        authentication at the upgrade (refusals are counted in the stats).

        Hook for other transports (smartsocket.asgi, smartsocket.integrations): they do the
        WebSocket-level checks (subprotocol; no compression of ours) and call this. It returns
        the HTTP refusal to send, or a ``Socket``: once the upgrade is accepted the transport
        calls ``socket.on_open(conn)`` with a ``SocketConnection``, then ``on_message`` for
        each message and ``on_close`` once, exactly like the native transport.
        """
        if self._closing:
            return HttpResponse(503, b"server is shutting down\n", headers={"Retry-After": "1"})
        if len(self._open) >= self.config.max_connections:
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
            self._closing = False
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
            self._heartbeat_task = loop.create_task(self._heartbeat())
            if self._stats is not None:
                self._sampler = loop.call_later(1.0, self._sample)
            if self._recovery is not None:
                self._sweep()
        if listen:
            logger.info("listening on %s", self.listening, extra={"event": "listening",
                                                                  "url": self.url})

    async def _listen(self) -> None:
        cfg = self.config
        self._server = await create_server(
            self._route,
            host=cfg.host,
            port=cfg.port,
            max_message_size=cfg.max_message_size,
            handshake_timeout=cfg.handshake_timeout,
            ssl=self._ssl_context(),
            compression_level=cfg.compression_level,
            compression_threshold=cfg.compression_threshold,
            write_buffer_high=cfg.write_buffer_high,
            max_write_buffer=cfg.max_write_buffer,
            max_fragments=cfg.max_fragments,
            frame_rate=cfg.rate_limit_frames,
            clock=lambda: self._clock(),  # read at each use: tests replace _clock
            fast_transport=cfg.fast_transport,
            reuse_port=cfg.reuse_port,
            backlog=cfg.backlog,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.enable_encryption:
            return None
        assert cfg.ssl_certfile is not None and cfg.ssl_keyfile is not None
        # ssl's own errors name neither the option nor the file ("[SSL] PEM lib", a bare
        # FileNotFoundError): say which one is wrong.
        for option, path in (("ssl_certfile", cfg.ssl_certfile), ("ssl_keyfile", cfg.ssl_keyfile)):
            if not os.path.isfile(path):
                raise ConfigError(option, f"no such file: {path}")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                "ssl_certfile", f"cannot load {cfg.ssl_certfile} with key {cfg.ssl_keyfile}: "
                f"{getattr(exc, 'reason', None) or exc} (PEM certificate chain and its key?)"
            ) from exc
        return context

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
        if not self._started or self._closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._closing = True
        deadline = time.monotonic() + (
            self.config.shutdown_timeout if timeout is None else timeout
        )
        server = self._server
        if server is not None:
            server.close()
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
        for socket in list(self._open):
            socket._fail(CloseCode.GOING_AWAY, "server shutting down")
        wait_until = min(deadline, time.monotonic() + CLOSE_TIMEOUT + 0.5)
        while self._open and time.monotonic() < wait_until:
            await asyncio.sleep(0.01)
        for socket in list(self._open):
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

    async def _heartbeat(self) -> None:
        """Every ping_interval: close sockets that missed the last $pong, ping the rest."""
        interval, timeout = self.config.ping_interval, self.config.ping_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            value = int(time.monotonic() * 1000)
            now = time.monotonic()
            # A socket with a $ping still unanswered is not pinged again: the check scheduled
            # for that ping decides its fate.
            pinged = [s for s in self._sockets.values() if s._ping_value is None]
            for name in [n for n in self._room_limits if n not in self._registry]:
                del self._room_limits[name]  # the room emptied: forget its bucket
            for socket in pinged:
                socket._ping(value, now)
            loop.call_later(timeout, self._check_pongs, pinged, value)

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

    def _check_pongs(self, pinged: list[Socket], value: int) -> None:
        for socket in pinged:
            if socket.connected and socket._ping_overdue(value):
                socket._fail(CloseCode.HEARTBEAT_TIMEOUT, "no $pong in time")


def run(main: Any) -> None:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
