"""``RedisStore``: recovery in a cluster on Redis (protocol.md section 8), so a client may resume
on any node. Room histories are the logged room channels of ``cluster/roomlog.py`` (Redis
numbers, logs and publishes every room message); this module holds sessions and computes a
replay from those histories.

Sessions
    A dropped session is written to ``{<prefix>.s.<sid>}`` (MessagePack, expiring after
    ``recovery_window``); direct messages sent to it meanwhile (they reach the node that held
    it: socket ids start with their node's id) go to the list ``{<prefix>.s.<sid>}:o``. A
    resume on any node takes both at once (a script: get and delete), so a session resumes
    once. A session that resumed on another node keeps its id: its old node forwards what is
    sent to it (``forward``; see ``ClusterNode.moved``).

Replay
    The resume flow (``recovery/resume.py``) joins the session's rooms before ``missed`` reads
    their histories, buffering what they deliver meanwhile; a message may then come twice (in
    the history and live): the client drops what it has seen by position.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Container, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket.cluster.brokers.scripts import Script, ScriptCall
from smartsocket.cluster.catchup import gap_notice
from smartsocket.protocol import envelope
from smartsocket.recovery.state import DirectLog, Entry, Held, Replies, SessionState
from smartsocket.recovery.store import RoomItem, RoomView

if TYPE_CHECKING:
    from smartsocket.cluster.brokers.base import BrokerAdapter
    from smartsocket.cluster.roomlog import RoomLogs
    from smartsocket.config import Config
    from smartsocket.recovery.state import HeldSocket

logger = logging.getLogger("smartsocket.recovery")

# Session keys: KEYS[1] the session, [2] its direct messages, [3] the node it resumed on,
# [4] the digest of its token.

TAKE = Script("""
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return false end
local blob = redis.call('GET', KEYS[1])
if not blob then return false end
local out = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return {blob, out}
""")

HOLD = Script("""
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
""")

REFRESH = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
""")

