"""Resuming sessions (protocol.md section 8): the ``$resume`` handshake, the take-over of a
connection the client gave up on, and restoring a session and its replay.

``Resumer`` is the part of ``SmartSocket`` that owns the flow. On one node the held session
and the room histories are in memory (server/recovery.py). In a cluster on Redis they come
from Redis (cluster/sessions.py), so the client may come back to any node; then order
matters: the socket joins its rooms (subscribing this node to their channels) before the
histories are read, and what the rooms deliver meanwhile is buffered; the replay goes out
first, then the buffer. A message may then arrive twice (in the history and live): the
client drops what it has seen by position, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.protocol.envelope import Event
from smartsocket.server.recovery import Held, Recovery, Replies, SessionState

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.cluster.sessions import BrokerRecovery, DirectEntry, SessionBlob
    from smartsocket.config import Config
    from smartsocket.server.rooms import RoomRegistry
    from smartsocket.server.socket import Socket

logger = logging.getLogger("smartsocket.server")



class Welcome(Protocol):
    """Welcome an admitted socket and hand it to the application (after a resume: with the
    messages it missed, then the frames its rooms delivered meanwhile)."""

    def __call__(
        self, socket: Socket, recovered: bool | None,
        replay: list[tuple[bytes, bool]] | None = None, frames: list[bytes] | None = None,
    ) -> None: ...


class Resumer:
    """The resume flow: sockets that connect with ``?resume=1``. ``recovery`` and ``config``
    follow the server's configuration; ``welcome`` hands a socket to the application."""

    __slots__ = (
        "cluster", "config", "early", "recovery", "registry", "sockets", "spawn", "welcome",
    )

    def __init__(
        self, config: Config, sockets: Mapping[str, Socket], registry: RoomRegistry,
        cluster: ClusterNode, spawn: Callable[[Any], None], welcome: Welcome,
    ) -> None:
        self.config = config
        self.recovery: Recovery | None = None
        self.sockets = sockets
        self.registry = registry
        self.cluster = cluster
        self.spawn = spawn
        self.welcome = welcome
        self.early: dict[Socket, Event] = {}  # $resume sent before authentication

    def new_session_state(self, socket: Socket) -> SessionState | None:
        return SessionState(socket) if self.recovery is not None else None

    def admit(self, socket: Socket) -> None:
        """The socket is authenticated: welcome it and hand it to the application (or first
        wait for its ``$resume``, if it connected with ``?resume=1``)."""
        if self.recovery is not None and "resume" in socket.request.query:
            socket._resuming = True
            socket._inbox = []  # what it sends before $resume waits for the session
            early = self.early.pop(socket, None)
            if early is not None:
                self._resume(socket, early)
                return
            socket._auth_timer = asyncio.get_running_loop().call_later(
                self.config.auth_timeout, self._resume_timed_out, socket
            )
            return
        self.welcome(socket, None)

    def resume_message(self, socket: Socket, packet: Event) -> None:
        if socket._resuming:
            self._resume(socket, packet)
        elif (
            not socket.authenticated and "resume" in socket.request.query
            and socket not in self.early
        ):
            self.early[socket] = packet  # read once authenticated (admit)
        else:
            socket.reject(
                ErrorCode.BAD_MESSAGE, "$resume is only valid first, on a ?resume=1 connection",
                event="$resume", ack_id=packet.ack_id, binary=packet.binary,
            )

    def _resume_timed_out(self, socket: Socket) -> None:
        socket._auth_timer = None
        if socket.connected and socket._resuming:
            self._resume(socket, None)

    def _resume(self, socket: Socket, packet: Event | None) -> None:
        """``["$resume", {"sid", "token", "offsets": {room: [epoch, offset]}, "seq"}]``:
        restore the session and replay what it missed, or start a new one (``recovered:
        false``). Then the socket is welcomed and handed to the application as usual."""
        recovery = self.recovery
        assert recovery is not None
        socket._resuming = False
        if socket._auth_timer is not None:
            socket._auth_timer.cancel()
            socket._auth_timer = None
        info = packet.data if packet is not None else None
        if type(info) is not dict:
            info = {}
        sid, token = info.get("sid"), info.get("token")
        held = self._take_over(socket, sid, token)
        if recovery.broker is not None:
            self.spawn(self._resume_from_broker(socket, held, info))
            return
        if held is None:
            held = recovery.take(sid, token, socket.identity)
        missed = None
        if held is not None:
            missed = recovery.replay(held, info.get("offsets", {}), info.get("seq", 0))
        if held is None or missed is None:
            recovery.failed += 1
            self.welcome(socket, False)
            return
        recovery.recovered += 1
        self._restore(socket, held)
        self.welcome(socket, True, [(entry[3], entry[4]) for entry in missed])

    def session_changed(self, sid: str, state: SessionState) -> None:
        """A held session's state changed (a call finished): Redis keeps a copy of it."""
        recovery = self.recovery
        if recovery is not None and recovery.broker is not None:
            recovery.broker.refresh(sid, state)

    def _take_over(self, socket: Socket, sid: Any, token: Any) -> Held | None:
        """A resume of a session whose old connection is still open here (the client noticed
        the drop first): close that one and hand its session over directly."""
        live = self.sockets.get(sid) if type(sid) is str else None
        if (
            live is None or type(token) is not str or live.identity != socket.identity
            or not secrets.compare_digest(live.token.encode(), token.encode())
            or live._rec is None
        ):
            return None
        assert self.recovery is not None
        state = live._rec
        held = Held.of(live, state, time.monotonic() + self.recovery.window)
        state.owner = None  # not held anywhere: resumed right here
        live.on_close(CloseCode.GOING_AWAY, "resumed by a new connection")
        if live._conn is not None:
            live._conn.abort()
        return held

    async def _resume_from_broker(
        self, socket: Socket, held: Held | None, info: dict[str, Any]
    ) -> None:
        """``_resume`` in a cluster on Redis: the session and the room histories come from
        Redis (the session may have been held by another node)."""
        recovery = self.recovery
        assert recovery is not None and recovery.broker is not None
        try:
            resumed = await resume_from_broker(self, recovery.broker, socket, held, info)
        except Exception:
            logger.exception("resuming %s failed", socket.id)
            resumed = None
        if not socket.connected:
            return
        if resumed is None:
            recovery.failed += 1
            self.welcome(socket, False)
            return
        recovery.recovered += 1
        held = resumed.held
        state = self._adopt(socket, held)
        for room in socket._rooms:  # joined by resume_from_broker, buffering until now
            self.registry.set_sender(room, socket, socket._send_frame)
            state.joined[room] = recovery.position(room)
        self.cluster.resumed_here(held.sid)
        self.welcome(socket, True, resumed.replay, resumed.buffered)

    @staticmethod
    def _adopt(socket: Socket, held: Held) -> SessionState:
        """Give ``socket`` the held session's id, data and state (its rooms: the caller)."""
        socket.id = held.sid
        socket.data = held.data
        socket.presence = held.presence
        socket.recovered = True
        state = socket._rec = held.state
        state.owner = socket
        return state

    def _restore(self, socket: Socket, held: Held) -> None:
        """Give ``socket`` the held session's id, data and rooms."""
        recovery = self.recovery
        assert recovery is not None
        state = self._adopt(socket, held)
        for room in held.rooms:
            if self.registry.add(room, socket, socket._send_frame):
                socket._rooms[room] = None
                # Whole up to here now: a later resume replays from this point at least.
                state.joined[room] = recovery.position(room)


