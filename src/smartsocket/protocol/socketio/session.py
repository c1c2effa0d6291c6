"""One Engine.IO session as a sans-I/O state machine: handshake, heartbeat, polling buffer,
upgrade to WebSocket, close. The I/O layer feeds it requests and frames and performs the
actions it returns; time comes from an injected clock (seconds, monotonic).

Spec: socket.io/docs/v4/engine-io-protocol ("Heartbeat", "Upgrade", "HTTP long-polling").

- Heartbeat (v4): the server sends a ping every ``ping_interval``; no pong within
  ``ping_timeout`` closes the session ("ping timeout"). v3 turns it around: the client pings,
  the server answers pong, and ``ping_interval + ping_timeout`` of silence closes the session.
  A ping in the wrong direction is a transport error (the reference: "invalid heartbeat
  direction").
- Polling: at most one GET is held; it is answered when packets are queued (the next ping
  guarantees one within ``ping_interval``). A GET drains the whole buffer. A POST body over
  ``max_payload`` is refused (413) and closes the session, as does a second concurrent GET.
- Upgrade: a WebSocket with the sid opens (``probe_opened``); it sends "2probe", the server
  answers "3probe" on it and a noop on the pending GET so the client can pause polling; the
  client sends "5" on the WebSocket, the buffer moves to it, and polling ends. No "5" within
  ``upgrade_timeout`` closes the probe and polling continues.
- Connect timeout: the Socket.IO layer calls ``socketio_connected()`` on the first CONNECT
  it accepts; without one within ``connect_timeout`` the session closes.
- Close: a polling close waits for the next GET to carry the close packet (at most
  ``ping_timeout``), so a DISCONNECT queued before it reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from smartsocket.protocol.socketio.engineio import (
    CLOSE_FRAME,
    NOOP_FRAME,
    PING_FRAME,
    PONG_FRAME,
    PROBE,
    PROBE_PONG_FRAME,
    Handshake,
    OutFrame,
    Packet,
    PacketType,
    decode_binary,
    decode_payload,
    decode_payload_v3,
    decode_text,
    encode_payload,
    encode_payload_v3,
    text_frame,
)
from smartsocket.protocol.socketio.errors import (
    EngineIOError,
    PacketError,
    PayloadTooLarge,
    PollingConflict,
    UnknownSession,
    UpgradeRefused,
)

logger = logging.getLogger("smartsocket.socketio")

POLLING: Final = "polling"
WEBSOCKET: Final = "websocket"


class CloseReason(StrEnum):
    """Why a session ended (Socket.IO's disconnect reasons where one exists)."""

    PING_TIMEOUT = "ping timeout"
    TRANSPORT_CLOSE = "transport close"  # the client sent close or dropped the connection
    TRANSPORT_ERROR = "transport error"  # the client broke a transport rule
    PARSE_ERROR = "parse error"  # malformed packet
    FORCED_CLOSE = "forced close"  # the server closed it
    CONNECT_TIMEOUT = "connect timeout"  # no Socket.IO CONNECT in time
    SLOW_CONSUMER = "slow consumer"  # a polling client left more than max_buffered unread


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Server options under their Socket.IO names; times in seconds, sizes in bytes."""

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000  # Socket.IO's maxHttpBufferSize
    upgrade_timeout: float = 10.0
    connect_timeout: float = 45.0
    max_packets_per_post: int = 1_000
    # Bytes a polling client may leave unread before the session is dropped (DESIGN.md:
    # slow consumers are bounded); None: no limit. WebSocket sessions hold no buffer here.
    max_buffered: int | None = 10_000_000
    upgrades: tuple[str, ...] = (WEBSOCKET,)


# -- actions for the I/O layer ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message from the client for the Socket.IO layer (str: text; bytes: binary)."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class WriteWebSocket:
    """Write these frames on the session's WebSocket (see ``websocket_payload``)."""

    frames: tuple[OutFrame, ...]


@dataclass(frozen=True, slots=True)
class WriteProbe:
    """Write these frames on the probing WebSocket (not yet the session's transport)."""

    frames: tuple[OutFrame, ...]


@dataclass(frozen=True, slots=True)
class AnswerPoll:
    """Complete the pending GET with 200, ``body`` and ``content_type``."""

    body: bytes
    content_type: str = "text/plain; charset=UTF-8"


@dataclass(frozen=True, slots=True)
class CloseProbe:
    """The upgrade failed: close the probing WebSocket; the session stays on polling."""


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The probing WebSocket is now the session's transport; polling is over."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: close its WebSocket (after writing what was returned before),
    forget the sid, tell the application ``reason``."""

    reason: CloseReason


Action = Deliver | WriteWebSocket | WriteProbe | AnswerPoll | CloseProbe | Upgraded | Closed


class State(Enum):
    OPEN = "open"
    CLOSING = "closing"  # polling: the close packet waits for the next GET
    CLOSED = "closed"


# State.OPEN, for the per-message checks: on Python 3.11 every attribute of an Enum class is
# looked up through EnumMeta.__getattr__ (~1,000 instructions), a module global is not.
OPEN: Final = State.OPEN


class EngineSession:
    """The state of one Engine.IO session; every method returns the actions to perform."""

    __slots__ = (
        "_buffer", "_buffered", "_clock", "_close_reason", "_closing_deadline", "_connect_deadline",
        "_get_pending", "_last_seen", "_next_ping", "_options", "_pong_deadline",
        "_probe", "_upgrade_deadline", "eio", "sid", "state", "transport",
    )

    def __init__(
        self,
        sid: str,
        *,
        transport: str,
        options: EngineOptions,
        clock: Callable[[], float],
        eio: int = 4,
    ) -> None:
        if transport not in (POLLING, WEBSOCKET):
            raise ValueError(f"unknown transport {transport!r}")
        self.sid = sid
        self.eio = eio
        self.transport = transport
        self.state = State.OPEN
        self._options = options
        self._clock = clock
        now = clock()
        self._buffer: list[OutFrame] = []
        self._buffered = 0
        self._get_pending = False
        self._probe = False  # a WebSocket probe is open (None of its packets seen yet)
        self._upgrade_deadline: float | None = None
        self._next_ping = now + options.ping_interval
        self._pong_deadline: float | None = None
        self._last_seen = now
        self._connect_deadline: float | None = now + options.connect_timeout
        self._closing_deadline: float | None = None
        self._close_reason = CloseReason.FORCED_CLOSE

    # -- handshake and sending ---------------------------------------------------------

    def handshake(self) -> Handshake:
        o = self._options
        upgrades = o.upgrades if self.transport == POLLING else ()
        return Handshake(
            self.sid, upgrades, round(o.ping_interval * 1000), round(o.ping_timeout * 1000),
            o.max_payload,
        )

    def open(self) -> list[Action]:
        """Sends the open packet (first response of a polling handshake, first WS frame)."""
        return self.send((self.handshake().encode(self.eio),))

    def send(self, frames: Iterable[OutFrame]) -> list[Action]:
        """Queues frames for the client: written at once on WebSocket, buffered on polling
        (and answered at once if a GET is pending)."""
        if self.state is not State.OPEN:
            return []
        if self.transport == WEBSOCKET:
            return [WriteWebSocket(tuple(frames))]
        for frame in frames:
            self._buffer.append(frame)
            self._buffered += len(frame.payload)
        limit = self._options.max_buffered
        if limit is not None and self._buffered > limit and not self._get_pending:
            logger.info("session %s: %d bytes unread, dropped", self.sid, self._buffered)
            return self._finish(CloseReason.SLOW_CONSUMER)
        return self._flush_poll()

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting for a GET (count them against the connection's budget)."""
        return self._buffered

    @property
    def get_pending(self) -> bool:
        """A polling GET is held, waiting for something to send."""
        return self._get_pending

    def socketio_connected(self) -> None:
        """The client connected to a namespace: the connect timeout no longer applies."""
        self._connect_deadline = None

    # -- polling -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state is State.CLOSED:
            raise UnknownSession("session closed")

    def _flush_poll(self) -> list[Action]:
        if not self._get_pending or not self._buffer:
            return []
        frames, self._buffer, self._buffered = self._buffer, [], 0
        self._get_pending = False
        body = encode_payload(frames) if self.eio >= 4 else encode_payload_v3(frames)
        actions: list[Action] = [AnswerPoll(body)]
        if self.state is State.CLOSING:  # the close packet went out: the session is over
            actions += self._finish(self._close_reason)
        return actions

    def get(self) -> list[Action]:
        """A polling GET arrived. Returns ``AnswerPoll`` now, or nothing: hold the request
        until a later action answers it. Raises (answer with ``status``) otherwise."""
        self._check_open()
        if self.transport != POLLING:
            raise PacketError("polling request on an upgraded session")
        if self._get_pending:
            # Spec: a second concurrent GET is an error and ends the session.
            error = PollingConflict("overlapping GET")
            error.actions = tuple(self._finish(CloseReason.TRANSPORT_ERROR))
            raise error
        self._get_pending = True
        if self._probe and not self._buffer:
            # Upgrading: the client is pausing polling; do not hold its GET.
            self._buffer.append(NOOP_FRAME)
        return self._flush_poll()

    def get_aborted(self) -> list[Action]:
        """The pending GET's connection dropped before an answer: the transport is gone."""
        if self.state is State.CLOSED or not self._get_pending:
            return []
        self._get_pending = False
        return self._finish(CloseReason.TRANSPORT_ERROR)

    def post(self, body: bytes) -> list[Action]:
        """A polling POST body (answer it with 200 "ok" unless this raises)."""
        self._check_open()
        if self.transport != POLLING:
            raise PacketError("polling request on an upgraded session")
        if self.state is State.CLOSING:
            return []  # the server is closing: what the client says now is not delivered
        if len(body) > self._options.max_payload:
            error: EngineIOError = PayloadTooLarge(f"POST body of {len(body)} bytes")
            error.actions = tuple(self._finish(CloseReason.TRANSPORT_ERROR))
            raise error
        limit = self._options.max_packets_per_post
        try:
            if self.eio >= 4:
                packets = decode_payload(body, max_packets=limit)
            else:
                packets = decode_payload_v3(body, max_packets=limit)
        except PacketError as error:
            error.actions = tuple(self._finish(CloseReason.PARSE_ERROR))
            raise
        actions: list[Action] = []
        for packet in packets:
            actions += self._on_packet(packet)
            if self.state is State.CLOSED:
                break
        return actions

    # -- WebSocket -----------------------------------------------------------------------

    def receive(self, data: str | bytes) -> list[Action]:
        """A frame on the session's WebSocket (the transport, not a probe)."""
        self._check_open()
        try:
            packet = decode_text(data) if isinstance(data, str) else decode_binary(data, self.eio)
        except PacketError:
            return self._finish(CloseReason.PARSE_ERROR)
        return self._on_packet(packet)

    def is_message(self, data: str) -> bool:
        """The fast path of ``receive`` for its common frame, a text MESSAGE ("4..."): True
        when ``data`` is one on an open session, its data (``data[1:]``) to hand to the
        Socket.IO layer as ``Deliver`` would (False: any other frame, or a session not open:
        call ``receive``). No action list, no ``Packet``, no slice."""
        if not data or data[0] != "4" or self.state is not OPEN:
            return False
        if self.eio < 4:  # v3: any packet keeps the session alive
            self._last_seen = self._clock()
        return True

    def connection_lost(self) -> list[Action]:
        """The WebSocket transport closed (or failed) under the session."""
        if self.state is State.CLOSED:
            return []
        return self._finish(CloseReason.TRANSPORT_CLOSE)

    def probe_opened(self) -> list[Action]:
        """A WebSocket with this sid opened to upgrade a polling session."""
        self._check_open()
        if self.transport != POLLING or self._probe or WEBSOCKET not in self._options.upgrades:
            raise UpgradeRefused("session cannot be upgraded now")
        self._probe = True
        self._upgrade_deadline = self._clock() + self._options.upgrade_timeout
        return []

    def receive_probe(self, data: str | bytes) -> list[Action]:
        """A frame on the probing WebSocket: "2probe", then "5"; anything else fails it."""
        if self.state is not State.OPEN or not self._probe:
            return [CloseProbe()]
        if data == "2" + PROBE:
            actions: list[Action] = [WriteProbe((PROBE_PONG_FRAME,))]
            if self._get_pending and not self._buffer:
                # Spec "Upgrade": a noop lets the pending GET end, so the client can pause.
                self._buffer.append(NOOP_FRAME)
            return actions + self._flush_poll()
        if data == "5":
            return self._upgrade()
        return self._fail_upgrade()

    def probe_lost(self) -> list[Action]:
        """The probing WebSocket closed before the upgrade completed."""
        if self._probe:
            self._probe = False
            self._upgrade_deadline = None
        return []

    def _upgrade(self) -> list[Action]:
        self._probe = False
        self._upgrade_deadline = None
        self.transport = WEBSOCKET
        # No GET can be held here: while probing, a GET is answered at once (noop if idle).
        actions: list[Action] = [Upgraded()]
        frames = [f for f in self._buffer if f is not NOOP_FRAME]
        self._buffer, self._buffered = [], 0
        if frames:
            actions.append(WriteWebSocket(tuple(frames)))
        logger.debug("session %s upgraded to websocket", self.sid)
        return actions

    def _fail_upgrade(self) -> list[Action]:
        self._probe = False
        self._upgrade_deadline = None
        self._buffer = [f for f in self._buffer if f is not NOOP_FRAME]
        return [CloseProbe()]

    # -- packets -------------------------------------------------------------------------

    def _on_packet(self, packet: Packet) -> list[Action]:
        self._last_seen = self._clock()
        kind = packet.type
        if kind is PacketType.MESSAGE:
            return [Deliver(packet.data)]
        if kind is PacketType.PONG and self.eio >= 4:
            self._pong_deadline = None
            self._next_ping = self._last_seen + self._options.ping_interval
            return []
        if kind is PacketType.PING and self.eio < 4:
            pong = text_frame(PacketType.PONG, packet.data) if packet.data else PONG_FRAME
            return self.send((pong,))
        if kind is PacketType.CLOSE:
            return self._finish(CloseReason.TRANSPORT_CLOSE)
        if kind in (PacketType.PING, PacketType.PONG):
            # The reference server: "invalid heartbeat direction" is a transport error.
            return self._finish(CloseReason.TRANSPORT_ERROR)
        return []  # noop, and open/upgrade on the transport: ignored, as the reference does

    # -- time ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do next (None: the session is closed)."""
        if self.state is State.CLOSED:
            return None
        times = [
            t
            for t in (
                self._connect_deadline, self._upgrade_deadline, self._closing_deadline,
                self._heartbeat_deadline(),
            )
            if t is not None
        ]
        return min(times)

    def _heartbeat_deadline(self) -> float:
        o = self._options
        if self.eio < 4:
            return self._last_seen + o.ping_interval + o.ping_timeout
        return self._pong_deadline if self._pong_deadline is not None else self._next_ping

    def tick(self) -> list[Action]:
        """Runs what is due at the clock's time: pings, timeouts."""
        if self.state is State.CLOSED:
            return []
        now = self._clock()
        if self.state is State.CLOSING:
            # The close packet waited long enough for a GET to carry it.
            deadline = self._closing_deadline
            due = deadline is not None and now >= deadline
            return self._finish(self._close_reason) if due else []
        if self._connect_deadline is not None and now >= self._connect_deadline:
            return self.close(CloseReason.CONNECT_TIMEOUT)
        actions: list[Action] = []
        if self._upgrade_deadline is not None and now >= self._upgrade_deadline:
            actions += self._fail_upgrade()
        if now >= self._heartbeat_deadline():
            if self.eio < 4 or self._pong_deadline is not None:
                return actions + self._finish(CloseReason.PING_TIMEOUT)
            self._pong_deadline = now + self._options.ping_timeout
            actions += self.send((PING_FRAME,))
        return actions

    # -- close ---------------------------------------------------------------------------

    def close(self, reason: CloseReason = CloseReason.FORCED_CLOSE) -> list[Action]:
        """The server closes the session; frames sent before still reach the client."""
        if self.state is not State.OPEN:
            return []
        if self.transport == WEBSOCKET:
            return self._finish(reason)
        self._buffer.append(CLOSE_FRAME)
        self._buffered += len(CLOSE_FRAME.payload)
        self.state = State.CLOSING
        self._close_reason = reason
        self._closing_deadline = self._clock() + self._options.ping_timeout
        return self._flush_poll()

    def _finish(self, reason: CloseReason) -> list[Action]:
        actions: list[Action] = []
        if self._get_pending:  # a held GET ends with the close packet (the client stops)
            self._get_pending = False
            actions.append(AnswerPoll(CLOSE_FRAME.payload))
        self.state = State.CLOSED
        self._buffer, self._buffered = [], 0
        self._probe = False
        self._upgrade_deadline = self._connect_deadline = self._closing_deadline = None
        logger.debug("session %s closed: %s", self.sid, reason.value)
        actions.append(Closed(reason))
        return actions


__all__ = [
    "POLLING",
    "WEBSOCKET",
    "Action",
    "AnswerPoll",
    "CloseProbe",
    "CloseReason",
    "Closed",
    "Deliver",
    "EngineOptions",
    "EngineSession",
    "State",
    "Upgraded",
    "WriteProbe",
    "WriteWebSocket",
]