APPEND = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.call('GET', KEYS[3]) or 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
return 1
""")


class SessionBlob(msgspec.Struct, array_like=True, gc=False):
    """A held session as stored in Redis (``v``: format version)."""

    v: int
    token: str  # SHA-256 of the session token
    identity: Any
    data: Any
    presence: Any
    rooms: list[str]
    joined: dict[str, tuple[str, int]]
    seq: int
    outbox: list[tuple[int, int, bytes, bool]]  # (seq, wall ms, payload with its seq, binary)
    replies: list[tuple[Any, Any, Any]]  # (key, result, error) of recent idempotent calls
    marks: list[str] = []  # positions sent to a Socket.IO client (recovery/marks.py)
    marks_seq: int = -1


class DirectEntry(msgspec.Struct, array_like=True, gc=False):
    seq: int
    ms: int
    payload: bytes
    binary: bool


BLOB_VERSION = 1
_encode = msgspec.msgpack.Encoder().encode
_blob = msgspec.msgpack.Decoder(SessionBlob)
_direct = msgspec.msgpack.Decoder(DirectEntry)


class RedisStore:
    """Held sessions in Redis, room histories from the logged room channels
    (``recovery.store.SessionStore``). ``forward(sid, node, payload, binary)`` sends a direct
    message to a session of ours that resumed on ``node``; ``channel(room)`` names a room's
    channel; ``clock`` and ``wall`` (seconds, monotonic and epoch) are injectable."""

    keeps_sessions = True  # in Redis: another node may resume them after a shutdown

    def __init__(
        self, config: Config, adapter: BrokerAdapter, logs: RoomLogs, *, prefix: str,
        node_id: str, channel: Callable[[str], str],
        forward: Callable[[str, str, bytes, bool], None],
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
    ) -> None:
        self.adapter = adapter
        self.logs = logs
        self.prefix = prefix
        self.node_id = node_id
        self.channel = channel
        self.forward = forward
        self.clock = clock
        self.wall = wall
        self.window = config.recovery_window
        self.window_ms = round(config.recovery_window * 1000)
        self.size = config.history_size
        self.reply_limit = max(128, 2 * config.max_pending_acks)
        self.max_held = config.max_connections
        self.direct = DirectLog(self.size, clock)
        # Sessions this node held: sid -> [last direct seq, expiry (clock), SessionBlob].
        self.held: dict[str, list[Any]] = {}
        self.lost_direct = 0  # direct messages for a held session that expired meanwhile

    def session_keys(self, sid: str) -> list[str]:
        tag = f"{{{self.prefix}.s.{sid}}}"
        return [tag, tag + ":o", tag + ":at", tag + ":t"]

    def _now_ms(self) -> int:
        return int(self.wall() * 1000)

    # direct messages

    def direct_message(self, state: SessionState, event: str, data: Any, binary: bool) -> bytes:
        return self.direct.message(state, event, data, binary)

    def direct_payload(self, state: SessionState, payload: bytes, binary: bool) -> bytes:
        return self.direct.payload(state, payload, binary)

    # room history: Redis logs room messages as the node publishes them (cluster/roomlog.py)

    def log_room(
        self, room: str, event: str, data: Any, binary: bool, excluded: tuple[str, ...] | None,
    ) -> bytes | None:
        return None

    def position(self, room: str) -> tuple[str, int]:
        """The last position delivered on this node, or if there was none ``("", -t)``: what
        comes after wall-clock time ``t`` (ms)."""
        known = self.logs.positions.get(room)
        return known if known is not None else ("", -self._now_ms())

    async def read_room(self, room: str, after: int) -> RoomView | None:
        log = await self.logs.read_room(self.channel(room), after)
        if log is None:
            return None
        items = [RoomItem(e.offset, e.payload, e.binary, e.excluded, e.ms) for e in log.entries]
        return RoomView(log.epoch, log.last, items, log.current)

    # sessions

    def hold(self, socket: HeldSocket, state: SessionState) -> None:
        """Write a dropped session to Redis (queued in order with this node's messages: direct
        messages to it that follow find it there)."""
        wall_minus_mono = self.wall() - self.clock()  # outbox times: monotonic -> wall ms
        outbox = [
            (seq, int((wall_minus_mono + at) * 1000), payload, binary)
            for seq, _, at, payload, binary, _ in state.outbox or ()
        ]
        blob = SessionBlob(
            BLOB_VERSION, _digest(socket.token), socket.identity, socket.data, socket.presence,
            socket.joined_rooms(), dict(state.joined), state.seq, outbox, _replies(state),
            list(state.marks or ()), state.marks_seq,
        )
        try:
            encoded = _encode(blob)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            logger.warning("session %s cannot be held: its data is not MessagePack (%s)",
                           socket.id, exc)
            return
        keys = self.session_keys(socket.id)
        call = ScriptCall(HOLD, keys, [encoded, self.window_ms, _digest(socket.token)])
        if not self.adapter.publish(keys[0], call):
            logger.warning("session %s not held: the broker is unreachable", socket.id)
            return
        held = self.held
        while len(held) >= self.max_held:  # the oldest local record goes (Redis expires it)
            del held[next(iter(held))]
        held[socket.id] = [state.seq, self.clock() + self.window, blob]

    def holds(self, sid: str) -> bool:
        entry = self.held.get(sid)
        return entry is not None and entry[1] >= self.clock()

    def refresh(self, sid: str, state: SessionState) -> None:
        """A call of held session ``sid`` finished after it was written: store its outcome
        too, so a retry after a resume (anywhere) is answered from it (if not resumed yet)."""
        entry = self.held.get(sid)
        if entry is None:
            return
        blob = entry[2]
        blob.replies = _replies(state)
        keys = self.session_keys(sid)
        with contextlib.suppress(TypeError, ValueError, OverflowError, msgspec.EncodeError):
            self.adapter.publish(keys[0], ScriptCall(REFRESH, keys, [_encode(blob)]))

    def send_held(self, sid: str, payload: bytes, binary: bool) -> bool:
        """A message (encoded, without meta) for a session this node held: numbered and
        appended to its stored outbox. False if the session is not held here (any more)."""
        entry = self.held.get(sid)
        if entry is None or entry[1] < self.clock():
            self.held.pop(sid, None)
            return False
        entry[0] += 1
        seq = entry[0]
        numbered = envelope.with_meta(payload, seq, binary=binary)
        record = _encode(DirectEntry(seq, self._now_ms(), numbered, binary))
        keys = self.session_keys(sid)

        def appended(result: Any) -> None:
            if isinstance(result, bytes):
                # Resumed on that node before this one heard of it: send it there.
                self.forward(sid, result.decode(), payload, binary)
            elif result != 1:
                self.lost_direct += 1

        return self.adapter.publish(keys[0], ScriptCall(APPEND, keys, [record], appended))

    async def take(self, sid: Any, token: Any, identity: Any) -> Held | None:
        """Take the held session ``sid`` for this node if ``token`` is its token (the script
        compares the digests: a wrong token leaves the session alone)."""
        if type(sid) is not str or type(token) is not str:
            return None
        args = [_digest(token), self.node_id, self.window_ms]
        reply = await self.adapter.run_script(TAKE, self.session_keys(sid), args)
        if not reply:
            return None
        blob = _blob.decode(reply[0])
        if blob.v != BLOB_VERSION:
            return None
        held = self._held_from_blob(sid, token, blob, [_direct.decode(r) for r in reply[1]])
        if _encode(held.identity) != _encode(identity):
            return None
        return held

    def drop(self, sid: str) -> None:
        self.held.pop(sid, None)

    def sweep(self, rooms_in_use: Container[str]) -> list[str]:
        """Forget sessions whose window passed; their ids."""
        now = self.clock()
        expired = [sid for sid, entry in self.held.items() if entry[1] < now]
        for sid in expired:
            del self.held[sid]
        return expired

    def _held_from_blob(
        self, sid: str, token: str, blob: SessionBlob, appended: list[DirectEntry],
    ) -> Held:
        state = SessionState(None)
        state.joined = {room: (epoch, offset) for room, (epoch, offset) in blob.joined.items()}
        if blob.marks:
            state.marks = deque(blob.marks)
        state.marks_seq = blob.marks_seq
        mono_minus_wall = self.clock() - self.wall()
        outbox = [(seq, ms, payload, binary) for seq, ms, payload, binary in blob.outbox]
        outbox += [(e.seq, e.ms, e.payload, e.binary) for e in appended]
        state.seq = max([blob.seq, *(entry[0] for entry in outbox)])
        if outbox:
            state.outbox = deque(
                ((seq, 0, ms / 1000 + mono_minus_wall, payload, binary, None)
                 for seq, ms, payload, binary in outbox),
                maxlen=self.size,
            )
        if blob.replies:
            replies = state.replies = Replies(self.reply_limit)
            for key, result, error in blob.replies:
                replies.done[key] = (result, tuple(error) if error is not None else None)
        return Held(sid, token, blob.identity, blob.data, blob.presence, list(blob.rooms),
                    state, 0.0)

    # replay

    async def missed(
        self, held: Held, offsets: dict[str, Any], seq: int
    ) -> list[tuple[bytes, bool]] | None:
        direct = held.state.since(max(seq, 0))
        if direct is None:
            return None
        sources = [self._direct_source(direct)]
        gaps: list[tuple[bytes, bool]] = []
        for room in held.rooms:
            entries = await self._missed_in_room(room, held, offsets.get(room))
            if entries is None:
                if self.logs.history.of(room).size:
                    return None
                gaps.append((gap_notice(room), False))  # keeps no history: say so instead
                continue
            sources.append(iter(entries))
        return gaps + [(payload, binary) for _, payload, binary in heapq.merge(*sources)]

    async def _missed_in_room(
        self, room: str, held: Held, reported: Any,
    ) -> list[tuple[int, bytes, bool]] | None:
        """(wall ms, payload, binary) of the room messages ``held`` missed; None if some are
        gone (trimmed, too old, another epoch, a history that may have lost its tail) or, in
        a room that keeps no history (``history_size`` 0), may have been sent."""
        epoch, after = held.state.joined.get(room, ("", -self._now_ms()))
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
        channel = self.channel(room)
        history = await self.logs.read_room(channel, after if later is None else later[1])
        if later is not None:
            if history is not None and history.epoch == later[0]:
                epoch, after = later
            else:  # not the room's epoch (any more): from the join
                history = await self.logs.read_room(channel, after)
        if history is None:
            # No history: nothing was sent to the room since it expired. Fine if the socket
            # knew no position in it, or joined it after the last message it could have seen.
            return [] if epoch == "" else None
        if not history.current:
            return None  # the broker restarted or failed over since: its tail may be lost
        current, last, entries = history.epoch, history.last, history.entries
        limits = self.logs.history.of(room)
        if not limits.size:  # a room that keeps no history: nothing missed, or a gap
            return [] if current == epoch and after == last else None
        oldest = self._now_ms() - limits.ttl_ms
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

    def _direct_source(self, entries: list[Entry]) -> Iterator[tuple[int, bytes, bool]]:
        wall_minus_mono = self.wall() - self.clock()
        for entry in entries:
            yield int((entry[2] + wall_minus_mono) * 1000), entry[3], entry[4]

    def stats(self) -> dict[str, int]:
        logs = self.logs
        return {
            "heldSessions": len(self.held),
            "heldEvicted": 0,
            "historyRooms": 0,
            "historyMessages": 0,
            "unlogged": logs.unlogged,
            "lostDirect": self.lost_direct,
            "gaps": logs.gaps,
            "caughtUp": logs.caught_up,
        }


def _replies(state: SessionState) -> list[tuple[Any, Any, Any]]:
    if state.replies is None:
        return []
    return [(key, result, error) for key, (result, error) in state.replies.done.items()]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