_encode = msgspec.msgpack.Encoder().encode


class Resumed:
    """A session taken and its replay computed: what the server finishes the resume with."""

    __slots__ = ("buffered", "held", "replay")

    def __init__(
        self, held: Held, replay: list[tuple[bytes, bool]], buffered: list[bytes]
    ) -> None:
        self.held = held
        self.replay = replay  # payloads, in send order
        self.buffered = buffered  # frames the rooms delivered while the histories were read


async def resume_from_broker(
    server: Resumer, broker: BrokerRecovery, socket: Socket, held: Held | None,
    info: dict[str, Any],
) -> Resumed | None:
    """Take the session ``info`` names (or ``held``, taken over from a connection here),
    join its rooms and compute what its client missed; None if it cannot resume."""
    sid, token = info.get("sid"), info.get("token")
    if held is None:
        if type(sid) is not str or type(token) is not str:
            return None
        taken = await broker.take(sid, token, server.cluster.node_id)
        if taken is None:
            return None
        assert server.recovery is not None
        held = _held_from_blob(sid, token, *taken, server.recovery)
        if _encode(held.identity) != _encode(socket.identity):
            return None
    seq = info.get("seq", 0)
    offsets = info.get("offsets", {})
    if type(seq) is not int or type(offsets) is not dict:
        return None
    direct = held.state.since(max(seq, 0))
    if direct is None:
        return None
    original_id = socket.id
    socket.id = held.sid  # before joining: presence shows the resumed id
    buffered: list[bytes] = []
    joined: list[str] = []
    registry = server.registry
    done = False
    try:
        for room in held.rooms:
            if registry.add(room, socket, buffered.append):
                socket._rooms[room] = None
                joined.append(room)
        for room in joined:
            await server.cluster.subscribed(room, 2.0)
        sources = [_direct_source(direct)]
        for room in held.rooms:
            entries = await _missed_in_room(broker, server, room, held, offsets.get(room))
            if entries is None:
                return None
            sources.append(iter(entries))
        replay = [(payload, binary) for _, payload, binary in heapq.merge(*sources)]
        done = True
        return Resumed(held, replay, buffered)
    finally:
        if not done:
            for room in joined:
                registry.discard(room, socket)
                socket._rooms.pop(room, None)
            socket.id = original_id


