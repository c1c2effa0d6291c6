"""A session's recovery state, the same with every store: its direct-message log, where it
joined each room, the replies to its recent idempotent calls, and what a held session keeps.

Entries are ``(offset or seq, order, time, payload, binary, excluded socket ids)``. Only atomic
items (the ids in a tuple, not a set): the garbage collector stops tracking such tuples, and a
server with many rooms keeps ~100 of them per room.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

from smartsocket.protocol import envelope

Entry = tuple[int, int, float, bytes, bool, tuple[str, ...] | None]
# (code, message, retry_after) of a call that failed
Failure = tuple[str, str, float | None]


class HeldSocket(Protocol):
    """What a store keeps of a socket whose session it holds."""

    @property
    def id(self) -> str: ...

    @property
    def token(self) -> str: ...

    @property
    def identity(self) -> Any: ...

    @property
    def data(self) -> dict[str, Any]: ...

    @property
    def presence(self) -> dict[str, Any]: ...

    def joined_rooms(self) -> list[str]: ...


class SessionState:
    """Recovery state of one socket, live or held: its direct-message log, where it joined
    each room, and the replies to its recent idempotent calls."""

    __slots__ = ("joined", "marks", "marks_seq", "outbox", "owner", "replies", "seq")

    def __init__(self, owner: object | None) -> None:
        self.owner = owner  # the connected socket of this session; None while held
        self.seq = 0  # sequence number of the last direct message
        self.outbox: deque[Entry] | None = None  # made on the first direct message
        self.joined: dict[str, tuple[str, int]] = {}  # room -> (epoch, offset) at join
        self.replies: Replies | None = None
        # Clients that report one offset (Socket.IO): the positions sent, in order
        # (recovery/marks.py), and the direct seq below them (-1: none left the window).
        self.marks: deque[str] | None = None
        self.marks_seq = -1

    def since(self, after: int) -> list[Entry] | None:
        """Direct messages after ``after``; None if some are gone (or ``after`` is wrong)."""
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
        self.running: dict[int, tuple[Any, Any]] = {}  # ack id -> (key, connection)
        self.done: OrderedDict[Any, tuple[Any, Failure | None]] = OrderedDict()

    def is_running(self, key: Any) -> bool:
        return any(k == key for k, _ in self.running.values())

    def finish(self, ack_id: int, result: Any, error: Failure | None) -> list[tuple[int, Any]]:
        """Record the outcome of call ``ack_id``: the calls to answer with it (``ack_id`` and
        any retry of the same key that came while it ran), each with its connection."""
        key, socket = self.running.pop(ack_id)
        waiting = [(ack_id, socket)]
        for other, (other_key, other_socket) in list(self.running.items()):
            if other_key == key:
                del self.running[other]
                waiting.append((other, other_socket))
        self.remember(key, result, error)
        return waiting

    def remember(self, key: Any, result: Any, error: Failure | None) -> None:
        done = self.done
        done[key] = (result, error)
        done.move_to_end(key)
        while len(done) > self.limit:
            done.popitem(last=False)


class Held:
    """A dropped session, as a store gives it back for resuming."""

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
    def of(cls, socket: HeldSocket, state: SessionState, expires: float) -> Held:
        return cls(socket.id, socket.token, socket.identity, socket.data, socket.presence,
                   socket.joined_rooms(), state, expires)


class DirectLog:
    """Numbers and logs the direct messages of connected sessions (kept in memory with every
    store: a session goes to its store when it drops). ``order`` is shared with the store's
    room histories: the replay's send order."""

    __slots__ = ("clock", "order", "size")

    def __init__(
        self, size: int, clock: Callable[[], float], order: Callable[[], int] | None = None,
    ) -> None:
        self.size = size
        self.clock = clock
        self.order = order or itertools.count(1).__next__

    def message(self, state: SessionState, event: str, data: Any, binary: bool) -> bytes:
        """Encode a message to one socket with its sequence number, and log it."""
        payload = envelope.encode_event(event, data, binary=binary, meta=state.seq + 1)
        return self.log(state, payload, binary)

    def payload(self, state: SessionState, payload: bytes, binary: bool) -> bytes:
        """The same for a message encoded already (without meta: from another node)."""
        return self.log(state, envelope.with_meta(payload, state.seq + 1, binary=binary), binary)

    def log(self, state: SessionState, payload: bytes, binary: bool) -> bytes:
        seq = state.seq = state.seq + 1
        outbox = state.outbox
        if outbox is None:
            outbox = state.outbox = deque(maxlen=self.size)
        outbox.append((seq, self.order(), self.clock(), payload, binary, None))
        return payload


def order_of(entry: Entry) -> int:
    return entry[1]
