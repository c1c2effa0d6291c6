"""``MemoryStore``: recovery on one node (protocol.md section 8), everything in this process.

With ``recovery_window`` set, every room message gets a position (room, epoch, offset) and
every direct message a per-session sequence number, both sent as the envelope's 4th item. A
room keeps its last ``history_size`` messages (none older than ``history_ttl``): the server's
options or the room policy's (``history.HistoryLimits``); a socket keeps the server's
``history_size`` of its direct messages. A room whose policy keeps no history (size 0) still
numbers its messages: a resume that missed some of them gets ``$gap`` for the room instead of
failing. When a connection drops without a clean close, its session
(id, data, rooms, unsent direct messages, recent ack replies) is held for ``recovery_window``
seconds; a client that reconnects with ``$resume`` and its last positions gets the same socket
id back and exactly the messages it missed, in the order they were sent, or ``recovered:
false`` when something it missed is gone (history trimmed, epoch changed, window passed).

Everything here is per broadcast or per direct message (never per delivery). ``clock`` (in
seconds, monotonic) is injectable: tests move time instead of waiting for it.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

from smartsocket.cluster.catchup import gap_notice
from smartsocket.history import History, HistoryLimits
from smartsocket.protocol import envelope
from smartsocket.recovery.state import DirectLog, Entry, Held, SessionState, order_of
from smartsocket.recovery.store import RoomItem, RoomView

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.recovery.state import HeldSocket


class RoomHistory:
    """One room's recent messages. ``epoch`` names this history: when it is lost (a restart,
    or the room forgotten after a quiet spell with nobody to resume into it) a new one starts,
    and positions of the old epoch can no longer be resumed from."""

    __slots__ = ("entries", "epoch", "holders", "last", "ttl", "version")

    def __init__(self, limits: History, version: int) -> None:
        self.epoch = secrets.token_urlsafe(6)
        self.last = 0  # offset of the newest message (offsets start at 1)
        self.entries: deque[Entry] = deque(maxlen=limits.size)
        self.ttl = limits.ttl
        self.version = version  # of the HistoryLimits it was sized by
        self.holders = 0  # held sessions that will resume from a position in it

    def resize(self, limits: History, version: int) -> None:
        """The policies changed: keep the newest ``limits.size`` entries, for its TTL."""
        if self.entries.maxlen != limits.size:
            self.entries = deque(self.entries, maxlen=limits.size)
        self.ttl = limits.ttl
        self.version = version

    def since(self, epoch: str, after: int, sid: str) -> list[Entry] | None:
        """Messages after offset ``after`` that ``sid`` should get; None if some are gone."""
        if epoch != self.epoch or after > self.last:
            return None
        if after == self.last:
            return []
        entries = self.entries
        if not entries or entries[0][0] > after + 1:
            return None  # trimmed (count or age)
        return [e for e in entries if e[0] > after and (e[5] is None or sid not in e[5])]

    def trim(self, oldest: float) -> None:
        entries = self.entries
        while entries and entries[0][2] < oldest:
            entries.popleft()


class MemoryStore:
    """Room histories and held sessions of one server (``recovery.store.SessionStore``)."""

    keeps_sessions = False  # a shutdown ends the sessions held here

    def __init__(
        self, config: Config, clock: Callable[[], float] = time.monotonic, *,
        history: HistoryLimits | None = None,
    ) -> None:
        self.window = config.recovery_window
        self.size = config.history_size  # direct messages kept per session
        self.ttl = config.history_ttl or config.recovery_window  # ... and for how long
        # Room histories: each room's size and TTL (the server's, or its policy's).
        self.history = history if history is not None else HistoryLimits.of_config(config)
        self.reply_limit = max(128, 2 * config.max_pending_acks)
        # Held sessions at most: as many as connections may be open (the oldest goes first),
        # so clients that connect and drop in a loop cannot grow memory without bound.
        self.max_held = config.max_connections
        self.clock = clock
        self.rooms: dict[str, RoomHistory] = {}
        self.held: dict[str, Held] = {}
        # One sequence for every message logged, rooms and direct: the replay's send order.
        self._order = itertools.count(1).__next__
        self.direct = DirectLog(self.size, clock, self._order)
        self.evicted = 0  # held sessions dropped early (over max_held)

    # direct messages

    def direct_message(self, state: SessionState, event: str, data: Any, binary: bool) -> bytes:
        return self.direct.message(state, event, data, binary)

    def direct_payload(self, state: SessionState, payload: bytes, binary: bool) -> bytes:
        return self.direct.payload(state, payload, binary)

    # room history

    def _history(self, room: str) -> RoomHistory:
        history = self._known(room)
        if history is None:
            limits = self.history
            history = self.rooms[room] = RoomHistory(limits.of(room), limits.version)
        return history

    def _known(self, room: str) -> RoomHistory | None:
        """``room``'s history if it has one, sized by the policies in force."""
        history = self.rooms.get(room)
        if history is not None and history.version != self.history.version:
            history.resize(self.history.of(room), self.history.version)  # a policy was set
        return history

    def log_room(
        self, room: str, event: str, data: Any, binary: bool, excluded: tuple[str, ...] | None,
    ) -> bytes:
        history = self._history(room)
        offset = history.last + 1
        payload = envelope.encode_event(
            event, data, binary=binary, meta=[room, history.epoch, offset]
        )
        history.last = offset
        history.entries.append((offset, self._order(), self.clock(), payload, binary, excluded))
        return payload

    def position(self, room: str) -> tuple[str, int]:
        history = self._history(room)
        return history.epoch, history.last

    async def read_room(self, room: str, after: int) -> RoomView | None:
        history = self._known(room)
        if history is None:
            return None
        history.trim(self.clock() - history.ttl)
        # Entries keep this store's clock: their wall-clock time is now minus their age.
        wall, now = time.time() * 1000, self.clock()
        items = [
            RoomItem(e[0], e[3], e[4], e[5], round(wall - (now - e[2]) * 1000))
            for e in history.entries if e[0] > after
        ]
        return RoomView(history.epoch, history.last, items)

    # held sessions

    def hold(self, socket: HeldSocket, state: SessionState) -> None:
        while len(self.held) >= self.max_held:
            self._release(self.held.pop(next(iter(self.held))))
            self.evicted += 1
        held = Held.of(socket, state, self.clock() + self.window)
        self.held[held.sid] = held
        for room in held.rooms:
            history = self.rooms.get(room)
            if history is not None:
                history.holders += 1

    def holds(self, sid: str) -> bool:
        held = self.held.get(sid)
        return held is not None and held.expires >= self.clock()

    def send_held(self, sid: str, payload: bytes, binary: bool) -> bool:
        held = self.held.get(sid)
        if held is None:
            return False
        self.direct.payload(held.state, payload, binary)
        return True

    async def take(self, sid: Any, token: Any, identity: Any) -> Held | None:
        if type(sid) is not str or type(token) is not str:
            return None
        held = self.held.get(sid)
        if held is None or not hmac.compare_digest(held.token.encode(), token.encode()):
            return None
        if held.expires < self.clock() or held.identity != identity:
            return None
        self._release(self.held.pop(sid))
        return held

    def drop(self, sid: str) -> None:
        held = self.held.pop(sid, None)
        if held is not None:
            self._release(held)

    def refresh(self, sid: str, state: SessionState) -> None:
        """Nothing to do: the held session is this very state."""

    async def missed(
        self, held: Held, offsets: dict[str, Any], seq: int
    ) -> list[tuple[bytes, bool]] | None:
        now = self.clock()
        missed = held.state.since(max(seq, 0))
        if missed is None:
            return None
        gaps: list[tuple[bytes, bool]] = []
        for room in held.rooms:
            epoch, after = held.state.joined.get(room, ("", 0))
            reported = offsets.get(room)
            if (
                type(reported) is list and len(reported) == 2 and reported[0] == epoch
                and type(reported[1]) is int and reported[1] > after
            ):
                after = reported[1]
            history = self._known(room)
            entries = None
            if history is not None:
                history.trim(now - history.ttl)
                entries = history.since(epoch, after, held.sid)
            if entries is None:
                if self.history.of(room).size:
                    return None
                gaps.append((gap_notice(room), False))  # keeps no history: say so instead
                continue
            missed.extend(entries)
        missed.sort(key=order_of)
        return gaps + [(entry[3], entry[4]) for entry in missed]

    def sweep(self, rooms_in_use: Container[str]) -> list[str]:
        """Drop expired sessions and what no one can resume from any more."""
        now = self.clock()
        for sid in [sid for sid, held in self.held.items() if held.expires < now]:
            self._release(self.held.pop(sid))
        oldest = now - self.ttl
        for held in self.held.values():
            held.state.trim(oldest)
        for name in list(self.rooms):
            history = self.rooms[name]
            history.trim(now - history.ttl)
            if not history.entries and not history.holders and name not in rooms_in_use:
                del self.rooms[name]
        return []

    def _release(self, held: Held) -> None:
        for room in held.rooms:
            history = self.rooms.get(room)
            if history is not None:
                history.holders -= 1

    def stats(self) -> dict[str, int]:
        return {
            "heldSessions": len(self.held),
            "heldEvicted": self.evicted,
            "historyRooms": len(self.rooms),
            "historyMessages": sum(len(h.entries) for h in self.rooms.values()),
            "unlogged": 0,
            "lostDirect": 0,
            "gaps": 0,
            "caughtUp": 0,
        }
