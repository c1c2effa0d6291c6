"""Connection state recovery: room history, held sessions, replay (protocol.md section 8).

With ``recovery_window`` set, every room message gets a position (room, epoch, offset) and
every direct message a per-session sequence number, both sent as the envelope's 4th item. A
room keeps its last ``history_size`` messages (none older than ``history_ttl``); a socket keeps
as many of its direct messages. When a connection drops without a clean close, its session
(id, data, rooms, unsent direct messages, recent ack replies) is held for ``recovery_window``
seconds; a client that reconnects with ``$resume`` and its last positions gets the same socket
id back and exactly the messages it missed, in the order they were sent, or ``recovered:
false`` when something it missed is gone (history trimmed, epoch changed, window passed).

Everything here is per broadcast or per direct message (never per delivery), and nothing of
it exists while ``recovery_window`` is 0.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from smartsocket.protocol import envelope

if TYPE_CHECKING:
    from smartsocket.cluster.sessions import BrokerRecovery
    from smartsocket.config import Config
    from smartsocket.server.socket import Socket

# (offset or seq, order, time, payload, binary, excluded socket ids). Only atomic items (the
# ids in a tuple, not a set): the garbage collector stops tracking such tuples, and a server
# with many rooms keeps ~100 of them per room.
Entry = tuple[int, int, float, bytes, bool, tuple[str, ...] | None]


class RoomHistory:
    """One room's recent messages. ``epoch`` names this history: when it is lost (a restart,
    or the room forgotten after a quiet spell with nobody to resume into it) a new one starts,
    and positions of the old epoch can no longer be resumed from."""

    __slots__ = ("entries", "epoch", "holders", "last")

    def __init__(self, size: int) -> None:
        self.epoch = secrets.token_urlsafe(6)
        self.last = 0  # offset of the newest message (offsets start at 1)
        self.entries: deque[Entry] = deque(maxlen=size)
        self.holders = 0  # held sessions that will resume from a position in it

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


class SessionState:
    """Recovery state of one socket, live or held: its direct-message log, where it joined
    each room, and the replies to its recent idempotent calls."""

    __slots__ = ("joined", "outbox", "owner", "replies", "seq")

    def __init__(self, owner: Socket | None) -> None:
        self.owner = owner  # the connected socket of this session; None while held
        self.seq = 0  # sequence number of the last direct message
        self.outbox: deque[Entry] | None = None  # made on the first direct message
        self.joined: dict[str, tuple[str, int]] = {}  # room -> (epoch, offset) at join
        self.replies: Replies | None = None

    def since(self, after: int) -> list[Entry] | None:
        if after > self.seq or after < 0:
            return None
        if after == self.seq:
            return []
        outbox = self.outbox
        if not outbox or outbox[0][0] > after + 1:
            return None
        return [e for e in outbox if e[0] > after]

    def trim(self, oldest: float) -> None:
        outbox = self.outbox
        while outbox and outbox[0][2] < oldest:
            outbox.popleft()


class Replies:
    """Outcomes of a socket's recent calls by idempotency key, so a call the client retries
    after a reconnect runs its handler once. While the handler runs, the ack ids waiting for
    a key (with the connection each came on) are in ``running``; then the key maps to its
    outcome: ``(result, None)`` or ``(None, (code, message, retry_after))``."""

    __slots__ = ("done", "limit", "running")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: dict[int, tuple[Any, Socket]] = {}  # ack id -> (key, connection)
        self.done: OrderedDict[Any, tuple[Any, tuple[str, str, float | None] | None]] = (
            OrderedDict()
        )

    def is_running(self, key: Any) -> bool:
        return any(k == key for k, _ in self.running.values())

    def finish(
        self, ack_id: int, result: Any, error: tuple[str, str, float | None] | None
    ) -> list[tuple[int, Socket]]:
        """Record the outcome of call ``ack_id``: the calls to answer with it (``ack_id`` and
        any retry of the same key that came while it ran), each with its connection."""
        key, socket = self.running.pop(ack_id)
        waiting = [(ack_id, socket)]
        for other, (other_key, other_socket) in list(self.running.items()):
            if other_key == key:
                del self.running[other]
                waiting.append((other, other_socket))
        done = self.done
        done[key] = (result, error)
        done.move_to_end(key)
        while len(done) > self.limit:
            done.popitem(last=False)
        return waiting


class Held:
    """A session whose connection dropped, kept for ``recovery_window`` seconds."""

    __slots__ = ("data", "expires", "identity", "presence", "rooms", "sid", "state", "token")

    def __init__(
        self, sid: str, token: str, identity: Any, data: Any, presence: Any, rooms: list[str],
        state: SessionState, expires: float,
    ) -> None:
        self.sid = sid
        self.token = token
        self.identity = identity
        self.data = data
        self.presence = presence
        self.rooms = rooms
        self.state = state
        self.expires = expires

    @classmethod
    def of(cls, socket: Socket, state: SessionState, expires: float) -> Held:
        return cls(socket.id, socket.token, socket.identity, socket.data, socket.presence,
                   socket.joined_rooms(), state, expires)


class Recovery:
    """Room histories and held sessions of one server. In a cluster on Redis, ``broker``
    keeps room histories and held sessions in Redis instead (cluster/sessions.py); direct
    messages of connected sockets are numbered and logged here in both cases."""

    def __init__(self, config: Config) -> None:
        self.broker: BrokerRecovery | None = None  # set when the node joins a Redis cluster
        self.window = config.recovery_window
        self.size = config.history_size
        self.ttl = config.history_ttl or config.recovery_window
        self.reply_limit = max(128, 2 * config.max_pending_acks)
        # Held sessions at most: as many as connections may be open (the oldest goes first),
        # so clients that connect and drop in a loop cannot grow memory without bound.
        self.max_held = config.max_connections
        self.rooms: dict[str, RoomHistory] = {}
        self.held: dict[str, Held] = {}
        self._order = itertools.count(1)  # one sequence for every message logged: replay order
        self.recovered = 0
        self.failed = 0
        self.evicted = 0  # held sessions dropped early (over max_held)

    # logging messages as they are sent

    def room_message(
        self, room: str, event: str, data: Any, binary: bool, excluded: tuple[str, ...] | None
    ) -> bytes:
        """Encode a room broadcast with its position, and log it."""
        history = self.rooms.get(room)
        if history is None:
            history = self.rooms[room] = RoomHistory(self.size)
        offset = history.last + 1
        payload = envelope.encode_event(
            event, data, binary=binary, meta=[room, history.epoch, offset]
        )
        history.last = offset
        history.entries.append(
            (offset, next(self._order), time.monotonic(), payload, binary, excluded)
        )
        return payload

    def direct_message(
        self, state: SessionState, event: str, data: Any, binary: bool
    ) -> bytes:
        """Encode a message to one socket with its sequence number, and log it."""
        seq = state.seq + 1
        return self._log(state, envelope.encode_event(event, data, binary=binary, meta=seq),
                         binary)

    def direct_payload(self, state: SessionState, payload: bytes, binary: bool) -> bytes:
        """The same for a message encoded already (without meta: from another node)."""
        return self._log(state, envelope.with_meta(payload, state.seq + 1, binary=binary), binary)

    def _log(self, state: SessionState, payload: bytes, binary: bool) -> bytes:
        seq = state.seq = state.seq + 1
        outbox = state.outbox
        if outbox is None:
            outbox = state.outbox = deque(maxlen=self.size)
        outbox.append((seq, next(self._order), time.monotonic(), payload, binary, None))
        return payload

    def position(self, room: str) -> tuple[str, int]:
        """Where a socket joining ``room`` now starts: it gets what comes after. In a cluster,
        the last position delivered on this node, or if there was none ``("", -t)``: what
        comes after wall-clock time ``t`` (ms)."""
        if self.broker is not None:
            known = self.broker.positions.get(room)
            return known if known is not None else ("", -int(time.time() * 1000))
        history = self.rooms.get(room)
        if history is None:
            history = self.rooms[room] = RoomHistory(self.size)
        return history.epoch, history.last

    # holding and resuming sessions

    def hold(self, socket: Socket, state: SessionState) -> None:
        if self.broker is not None:
            self.broker.hold(socket, state)
            return
        while len(self.held) >= self.max_held:
            self._release(self.held.pop(next(iter(self.held))))
            self.evicted += 1
        held = Held.of(socket, state, time.monotonic() + self.window)
        self.held[held.sid] = held
        for room in held.rooms:
            history = self.rooms.get(room)
            if history is not None:
                history.holders += 1

    def holds(self, sid: str) -> bool:
        """Whether the dropped session ``sid`` is held here (it may still resume)."""
        if self.broker is not None:
            entry = self.broker.held.get(sid)
            return entry is not None and entry[1] >= time.monotonic()
        return sid in self.held

    def send_held(self, sid: str, payload: bytes, binary: bool) -> bool:
        """A message (encoded, without meta) for a dropped session held here: logged for its
        resume. False if no such session is held here."""
        if self.broker is not None:
            return self.broker.direct(sid, payload, binary)
        held = self.held.get(sid)
        if held is None:
            return False
        self.direct_payload(held.state, payload, binary)
        return True

    def take(self, sid: Any, token: Any, identity: Any) -> Held | None:
        """The held session ``sid`` if ``token`` is its token (and the new connection has the
        same identity), removed from the held ones; None otherwise."""
        if type(sid) is not str or type(token) is not str:
            return None
        held = self.held.get(sid)
        if held is None or not hmac.compare_digest(held.token.encode(), token.encode()):
            return None
        if held.expires < time.monotonic() or held.identity != identity:
            return None
        self._release(self.held.pop(sid))
        return held

    def replay(self, held: Held, offsets: Any, seq: Any) -> list[Entry] | None:
        """What ``held``'s client missed, in send order, given the positions it reports
        (``offsets``: room -> [epoch, offset]; ``seq``: last direct message); None if some of
        it can no longer be replayed."""
        if type(offsets) is not dict or type(seq) is not int:
            return None
        oldest = time.monotonic() - self.ttl
        missed = held.state.since(max(seq, 0))
        if missed is None:
            return None
        for room in held.rooms:
            epoch, after = held.state.joined.get(room, ("", 0))
            reported = offsets.get(room)
            if (
                type(reported) is list and len(reported) == 2 and reported[0] == epoch
                and type(reported[1]) is int and reported[1] > after
            ):
                after = reported[1]
            history = self.rooms.get(room)
            if history is None:
                return None
            history.trim(oldest)
            entries = history.since(epoch, after, held.sid)
            if entries is None:
                return None
            missed.extend(entries)
        missed.sort(key=_order_of)
        return missed

    def sweep(self, rooms_in_use: Any) -> list[str]:
        """Drop expired sessions and what no one can resume from any more; the ids of the
        sessions of a cluster that expired here."""
        if self.broker is not None:
            return self.broker.sweep()
        now = time.monotonic()
        for sid in [sid for sid, held in self.held.items() if held.expires < now]:
            self._release(self.held.pop(sid))
        oldest = now - self.ttl
        for held in self.held.values():
            held.state.trim(oldest)
        for name in list(self.rooms):
            history = self.rooms[name]
            history.trim(oldest)
            if not history.entries and not history.holders and name not in rooms_in_use:
                del self.rooms[name]
        return []

    def _release(self, held: Held) -> None:
        for room in held.rooms:
            history = self.rooms.get(room)
            if history is not None:
                history.holders -= 1

    def stats(self) -> dict[str, int]:
        broker = self.broker
        return {
            "heldSessions": len(self.held if broker is None else broker.held),
            "recovered": self.recovered,
            "recoveryFailed": self.failed,
            "heldEvicted": self.evicted,
            "historyRooms": len(self.rooms),
            "historyMessages": sum(len(h.entries) for h in self.rooms.values()),
            "unlogged": 0 if broker is None else broker.unlogged,
            "lostDirect": 0 if broker is None else broker.lost_direct,
            "gaps": 0 if broker is None else broker.gaps,
            "caughtUp": 0 if broker is None else broker.caught_up,
        }


def _order_of(entry: Entry) -> int:
    return entry[1]
