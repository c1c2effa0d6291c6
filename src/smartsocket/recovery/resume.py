"""Resuming sessions (protocol.md section 8): the ``$resume`` handshake, the take-over of a
connection the client gave up on, and restoring a session with its replay.

``Resumer`` owns the flow, with whatever ``SessionStore`` the server picked (recovery/store.py):

1. take the session: from a connection still open here (take-over), else from the store;
2. join its rooms, buffering what they deliver: in a cluster the socket subscribes this node
   to their channels before the histories are read, so nothing falls between the history and
   the live messages (a message may come twice: the client drops what it has seen by
   position; with the memory store nothing happens in between and the buffer stays empty);
3. ask the store what the client missed; welcome it with the replay, then the buffer.

It acts on sockets and on the application only through the small ``Protocol``s below
(``server/socket.py`` implements ``ResumingSocket``); ``recovery/`` never imports ``server/``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.recovery.state import Held, SessionState

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.protocol.envelope import Event
    from smartsocket.recovery.marks import ResumePoint
    from smartsocket.recovery.store import SessionStore

logger = logging.getLogger("smartsocket.recovery")


class Request(Protocol):
    @property
    def query(self) -> Mapping[str, Any]: ...


class ResumingSocket(Protocol):
    """What the flow needs of a connection (``server.socket.Socket``)."""

    id: str
    data: dict[str, Any]
    presence: dict[str, Any]
    recovered: bool
    session: SessionState | None

    @property
    def resume_point(self) -> ResumePoint | None:
        """Where a client that reports one offset (Socket.IO) resumes from, if it asked."""

    @property
    def token(self) -> str: ...

    @property
    def identity(self) -> Any: ...

    @property
    def connected(self) -> bool: ...

    @property
    def authenticated(self) -> bool: ...

    @property
    def request(self) -> Request: ...

    @property
    def resuming(self) -> bool: ...

    def await_resume(self, timeout: float, on_timeout: Callable[[], None]) -> None:
        """Hold what the client sends until its ``$resume`` (``on_timeout`` if none comes)."""

    def stop_resuming(self) -> None: ...

    def joined_rooms(self) -> list[str]: ...

    def enter_room(self, room: str, sink: Callable[[bytes], None]) -> bool:
        """Join ``room`` (no limits: a resumed session's rooms), its frames going to
        ``sink`` for now; False if it was a member already."""

    def exit_room(self, room: str) -> None: ...

    def connect_room(self, room: str) -> None:
        """From now on ``room``'s frames go to the connection."""

    def abandon(self, code: int, reason: str) -> None:
        """Close at once, without the closing handshake (its session moved on)."""

    def reject(
        self, code: str, message: str, *, event: str | None = None, ack_id: int | None = None,
        retry_after: float | None = None, binary: bool = False,
    ) -> None: ...


class Welcome(Protocol):
    """Welcome an admitted socket and hand it to the application (after a resume: with the
    messages it missed, then the frames its rooms delivered meanwhile)."""

    def __call__(
        self, socket: Any, recovered: bool | None,
        replay: list[tuple[bytes, bool]] | None = None, frames: list[bytes] | None = None,
    ) -> None: ...


class Cluster(Protocol):
    """What the flow needs of the node (``cluster.node.ClusterNode``)."""

    async def subscribed(self, room: str, timeout: float) -> bool: ...

    def resumed_here(self, sid: str) -> None: ...


class Resumer:
    """The resume flow: sockets that connect with ``?resume=1``. ``store`` and ``config``
    follow the server (it sets them); ``welcome`` hands a socket to the application."""

    __slots__ = (
        "clock", "cluster", "config", "early", "failed", "recovered", "sockets", "spawn",
        "store", "welcome",
    )

    def __init__(
        self, config: Config, sockets: Mapping[str, ResumingSocket], cluster: Cluster,
        spawn: Callable[[Any], None], welcome: Welcome,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store: SessionStore | None = None
        self.sockets = sockets
        self.cluster = cluster
        self.spawn = spawn
        self.welcome = welcome
        self.clock = clock
        self.early: dict[ResumingSocket, Event] = {}  # $resume sent before authentication
        self.recovered = 0
        self.failed = 0

    def new_session_state(self, socket: object) -> SessionState | None:
        return SessionState(socket) if self.store is not None else None

    def admit(self, socket: ResumingSocket) -> None:
        """The socket is authenticated: welcome it and hand it to the application (or first
        wait for its ``$resume``, if it connected with ``?resume=1``)."""
        point = socket.resume_point
        if self.store is not None and point is not None:
            self._resume_at(socket, point)
            return
        if self.store is not None and "resume" in socket.request.query:
            early = self.early.pop(socket, None)
            if early is not None:
                self._resume(socket, early)
                return
            socket.await_resume(self.config.auth_timeout, lambda: self._timed_out(socket))
            return
        self.welcome(socket, None)

    def resume_message(self, socket: ResumingSocket, packet: Event) -> None:
        if socket.resuming:
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

    def _timed_out(self, socket: ResumingSocket) -> None:
        if socket.connected and socket.resuming:
            self._resume(socket, None)

    def _resume(self, socket: ResumingSocket, packet: Event | None) -> None:
        """``["$resume", {"sid", "token", "offsets": {room: [epoch, offset]}, "seq"}]``:
        restore the session and replay what it missed, or start a new one (``recovered:
        false``). Then the socket is welcomed and handed to the application as usual."""
        socket.stop_resuming()
        info = packet.data if packet is not None else None
        if type(info) is not dict:
            info = {}
        held = self._take_over(socket, info.get("sid"), info.get("token"))
        self.spawn(self._finish(socket, held, info))

    def _resume_at(self, socket: ResumingSocket, point: ResumePoint) -> None:
        """A Socket.IO CONNECT with ``pid`` and ``offset`` (recovery/marks.py): the same
        flow, with the positions its one offset stands for."""
        held = self._take_over(socket, point.sid, point.token)
        self.spawn(self._finish(socket, held, {"sid": point.sid, "token": point.token},
                                point))

    def session_changed(self, sid: str, state: SessionState) -> None:
        """A held session's state changed (a call finished): the store keeps it."""
        if self.store is not None:
            self.store.refresh(sid, state)

    def _take_over(self, socket: ResumingSocket, sid: Any, token: Any) -> Held | None:
        """A resume of a session whose old connection is still open here (the client noticed
        the drop first): close that one and hand its session over directly."""
        live = self.sockets.get(sid) if type(sid) is str else None
        if (
            live is None or type(token) is not str or live.identity != socket.identity
            or not secrets.compare_digest(live.token.encode(), token.encode())
            or live.session is None or self.store is None
        ):
            return None
        state = live.session
        held = Held.of(live, state, self.clock() + self.store.window)
        state.owner = None  # not held anywhere: resumed right here
        live.abandon(CloseCode.GOING_AWAY, "resumed by a new connection")
        return held

    async def _finish(
        self, socket: ResumingSocket, held: Held | None, info: dict[str, Any],
        point: ResumePoint | None = None,
    ) -> None:
        store = self.store
        assert store is not None
        try:
            resumed = await self._restore(store, socket, held, info, point)
        except Exception:
            logger.exception("resuming %s failed", socket.id)
            resumed = None
        if not socket.connected:
            if resumed is not None:  # gone while its rooms were read: leave them again
                self._undo(socket, resumed[3], socket.id)
            return
        if resumed is None:
            self.failed += 1
            self.welcome(socket, False)
            return
        held, replay, buffered, joined = resumed
        self.recovered += 1
        self._adopt(socket, held)
        state = held.state
        for room in joined:  # buffering until now
            socket.connect_room(room)
            state.joined[room] = store.position(room)  # whole up to here now
        store.drop(held.sid)
        self.cluster.resumed_here(held.sid)
        self.welcome(socket, True, replay, buffered)

    async def _restore(
        self, store: SessionStore, socket: ResumingSocket, held: Held | None,
        info: dict[str, Any], point: ResumePoint | None = None,
    ) -> tuple[Held, list[tuple[bytes, bool]], list[bytes], list[str]] | None:
        """Take the session ``info`` names (or ``held``, taken over from a connection here),
        join its rooms and compute what its client missed; None if it cannot resume."""
        if held is None:
            held = await store.take(info.get("sid"), info.get("token"), socket.identity)
            if held is None:
                return None
        if point is not None:
            positions = point.positions(held.state)
            if positions is None:
                return None
            info = {"offsets": positions[0], "seq": positions[1]}
        seq = info.get("seq", 0)
        offsets = info.get("offsets", {})
        if type(seq) is not int or type(offsets) is not dict or not socket.connected:
            return None
        original_id = socket.id
        socket.id = held.sid  # before joining: presence shows the resumed id
        buffered: list[bytes] = []
        joined: list[str] = []
        try:
            for room in held.rooms:
                if socket.enter_room(room, buffered.append):
                    joined.append(room)
            for room in joined:
                await self.cluster.subscribed(room, 2.0)
            replay = await store.missed(held, offsets, seq)
            if replay is not None:
                return held, replay, buffered, joined
        except BaseException:
            self._undo(socket, joined, original_id)
            raise
        self._undo(socket, joined, original_id)
        return None

    @staticmethod
    def _undo(socket: ResumingSocket, joined: list[str], original_id: str) -> None:
        for room in joined:
            socket.exit_room(room)
        socket.id = original_id

    @staticmethod
    def _adopt(socket: ResumingSocket, held: Held) -> None:
        """Give ``socket`` the held session's id, data and state (its rooms: the caller)."""
        socket.id = held.sid
        socket.data = held.data
        socket.presence = held.presence
        socket.recovered = True
        socket.session = held.state
        held.state.owner = socket

    def stats(self) -> dict[str, int]:
        """The store's figures with the outcomes of resumes (``recovery`` in the stats)."""
        assert self.store is not None
        figures = self.store.stats()
        return {
            "heldSessions": figures.pop("heldSessions"),
            "recovered": self.recovered,
            "recoveryFailed": self.failed,
            **figures,
        }
