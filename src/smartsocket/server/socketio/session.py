"""One Socket.IO client on the server: the I/O side of the sans-I/O core.

``ClientSession`` drives the client's ``EngineSession`` (heartbeat, buffer, upgrade, close)
and ``SocketIOConnection`` (namespaces, packets) from its transport (a WebSocket, polling
requests, a probe), performs the actions they return, and owns one ``SocketIOSocket`` per
namespace the client connected to, each with a ``NamespaceLink`` as its connection: what the
socket sends goes out as Socket.IO packets, and a close becomes a CONNECT_ERROR (before
admission) or a DISCONNECT.

Admission is the native one: ``open_socket`` (shutting down, ``max_connections``, origin,
credentials from the ``Authorization`` header or the query) when CONNECT arrives, then the
socket opens (per-IP limit, hooks) and, unless already authenticated, the CONNECT auth
payload goes through the ``$auth`` path. The ``$welcome`` that admission ends with answers the
CONNECT. The state a later node or a resumed connection would need (sid, namespaces joined)
is reachable by sid from the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from smartsocket.protocol.codes import NO_RECONNECT_CODES, CloseCode
from smartsocket.protocol.socketio import (
    AckReceived,
    Action,
    AnswerPoll,
    Closed,
    CloseProbe,
    CloseReason,
    ConnectRequested,
    Deliver,
    EncodedPacket,
    EngineSession,
    EventReceived,
    NamespaceLeft,
    OutFrame,
    SocketIOConnection,
    SocketIOPacketError,
    Upgraded,
    WriteProbe,
    WriteWebSocket,
    websocket_payload,
)
from smartsocket.protocol.socketio.session import OPEN, WEBSOCKET, State
from smartsocket.protocol.socketio.socketio import DEFAULT_NAMESPACE
from smartsocket.recovery.marks import ResumePoint, pid_of
from smartsocket.server.socketio.budget import Charge, SessionBudget
from smartsocket.server.socketio.link import NamespaceLink
from smartsocket.server.socketio.socket import FrameTranslator, SocketIOSocket
from smartsocket.transport import HandshakeRequest, HttpResponse, build_frame

if TYPE_CHECKING:
    from smartsocket.server.socketio.deadlines import Deadlines
    from smartsocket.server.socketio.namespace import Namespace
    from smartsocket.transport import ServerConnection

logger = logging.getLogger("smartsocket.socketio")


class SessionHost(Protocol):
    """What a session asks of its endpoint (one reference per session, not a bound method
    per callback: an idle session's memory counts)."""

    namespaces: dict[str, Namespace]  # the application's own, by name
    deadlines: Deadlines  # the sessions' one timer

    def open_socket_for(self, request: HandshakeRequest) -> HttpResponse | SocketIOSocket:
        """Admission for a CONNECT: the socket, or the HTTP refusal."""

    def claim(self, sid: str, remote: Any) -> bool:
        """Counts the session against its address's limit (False: over it)."""

    def count(self, sid: str, remote: Any, counted: bool) -> None:
        """Whether the session counts as a connection itself (True while it has no socket)."""

    def forget(self, sid: str) -> None:
        """The session is over."""

# What the application's "disconnect" handlers and close codes see for each session end.
_CLOSE_CODES: dict[CloseReason, int] = {
    CloseReason.PING_TIMEOUT: CloseCode.HEARTBEAT_TIMEOUT,
    CloseReason.TRANSPORT_CLOSE: CloseCode.GOING_AWAY,
    CloseReason.TRANSPORT_ERROR: CloseCode.PROTOCOL_ERROR,
    CloseReason.PARSE_ERROR: CloseCode.PROTOCOL_ERROR,
    CloseReason.FORCED_CLOSE: CloseCode.NORMAL,
    CloseReason.CONNECT_TIMEOUT: CloseCode.NORMAL,
    CloseReason.SLOW_CONSUMER: CloseCode.SLOW_CONSUMER,
}


def _refusal(status: int, body: bytes) -> str:
    """The CONNECT_ERROR message for an HTTP refusal of ``open_socket``."""
    return body.decode(errors="replace").strip() or f"refused ({status})"


class Counters:
    """Plain counters of the Socket.IO side (read by stats and /metrics)."""

    __slots__ = ("connect_errors", "packets_in", "packets_out", "sessions_total")

    def __init__(self) -> None:
        self.sessions_total = 0  # Engine.IO sessions opened
        self.packets_in = 0  # Engine.IO messages received (Socket.IO packets and attachments)
        self.packets_out = 0  # Socket.IO packets sent (one per receiver)
        self.connect_errors = 0  # CONNECTs refused (CONNECT_ERROR)


class ClientSession:
    """A Socket.IO client: its sessions' state, its socket, and its WebSocket."""

    __slots__ = (
        "_budget",
        "_deadline",
        "_host",
        "_poll",
        "_probe",
        "_refusals",
        "_remote",
        "_translator",
        "_ws",
        "_ws_close",
        "counters",
        "engine",
        "links",
        "offsets",
        "request",
        "sio",
    )

    def __init__(
        self, engine: EngineSession, sio: SocketIOConnection, request: HandshakeRequest, *,
        host: SessionHost, translator: FrameTranslator, counters: Counters,
        offsets: bool = False, max_refusals: int = 10, budget: SessionBudget | None = None,
    ) -> None:
        # Rate limits of what no socket's own limits charge (budget.py); None: none.
        self._budget = budget
        # Events carry their position's offset, CONNECT answers a pid (connection-state
        # recovery; Socket.IO v5 only): recovery/marks.py.
        self.offsets = offsets
        # Admission, the address tallies (a session without a socket is a connection of its
        # own; with one, its sockets are), namespaces, the deadline timer: the endpoint's.
        self._host = host
        self.counters = counters
        self.engine = engine
        self.sio = sio
        self.request = request
        self.links: dict[str, NamespaceLink] = {}  # by namespace: its socket
        self._translator = translator
        self._ws: ServerConnection | None = None
        self._remote: tuple[Any, ...] | None = None  # kept after the transport closes
        self._poll: asyncio.Future[AnswerPoll] | None = None  # the held polling GET
        self._probe: ServerConnection | None = None  # a WebSocket upgrading a polling session
        self._ws_close: tuple[int, str] | None = None
        self._deadline: float | None = None  # armed with the host's deadlines
        # CONNECT_ERRORs left before the session ends (socketio_max_connect_refusals): each
        # CONNECT is a try of the client's credentials, and one POST carries 1,000 of them.
        self._refusals = max_refusals

    @property
    def sid(self) -> str:
        return self.engine.sid

    # -- the WebSocket transport ---------------------------------------------------------

    def websocket_opened(self, conn: ServerConnection) -> None:
        if not self._host.claim(self.sid, conn.remote_address):
            self._host.forget(self.sid)
            conn.close(CloseCode.TRY_AGAIN_LATER, "too many connections from your address")
            return
        self._ws = conn
        self._remote = conn.remote_address
        self.perform(self.engine.open())
        if self.sio.protocol < 5:
            # Socket.IO v4 (Engine.IO v3) clients are in "/" from the start, with no CONNECT:
            # admission runs now, on the handshake's headers and query.
            self._connect(DEFAULT_NAMESPACE, {})

    def websocket_message(
        self, payload: bytes | memoryview, binary: bool, wire_size: int = 0
    ) -> None:
        """A message on the session's WebSocket (``wire_size``: the transport's, unused)."""
        if binary:
            if self._charged(len(payload)):  # attachments: the socket charges their packet
                self.perform(self.engine.receive(bytes(payload)))
            return
        text = str(payload, "utf-8")
        if not self.engine.is_message(text):
            if self._charged(len(payload)):  # not a message: no socket charges it
                self.perform(self.engine.receive(text))
            return
        if not self.links and not self._charged(len(payload)):  # before any socket
            return
        # The common frame, a MESSAGE (no actions to perform) holding an EVENT or ACK in "/":
        # decoded from the Engine.IO text as it is, straight to the socket.
        plain = self.sio.receive_plain(text, 1)
        if plain is None:
            self._packet(text[1:])
        else:  # _plain, inline
            self.counters.packets_in += 1
            link = self.links.get(DEFAULT_NAMESPACE)
            socket = link.socket if link is not None else None
            if socket is None:
                pass
            elif isinstance(plain, EventReceived):
                socket.receive_event(plain.name, plain.data, plain.ack_id, len(text) - 1)
            else:
                socket.receive_ack(plain.ack_id, plain.data, len(text) - 1)
        if self._deadline is None:
            self._schedule()

    def websocket_closed(self, code: int, reason: str) -> None:
        self._ws_close = (code, reason)
        self._ws = None
        self.perform(self.engine.connection_lost())

    # -- HTTP long-polling and the upgrade (server/socketio/polling.py) ---------------------

    def polling_opened(self, remote: tuple[Any, ...] | None) -> None:
        self._remote = remote
        self.perform(self.engine.open())
        if self.sio.protocol < 5:
            self._connect(DEFAULT_NAMESPACE, {})

    def polling_get(self) -> asyncio.Future[AnswerPoll]:
        """A GET: its answer, now or when there is something to send. Raises EngineIOError
        (perform its ``actions`` and answer its status)."""
        future: asyncio.Future[AnswerPoll] = asyncio.get_running_loop().create_future()
        actions = self.engine.get()  # raises before the future is ours to answer
        self._poll = future
        self.perform(actions)
        return future

    def polling_aborted(self, future: asyncio.Future[AnswerPoll]) -> None:
        """The held GET's client went away before its answer."""
        if self._poll is future:
            self._poll = None
            self.perform(self.engine.get_aborted())

    def polling_post(self, body: bytes) -> bool:
        """A POST body (raises EngineIOError: perform its ``actions``, answer its status).
        False: over the session's rates, not read (answer 429)."""
        if not self._charged(len(body)):
            return False
        self.perform(self.engine.post(body))
        return True

    def _charged(self, size: int) -> bool:
        """Charges one message the sockets' limits do not see (False: drop it; refused too
        often, the session ends: its sockets see 4008)."""
        budget = self._budget
        if budget is None:
            return True
        charge = budget.charge(size)
        if charge is Charge.OK:
            return True
        if charge is Charge.ABUSE and self.engine.state is OPEN:
            logger.info("session %s: rate limit abuse, closed", self.sid,
                        extra={"event": "limit", "limit": "rate"})
            self._drop_all(CloseCode.RATE_LIMITED, "rate limit abuse")
            self.perform(self.engine.close(CloseReason.FORCED_CLOSE))
        return False

    def probe_opened(self, conn: ServerConnection) -> None:
        """A WebSocket to upgrade to. Raises EngineIOError (close ``conn``) when the session
        cannot take it now: the probe it has stays the one (taking the new one first would
        orphan the old, open for good outside every timeout)."""
        actions = self.engine.probe_opened()
        self._probe = conn
        self.perform(actions)
        self._schedule()  # the upgrade timeout may come before the armed deadline

    def probe_message(self, conn: ServerConnection, payload: bytes | memoryview,
                      binary: bool) -> None:
        if conn is self._ws:  # upgraded: it is the transport now
            self.websocket_message(payload, binary)
            return
        if conn is not self._probe:  # a failed probe's last words: it is closing
            conn.close(CloseCode.POLICY_VIOLATION, "cannot upgrade this session")
            return
        data: str | bytes = bytes(payload) if binary else bytes(payload).decode()
        self.perform(self.engine.receive_probe(data))

    def probe_closed(self, conn: ServerConnection, code: int, reason: str) -> None:
        if conn is self._ws:
            self.websocket_closed(code, reason)
        elif conn is self._probe:
            self._probe = None
            self.perform(self.engine.probe_lost())

    # -- actions -------------------------------------------------------------------------

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if type(action) is WriteWebSocket:
                ws = self._ws
                if ws is not None:
                    eio = self.engine.eio
                    for frame in action.frames:
                        ws.send_message(websocket_payload(frame, eio), frame.binary)
            elif type(action) is Deliver:
                self._deliver(action.data)
            elif type(action) is AnswerPoll:
                poll, self._poll = self._poll, None
                if poll is not None and not poll.done():
                    poll.set_result(action)
            elif type(action) is WriteProbe:
                if self._probe is not None:
                    for frame in action.frames:
                        self._probe.send_message(frame.payload, frame.binary)
            elif type(action) is Upgraded:
                self._ws, self._probe = self._probe, None
            elif type(action) is CloseProbe:
                probe, self._probe = self._probe, None
                if probe is not None:
                    probe.close(CloseCode.NORMAL)
            elif type(action) is Closed:
                if action.reason is CloseReason.SLOW_CONSUMER:
                    # Found while sending, maybe amid a room's fan-out: the socket leaves its
                    # rooms once that is over (a native socket is dropped at its flush too).
                    asyncio.get_running_loop().call_soon(self._closed, action.reason)
                else:
                    self._closed(action.reason)
        if self._deadline is None:
            self._schedule()

    def _schedule(self) -> None:
        """Arms the session's next deadline. Deadlines that move later (a pong, any packet
        for v3, a CONNECT) are left to the armed one: it comes, ``tick`` finds nothing due
        and the next is armed; only what moves a deadline earlier (open, tick, a probe, a
        close) arms at once (the later entry is skipped when it comes: deadlines.py)."""
        deadline = self.engine.next_deadline()
        if deadline == self._deadline:
            return
        self._deadline = deadline
        if deadline is not None:
            self._host.deadlines.arm(self.sid, deadline)

    def deadline_due(self, deadline: float) -> None:
        if deadline != self._deadline:
            return  # a deadline since moved earlier, or ended
        self._deadline = None
        self.perform(self.engine.tick())

    def _closed(self, reason: CloseReason) -> None:
        self._deadline = None
        self._host.forget(self.sid)
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.close(CloseCode.GOING_AWAY)
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close(CloseCode.NORMAL if reason is CloseReason.FORCED_CLOSE
                     else CloseCode.GOING_AWAY)
        code, text = _CLOSE_CODES[reason], reason.value
        if reason is CloseReason.TRANSPORT_CLOSE and self._ws_close is not None:
            # A client that leaves sends DISCONNECT first: a transport closed even cleanly
            # (1000) is a drop it reconnects from (its session is held for recovery).
            code = self._ws_close[0] if self._ws_close[0] not in (0, CloseCode.NORMAL) else code
        self._drop_all(code, text)

    # -- Socket.IO packets ---------------------------------------------------------------

    def _deliver(self, data: str | bytes) -> None:
        if type(data) is str:
            plain = self.sio.receive_plain(data)  # an EVENT or ACK in "/": no list, no packet
            if plain is not None:
                self._plain(plain, len(data))
                return
        self._packet(data)

    def _plain(self, plain: EventReceived | AckReceived, size: int) -> None:
        """An EVENT or ACK in "/" (``receive_plain``), ``size`` characters long."""
        self.counters.packets_in += 1
        link = self.links.get(DEFAULT_NAMESPACE)
        socket = link.socket if link is not None else None
        if socket is None:
            return
        if isinstance(plain, EventReceived):
            socket.receive_event(plain.name, plain.data, plain.ack_id, size)
        else:
            socket.receive_ack(plain.ack_id, plain.data, size)

    def _packet(self, data: str | bytes) -> None:
        """Any Engine.IO message's data: the generic path, which decodes it or closes the
        session on what is wrong."""
        self.counters.packets_in += 1
        try:
            events = self.sio.receive(data)
        except SocketIOPacketError as exc:
            logger.info("session %s: %s", self.sid, exc)
            self.perform(self.engine.close(CloseReason.PARSE_ERROR))
            return
        size = len(data)
        for event in events:
            if type(event) is EventReceived:
                socket = self._socket_in(event.namespace)
                if socket is not None:
                    socket.receive_event(event.name, event.data, event.ack_id, size)
            elif type(event) is AckReceived:
                socket = self._socket_in(event.namespace)
                if socket is not None:
                    socket.receive_ack(event.ack_id, event.data, size)
            elif type(event) is ConnectRequested:
                self._connect(event.request.namespace, event.request.auth,
                              event.request.pid, event.request.offset)
            elif type(event) is NamespaceLeft:
                link = self.links.pop(event.namespace, None)
                if link is not None:
                    link.drop(CloseCode.NORMAL, "client namespace disconnect")
                    self._recount()

    def _socket_in(self, namespace: str) -> SocketIOSocket | None:
        link = self.links.get(namespace)
        return link.socket if link is not None else None

    def _connect(
        self, namespace: str, auth: dict[str, Any], pid: str | None = None,
        offset: str | None = None,
    ) -> None:
        if self._refusals <= 0 or (self.links and not self._charged(0)):
            # Refused too often: the session is closing, later CONNECTs are not read. A
            # CONNECT next to a socket is charged here (one before any is charged already).
            return
        scope = None
        if namespace != DEFAULT_NAMESPACE:
            scope = self._host.namespaces.get(namespace)
            if scope is None:
                self._refuse(namespace, "Invalid namespace")
                return
        if namespace in self.links:
            return  # v4 clients may CONNECT to "/" they were put in: nothing to do
        self._host.count(self.sid, self._remote, False)  # the socket takes the session's place
        try:
            self._open(namespace, scope, auth, pid, offset)
        finally:
            self._recount()

    def _open(
        self, namespace: str, scope: Namespace | None, auth: dict[str, Any], pid: str | None,
        offset: str | None,
    ) -> None:
        result = self._host.open_socket_for(self.request)
        if isinstance(result, HttpResponse):
            self._refuse(namespace, _refusal(result.status, result.body))
            return
        link = self.links[namespace] = NamespaceLink(self, namespace, result)
        result.bind(link, namespace, scope)
        if self.offsets and pid is not None:
            result.resume_point = ResumePoint.parse(pid, offset)
        result.on_open(link)
        if result.connected and not result.authenticated and link.socket is result:
            result.authenticate(auth)

    def _recount(self) -> None:
        """A session left without a socket counts as a connection again (until it ends)."""
        if not self.links and self.engine.state is not State.CLOSED:
            self._host.count(self.sid, self._remote, True)

    def _refuse(self, namespace: str, message: str) -> None:
        self.counters.connect_errors += 1
        self.write(self.sio.refuse(namespace, message))
        self._refusals -= 1
        if self._refusals == 0:
            logger.info("session %s: too many CONNECTs refused (the last: %s), closed",
                        self.sid, message,
                        extra={"event": "limit", "limit": "socketio_max_connect_refusals"})
            self.perform(self.engine.close(CloseReason.FORCED_CLOSE))

    def admitted(self, link: NamespaceLink) -> None:
        """A socket passed admission (its ``$welcome``): answer its CONNECT."""
        socket = link.socket
        if socket is None or link.admitted_socket:
            return
        link.admitted_socket = True
        self.engine.socketio_connected()
        pid = None
        if self.offsets and socket.session is not None:
            point = socket.resume_point
            if socket.recovered and point is not None:
                socket.token = point.token  # the same pid: the client sees ``recovered``
            pid = pid_of(socket.id, socket.token)
        self.write(self.sio.accept(link.namespace, socket.id, pid=pid))

    def write(self, packet: EncodedPacket) -> None:
        self.counters.packets_out += 1
        ws = self._ws
        engine = self.engine
        if ws is not None and engine.transport == WEBSOCKET and engine.state is OPEN:
            # What engine.send would ask for (a WebSocket session buffers nothing), minus the
            # action objects: the hot path of acks and direct sends.
            frames = packet.frames
            if len(frames) == 1 and not frames[0].binary:  # a text packet: as it is
                ws.send_message(frames[0].payload, False)
                return
            eio = engine.eio
            for frame in frames:
                ws.send_message(websocket_payload(frame, eio), frame.binary)
            return
        self.perform(engine.send(packet.frames))

    def write_text(self, payload: bytes) -> None:
        """``write`` for a packet of one text message (``payload``: its Engine.IO bytes, as
        ``plain_ack`` makes them): the hot path of acks, no packet objects."""
        self.counters.packets_out += 1
        ws = self._ws
        engine = self.engine
        if ws is not None and engine.transport == WEBSOCKET and engine.state is OPEN:
            if ws.deflater is None:  # what ws.send_message does uncompressed, two calls less
                ws.send_frame(build_frame(payload))
            else:
                ws.send_message(payload, False)
            return
        self.perform(engine.send((OutFrame(payload),)))

    @property
    def connected_sockets(self) -> int:
        return sum(1 for link in self.links.values() if link.admitted_socket)

    @property
    def remote_address(self) -> tuple[Any, ...] | None:
        return self._remote

    def broadcast_frame(self, frame: bytes, namespace: str) -> str | None:
        """A broadcast's native frame: its Socket.IO frames, translated once per broadcast.
        Returns the mark of its position (when offsets are on and it has one)."""
        ws = self._ws
        if ws is not None and self.engine.transport == WEBSOCKET:
            self.counters.packets_out += 1
            built, mark = self._translator.websocket_frames(
                frame, self.engine.eio, namespace, self.offsets
            )
            for data in built:
                ws.send_frame(data)
            return mark
        packet, mark = self._translator.marked(frame, namespace, self.offsets)
        if packet is not None:
            self.write(packet)
        return mark

    def close_link(self, link: NamespaceLink, code: int, reason: str) -> None:
        """The server closes one socket: a refusal before admission is a CONNECT_ERROR (the
        client may try again on the same session); after it, a DISCONNECT when the client
        should not reconnect by itself (then the session ends with its last namespace), else
        the session ends at once and the client reconnects."""
        if self.links.get(link.namespace) is not link:
            return
        del self.links[link.namespace]
        if not link.admitted_socket:
            self._refuse(link.namespace, reason or "unauthorized")
            link.drop(code, reason)
            self._recount()
            return
        final = code in NO_RECONNECT_CODES or code == CloseCode.RATE_LIMITED
        if final:
            leave = self.sio.leave(link.namespace)
            if leave is not None:
                self.write(leave)
        link.drop(code, reason)
        if not final or not self.links:
            self.perform(self.engine.close(CloseReason.FORCED_CLOSE))
            self._schedule()  # polling: the close packet's deadline
        self._recount()

    def abort(self) -> None:
        """Ends the session now (its sockets see 1001)."""
        self._drop_all(CloseCode.GOING_AWAY, "server shutting down")
        self.perform(self.engine.close(CloseReason.FORCED_CLOSE))

    def _drop_all(self, code: int, reason: str) -> None:
        links, self.links = self.links, {}
        for link in links.values():
            link.drop(code, reason)