async def _missed_in_room(
    broker: BrokerRecovery, server: Resumer, room: str, held: Held, reported: Any,
) -> list[tuple[int, bytes, bool]] | None:
    """(wall ms, payload, binary) of the room messages ``held`` missed; None if some are
    gone (trimmed, too old, another epoch, a history that may have lost its tail)."""
    epoch, after = held.state.joined.get(room, ("", -_now_ms()))
    later: tuple[str, int] | None = None  # a position in an epoch that began after the join
    if (
        type(reported) is list and len(reported) == 2 and type(reported[0]) is str
        and type(reported[1]) is int and reported[1] >= 0
    ):
        if epoch == "" or (reported[0] == epoch and reported[1] > after):
            epoch, after = reported
        elif reported[0] != epoch:
            # The broker restarted since the join and the client got messages of the new
            # epoch: it had everything before them, or was told ($gap, cluster/catchup.py).
            later = (reported[0], reported[1])
    channel = server.cluster.room_channel(room)
    history = await broker.read_room(channel, after if later is None else later[1])
    if later is not None:
        if history is not None and history.epoch == later[0]:
            epoch, after = later
        else:  # not the room's epoch (any more): from the join
            history = await broker.read_room(channel, after)
    if history is None:
        # No history: nothing was sent to the room since it expired. Fine if the socket knew
        # no position in it, or joined it after the last message it could have seen.
        return [] if epoch == "" else None
    if not history.current:
        return None  # the broker restarted or failed over since: its tail may be lost
    current, last, entries = history.epoch, history.last, history.entries
    oldest = _now_ms() - broker.ttl_ms
    if epoch == "":  # joined before this node saw any message of the room: by time
        since = -after
        if entries and entries[0].ms >= since and entries[0].offset != 1:
            return None  # the history starts after the join: some may be trimmed
        entries = [e for e in entries if e.ms >= since]
    elif current != epoch or after > last:
        return None
    elif after < last and (not entries or entries[0].offset != after + 1):
        return None  # trimmed
    if entries and entries[0].ms < oldest:
        return None  # older than history_ttl: as good as trimmed
    return [
        (e.ms, envelope.with_meta(e.payload, [room, current, e.offset], binary=e.binary),
         e.binary)
        for e in entries if held.sid not in e.excluded
    ]


def _direct_source(entries: list[Any]) -> Iterator[tuple[int, bytes, bool]]:
    wall_minus_mono = time.time() - time.monotonic()
    for entry in entries:
        yield int((entry[2] + wall_minus_mono) * 1000), entry[3], entry[4]


def _held_from_blob(
    sid: str, token: str, blob: SessionBlob, appended: list[DirectEntry], recovery: Recovery,
) -> Held:
    state = SessionState(None)
    state.joined = {room: (epoch, offset) for room, (epoch, offset) in blob.joined.items()}
    mono_minus_wall = time.monotonic() - time.time()
    outbox = [(seq, ms, payload, binary) for seq, ms, payload, binary in blob.outbox]
    outbox += [(e.seq, e.ms, e.payload, e.binary) for e in appended]
    state.seq = max([blob.seq, *(entry[0] for entry in outbox)])
    if outbox:
        state.outbox = deque(
            ((seq, 0, ms / 1000 + mono_minus_wall, payload, binary, None)
             for seq, ms, payload, binary in outbox),
            maxlen=recovery.size,
        )
    if blob.replies:
        replies = state.replies = Replies(recovery.reply_limit)
        for key, result, error in blob.replies:
            replies.done[key] = (result, tuple(error) if error is not None else None)
    return Held(sid, token, blob.identity, blob.data, blob.presence, list(blob.rooms), state, 0.0)


def _now_ms() -> int:
    return int(time.time() * 1000)
