"""The Python client: events, acks both ways, automatic reconnect, offline buffer, heartbeat."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from smartsocket.acks import AckTracker
from smartsocket.backoff import backoff_delay
from smartsocket.client.events import EventHandlers
from smartsocket.client.link import Link, with_query
from smartsocket.client.positions import Positions
from smartsocket.client.tokens import GetToken, TokenKeeper
from smartsocket.compression import NegotiationError
from smartsocket.errors import ConnectionClosed, OfflineBufferFull, Unauthorized
from smartsocket.protocol import SUBPROTOCOL, envelope
from smartsocket.protocol.codes import NO_RECONNECT_CODES, CloseCode
from smartsocket.protocol.envelope import AckReply, EnvelopeError, Event, InvalidUTF8
from smartsocket.protocol.names import check_event
from smartsocket.transport import ClientConnection, HandshakeError, handshake_status
from smartsocket.transport import connect as ws_connect

logger = logging.getLogger("smartsocket.client")

# Events the client emits locally (never sent by the server under these names).
LOCAL_EVENTS = frozenset({"connect", "disconnect", "reconnecting", "reconnect_failed", "error"})


class Client:
    """A SmartSocket client. ``await Client(url).connect()`` or ``await connect(url)``.

    Local events: ``connect(recovered: bool)``, ``disconnect(exc: ConnectionClosed)``,
    ``reconnecting(attempt)``, ``reconnect_failed()``, ``error(info)`` (a ``$error`` from the
    server, as a dict). System events with a handler: ``$presence(change)``, ``$gap(info)``
    (``{"room": name}``: messages of that room may have been lost, e.g. the cluster's broker
    failed; refetch what the room shows: protocol.md section 8, "Gaps").

    On a server with recovery (``recovery_window``) a reconnect resumes the session
    (protocol.md section 8): same ``sid``, and the room and direct messages missed meanwhile
    arrive once, in order (``recovered`` is True); calls left unanswered by the drop are sent
    again with their idempotency key, so the server runs them once.

    ``get_token`` (a function, sync or async, returning a JWT): called before each connect
    (the token goes in ``Authorization: Bearer``) and ahead of the token's ``exp`` (with
    jitter: ``refresh_token``); after a close 4003 (expired) the reconnect gets a new one.
    """

    def __init__(
        self,
        url: str,
        *,
        reconnect: bool = True,
        reconnect_delay: float = 1.0,
        reconnect_delay_max: float = 30.0,
        randomization_factor: float = 0.5,
        max_reconnect_attempts: int | None = 10,
        ack_timeout: float = 30.0,
        max_buffered: int = 1000,
        connect_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        max_message_size: int | None = 16 << 20,
        compression: bool = True,
        get_token: GetToken | None = None,
        token_clock: Callable[[], float] = time.time,
        token_rng: random.Random | None = None,
    ) -> None:
        if reconnect_delay <= 0 or reconnect_delay_max < reconnect_delay:
            raise ValueError("need 0 < reconnect_delay <= reconnect_delay_max")
        if not 0 <= randomization_factor < 1:
            raise ValueError("randomization_factor must be in [0, 1)")
        self.url = url
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_delay_max = reconnect_delay_max
        self.randomization_factor = randomization_factor
        self.max_reconnect_attempts = max_reconnect_attempts
        self.ack_timeout = ack_timeout
        self.max_buffered = max_buffered
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
        self.ssl = ssl
        self.max_message_size = max_message_size
        self.compression = compression
        self.sid: str | None = None
        self.welcome: dict[str, Any] = {}
        self.latency: float | None = None  # last measured $ping round trip, seconds
        self.recovered = False  # the last (re)connect resumed the session (protocol.md 8)
        # Recovery: the last position seen per room (epoch, offset) and of direct messages.
        self._positions = Positions()
        self._unacked: dict[int, tuple[bytes, bool]] = {}  # calls sent, not answered yet
        self._events = EventHandlers()
        self._acks = AckTracker()
        self._conn: ClientConnection | None = None
        self._ready = False  # $welcome received on the current connection
        self._buffer: deque[tuple[bytes, bool, int | None]] = deque()  # (..., ack id of a call)
        self._closing = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._welcomed: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_seen = 0.0
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self._ping_seq = 0
        # JWT connection tokens (client/tokens.py): one before each connect, refreshed ahead
        # of expiry; checked every token_check_interval seconds against token_clock.
        self.tokens = (TokenKeeper(get_token, clock=token_clock, rng=token_rng)
                       if get_token is not None else None)
        self.token_check_interval = 1.0
        self._token_timer: asyncio.TimerHandle | None = None

    # public API

    @property
    def connected(self) -> bool:
        return self._ready

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """Handle ``event``: ``handler(data)``; its return value answers a server ``call``."""
        return self._events.on(event, handler)

    def off(self, event: str, handler: Callable[..., Any] | None = None) -> None:
        """Remove ``handler`` of ``event`` (all of them when ``handler`` is None)."""
        self._events.off(event, handler)

    def send(self, event: str, data: Any = None, *, binary: bool | None = None) -> None:
        """Send ``event``; while disconnected it waits in the offline buffer (bounded by
        ``max_buffered``: OfflineBufferFull when full) and goes out in order on reconnect."""
        check_event(event)
        if binary is None:
            binary = envelope.needs_binary(data)
        self._send_or_buffer(envelope.encode_event(event, data, binary=binary), binary)

    emit = send

    async def call(
        self, event: str, data: Any = None, *, timeout: float | None = None,
        binary: bool | None = None,
    ) -> Any:
        """Send ``event`` and wait for the server's ack reply.

        Raises AckTimeout, AckError (the server answered with an error) or ConnectionClosed
        (the connection dropped before the reply).
        """
        check_event(event)
        if binary is None:
            binary = envelope.needs_binary(data)
        ack_id, future = self._acks.create(event, self.ack_timeout if timeout is None else timeout)
        # With recovery the ack id (never reused by this client) is the idempotency key.
        key = ack_id if self.welcome.get("recovery") else None
        try:
            payload = envelope.encode_event(event, data, ack_id, binary=binary, meta=key)
            self._send_or_buffer(payload, binary, ack_id if key is not None else None)
        except BaseException:  # unencodable data, OfflineBufferFull, ...: nothing was sent
            self._acks.forget(ack_id)
            raise
        if key is not None:
            future.add_done_callback(lambda _: self._unacked.pop(ack_id, None))
        return await future

    async def ping(self, timeout: float = 5.0) -> float:
        """Measure the round trip to the server with ``$ping``/``$pong``, in seconds."""
        conn = self._conn
        if not self._ready or conn is None:
            raise ConnectionClosed(None, "not connected")
        self._ping_seq += 1
        seq = self._ping_seq
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[seq] = (time.monotonic(), future)
        conn.send_message(envelope.encode_event("$ping", seq))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pings.pop(seq, None)

    async def check_token(self) -> bool:
        """Refresh the connection token if it is due (a timer calls this every
        ``token_check_interval`` s; tests call it after moving ``token_clock``). True if a
        ``$refresh`` was made and accepted."""
        keeper = self.tokens
        if keeper is None or not keeper.is_due():
            return False
        return await self.refresh_token()

    async def refresh_token(self) -> bool:
        """Get a token from ``get_token`` and send it in ``$refresh`` now. On a failure the
        connection keeps its token (retried in 5 s; the server closes with 4003 when it
        expires, and the client reconnects with a fresh one)."""
        keeper, conn = self.tokens, self._conn
        if keeper is None or not self._ready or conn is None:
            return False
        try:
            token = await keeper.fetch()
            ack_id, future = self._acks.create("$refresh", self.ack_timeout)
            conn.send_message(envelope.encode_event("$refresh", {"token": token}, ack_id))
            await future
        except Exception as exc:  # get_token failed, or the server refused: try again soon
            logger.warning("token refresh failed: %s", exc)
            keeper.retry_later(5.0)
            return False
        keeper.refreshes += 1
        return True

    def _token_tick(self) -> None:
        self._token_timer = asyncio.get_running_loop().call_later(
            self.token_check_interval, self._token_tick)
        if self._ready and self.tokens is not None and self.tokens.is_due():
            self._events.spawn(self.check_token())

    async def connect(self) -> Client:
        """Connect and wait for the server's ``$welcome``; raises if the first attempt fails
        (later drops are handled by automatic reconnect)."""
        self._closing = False
        await self._open()
        return self

    async def close(self) -> None:
        """Close for good: no reconnect; pending calls fail with ConnectionClosed."""
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.close(CloseCode.NORMAL, "client closed")
            await self._wait_disconnected(conn)
        self._acks.fail_all(ConnectionClosed(CloseCode.NORMAL, "client closed"))
        self._events.cancel_tasks()

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # connection management

    async def _open(self, resume: bool = False) -> None:
        """One connection attempt; ``resume``: ask to resume the last session."""
        loop = asyncio.get_running_loop()
        self._welcomed = loop.create_future()
        link = Link(self._attach, self._on_message, self._on_close)
        url = with_query(self.url, "resume", "1") if resume else self.url
        headers = self.headers
        if self.tokens is not None:  # a fresh token for each connection (4003: expired)
            headers = {**headers, "Authorization": f"Bearer {await self.tokens.fetch()}"}
        try:
            conn = await ws_connect(
                url, link, subprotocol=SUBPROTOCOL, extra_headers=headers,
                ssl=self.ssl, max_message_size=self.max_message_size,
                timeout=self.connect_timeout, compression=self.compression,
            )
        except (HandshakeError, NegotiationError) as exc:
            if handshake_status(exc) == 401:
                raise Unauthorized(
                    "unauthorized", f"{self.url} refused the credentials (HTTP 401)"
                ) from exc
            raise ConnectionError(f"handshake with {self.url} failed: {exc}") from exc
        if conn.subprotocol != SUBPROTOCOL:
            conn.close(CloseCode.PROTOCOL_ERROR, "subprotocol not accepted")
            raise ConnectionError(f"{self.url} did not accept subprotocol {SUBPROTOCOL}")
        if resume:  # the server waits for this before its $welcome
            conn.send_message(envelope.encode_event("$resume", {
                "sid": self.sid, "token": self.welcome.get("token"),
                "offsets": self._positions.offsets(), "seq": self._positions.seq,
            }))
        try:
            await asyncio.wait_for(asyncio.shield(self._welcomed), self.connect_timeout)
        except TimeoutError:
            conn.abort()
            raise ConnectionError(f"no $welcome from {self.url}") from None

    async def _wait_disconnected(self, conn: ClientConnection) -> None:
        deadline = time.monotonic() + 3.0
        while not conn.disconnected and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def _on_welcome(self, link: Link, info: Any) -> None:
        if type(info) is not dict or type(info.get("sid")) is not str:
            logger.warning("invalid $welcome: %r", info)
            return
        self.welcome = info
        self.sid = info["sid"]
        self.recovered = info.get("recovered") is True
        if not self.recovered:  # a new session: positions of the old one mean nothing
            self._positions.reset()
        self._ready = True
        self._last_seen = time.monotonic()
        self._arm_watchdog()
        if self.tokens is not None and self._token_timer is None:
            self._token_timer = asyncio.get_running_loop().call_later(
                self.token_check_interval, self._token_tick)
        # "connect" handlers run first, so what they send (e.g. re-joining rooms) reaches the
        # server before the messages buffered while offline (the browser client does the same).
        self._events.emit_local("connect", self.recovered)
        conn = self._conn
        if conn is not None:
            for payload, binary in list(self._unacked.values()):  # left unanswered by a drop
                conn.send_message(payload, binary)
        while self._buffer and conn is not None and not conn.closed:
            payload, binary, ack_id = self._buffer.popleft()
            self._write(conn, payload, binary, ack_id)
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_result(None)

    def _on_auth_required(self, link: Link) -> None:
        """The server wants credentials and this client sent none it accepts (this client only
        presents them at the upgrade): fail ``connect()`` now, not after auth_timeout."""
        conn = self._conn
        if link.conn is not conn or conn is None or self._ready:
            return
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_exception(Unauthorized(
                "auth_required", f"{self.url} requires authentication: put the token in the "
                "URL (?token=...) or pass headers={'Authorization': 'Bearer ...'}",
            ))
            self._welcomed.exception()  # retrieved: _open reports it
        conn.close(CloseCode.NORMAL, "no credentials")

    def _on_close(self, link: Link, code: int, reason: str) -> None:
        if link.conn is not self._conn:
            return
        was_ready = self._ready
        self._ready = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._token_timer is not None:
            self._token_timer.cancel()
            self._token_timer = None
        closed = ConnectionClosed(code, reason)
        reconnect = (
            was_ready and self.reconnect and not self._closing and code not in NO_RECONNECT_CODES
        )
        if not (reconnect and self.welcome.get("recovery")):
            self._acks.fail_all(closed)  # with recovery they wait for the reconnect instead
        if self._welcomed is not None and not self._welcomed.done():
            error = (
                Unauthorized("unauthorized", f"{self.url} refused the credentials ({closed})")
                if code == CloseCode.UNAUTHORIZED
                else ConnectionError(f"closed before $welcome: {closed}")
            )
            self._welcomed.set_exception(error)
            self._welcomed.exception()  # retrieved: _open reports it
        if was_ready:
            self._events.emit_local("disconnect", closed)
        if reconnect:
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while not self._closing:
            attempt += 1
            if self.max_reconnect_attempts is not None and attempt > self.max_reconnect_attempts:
                logger.warning("giving up on %s after %d attempts", self.url, attempt - 1)
                self._acks.fail_all(ConnectionClosed(None, "reconnecting failed"))
                self._events.emit_local("reconnect_failed")
                return
            delay = backoff_delay(
                attempt, base=self.reconnect_delay, maximum=self.reconnect_delay_max,
                jitter=self.randomization_factor,
            )
            self._events.emit_local("reconnecting", attempt)
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._open(resume=bool(self.welcome.get("recovery")))
            except Unauthorized as exc:  # trying again cannot help: new credentials are needed
                logger.warning("giving up on %s: %s", self.url, exc)
                self._acks.fail_all(ConnectionClosed(CloseCode.UNAUTHORIZED, str(exc)))
                self._events.emit_local("reconnect_failed")
                return
            except (OSError, ConnectionError, TimeoutError) as exc:
                logger.info("reconnect attempt %d to %s failed: %s", attempt, self.url, exc)
                continue
            return

    # heartbeat: the server pings every pingInterval; silence longer than
    # pingInterval + pingTimeout means the server (or the path to it) is gone.

    def _arm_watchdog(self) -> None:
        interval = self.welcome.get("pingInterval", 25000) / 1000
        timeout = self.welcome.get("pingTimeout", 20000) / 1000
        limit = interval + timeout
        self._watchdog = asyncio.get_running_loop().call_later(limit, self._check_alive, limit)

    def _check_alive(self, limit: float) -> None:
        silent = time.monotonic() - self._last_seen
        conn = self._conn
        if conn is None or not self._ready:
            return
        if silent >= limit:
            logger.warning("no traffic from %s for %.1f s: reconnecting", self.url, silent)
            conn.abort()
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            limit - silent, self._check_alive, limit
        )

    # sending

    def _send_or_buffer(self, payload: bytes, binary: bool, ack_id: int | None = None) -> None:
        """Send now, or keep for after the reconnect; ``ack_id``: a call to send again if a
        drop leaves it unanswered (recovery)."""
        conn = self._conn
        if self._ready and conn is not None and not conn.closed:
            self._write(conn, payload, binary, ack_id)
            return
        if self._closing and self._reconnect_task is None:
            raise ConnectionClosed(CloseCode.NORMAL, "client is closed")
        if len(self._buffer) >= self.max_buffered:
            raise OfflineBufferFull(f"{self.max_buffered} messages already wait for reconnect")
        self._buffer.append((payload, binary, ack_id))

    def _write(
        self, conn: ClientConnection, payload: bytes, binary: bool, ack_id: int | None
    ) -> None:
        if ack_id is not None:
            self._unacked[ack_id] = (payload, binary)
        conn.send_message(payload, binary)

    # inbound

    def _attach(self, conn: ClientConnection) -> None:
        self._conn = conn

    def _on_message(self, link: Link, payload: bytes | memoryview, binary: bool) -> None:
        """A whole message from the server (already inflated)."""
        if link.conn is not self._conn:
            return  # from a connection a newer one replaced
        self._last_seen = time.monotonic()
        try:
            packet = envelope.decode(payload, binary=binary)
        except InvalidUTF8:
            link.close(CloseCode.INVALID_TEXT, "invalid UTF-8")
            return
        except EnvelopeError as exc:
            logger.warning("bad message from server: %s", exc)
            return
        if type(packet) is AckReply:
            if not self._acks.resolve_reply(packet):
                logger.debug("late or unknown ack %d", packet.ack_id)
            return
        assert type(packet) is Event
        name = packet.name
        if name[0] == "$":
            self._system_event(link, packet)
            return
        if packet.meta is not None and not self._positions.first_time(packet.meta):
            return  # replayed after a resume, and handled already
        self._events.dispatch(link, packet)

    def _system_event(self, link: Link, packet: Event) -> None:
        name = packet.name
        if name == "$welcome":
            self._on_welcome(link, packet.data)
        elif name == "$ping":
            try:
                link.send(envelope.encode_event("$pong", packet.data))
            except envelope.ENCODE_ERRORS:
                logger.warning("cannot echo a $ping from the server")
        elif name == "$pong":
            entry = self._pings.pop(packet.data, None) if type(packet.data) is int else None
            if entry is not None:
                self.latency = time.monotonic() - entry[0]
                if not entry[1].done():
                    entry[1].set_result(self.latency)
        elif name == "$auth_required":
            self._on_auth_required(link)
        elif name == "$error":
            logger.info("server reported an error: %r", packet.data)
            self._events.emit_local("error", packet.data)
        elif name == "$presence":  # {"room", "joined"|"left"|"updated": {"sid", "info", "user"?}}
            self._events.emit_local("$presence", packet.data)
        elif name == "$gap":  # {"room"}: messages of it may be lost (protocol.md 8, "Gaps")
            room = packet.data.get("room") if type(packet.data) is dict else None
            if type(room) is str:
                self._positions.forget(room)  # its next position may be any
                self._events.emit_local("$gap", packet.data)


async def connect(url: str, **options: Any) -> Client:
    """Create a ``Client`` with ``options`` and connect it."""
    return await Client(url, **options).connect()
