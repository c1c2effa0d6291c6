"""Recovery in a cluster: room history and held sessions in Redis, so a client may resume on
any node (protocol.md section 8; the single-node version is server/recovery.py).

Room history
    A room broadcast is not published as is: a Lua script, run by Redis atomically, gives it
    the room's next offset (``HINCRBY`` on ``{<room channel>}:m``, which also holds the epoch),
    appends it to the stream ``{<room channel>}:h`` (entry id ``<offset>-0``, capped at
    ``history_size`` entries) and publishes it on the room channel prefixed with its position:
    ``P<epoch> <offset> <envelope>``. Every node with members, the sender included, delivers
    it from its subscription, in the order Redis published: offsets arrive in order everywhere,
    and each node adds the position to the payload once per broadcast. The keys share the
    channel's hash tag, so on a Redis Cluster they live on the shard of the room's sharded
    channel. Idle keys expire after ``recovery_window + history_ttl``; an expired room starts a
    new epoch.

Rewinds (a restart that lost writes, a restore from an older snapshot, a failover to a replica
that lagged)
    Clients drop a message whose (room, epoch, offset) they have seen, so an offset must never
    be given twice within an epoch. Redis numbers the messages, so the danger is Redis itself
    going back in time: the counter in ``{<room channel>}:m`` then restarts below offsets that
    clients already hold. A node cannot see that from the data (the old state looks valid),
    so the epoch is tied to what *does* change with every such event: the server's
    incarnation, ``<run_id>:<master_replid>`` (``redis.read_incarnation``; run_id is new on
    every start, master_replid on every promotion). Every script gets the incarnation of the
    server it runs on (read by the node when its link came up; the link breaks on every
    restart or failover, so a node never writes with another server's incarnation), ``LOG``
    stores it beside the epoch, and mints a new epoch (dropping the old history) when the
    stored one differs. So every offset of an epoch was given by one server incarnation,
    whose data only moved forward: offsets never repeat within an epoch. The cost: every
    restart starts new epochs, lost writes or not (a resume from the old epoch gets
    ``recovered: false``; connected clients get ``$gap``, see ``cluster/catchup.py``).
    ``READ`` tells whether the room's epoch belongs to the current incarnation: if not, its
    history may be missing a tail that clients saw, so nothing is resumed or caught up from
    it. Not covered: an operator who writes old values of these keys into a running server
    (``RESTORE``, ``DEBUG RELOAD NOSAVE``); delete the ``:m`` keys after doing that. Without
    ``INFO`` (renamed by some managed services) the incarnation is "" and rewinds go unseen
    (logged at connect).

Sessions
    A dropped session is written to ``{<prefix>.s.<sid>}`` (MessagePack, expiring after
    ``recovery_window``); direct messages sent to it meanwhile (they reach the node that held
    it: socket ids start with their node's id) go to the list ``{<prefix>.s.<sid>}:o``. A
    resume on any node takes both at once (a script: get and delete), so a session resumes
    once. A session that resumed on another node keeps its id: its old node forwards what is
    sent to it (see ``ClusterNode.moved``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket.cluster.brokers.scripts import Script, ScriptCall
from smartsocket.protocol import envelope

if TYPE_CHECKING:
    from smartsocket.cluster.brokers.base import BrokerAdapter
    from smartsocket.cluster.ports import HeldSessionState as SessionState
    from smartsocket.cluster.ports import HeldSocket as Socket
    from smartsocket.config import Config

logger = logging.getLogger("smartsocket.cluster")

# ARGV: channel, envelope, history size, expiry ms, a new epoch, publish command, the packed
# entry, the server's incarnation (added by the adapter).
LOG = Script("""
local state = redis.call('HMGET', KEYS[1], 'e', 'i')
local epoch = state[1]
if not epoch or state[2] ~= ARGV[8] then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'n', 0, 'i', ARGV[8])
end
local offset = redis.call('HINCRBY', KEYS[1], 'n', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'e', ARGV[7], 't', ms)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[6], ARGV[1], 'P' .. epoch .. ' ' .. offset .. ' ' .. ARGV[2])
return offset
""")

# ARGV: the first entry id, the server's incarnation. Returns the epoch, its last offset, the
# entries, and 1 if the epoch belongs to this incarnation (its history has no lost tail).
READ = Script("""
local state = redis.call('HMGET', KEYS[1], 'e', 'n', 'i')
if not state[1] then return false end
local current = 0
if state[3] == ARGV[2] then current = 1 end
return {state[1], state[2], redis.call('XRANGE', KEYS[2], ARGV[1], '+'), current}
""")

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


class DirectEntry(msgspec.Struct, array_like=True, gc=False):
    seq: int
    ms: int
    payload: bytes
    binary: bool


BLOB_VERSION = 1
_encode = msgspec.msgpack.Encoder().encode
_blob = msgspec.msgpack.Decoder(SessionBlob)
_direct = msgspec.msgpack.Decoder(DirectEntry)
_entry = msgspec.msgpack.Decoder(tuple[bytes, bool, list[str]]).decode


class RoomEntry(msgspec.Struct, gc=False):
    offset: int
    ms: int
    payload: bytes
    binary: bool
    excluded: list[str]


class RoomLog(msgspec.Struct, gc=False):
    """A room's history as read from Redis: ``current`` is False when its epoch was given by
    another incarnation of the server (a restart or failover since: a tail may be lost)."""

    epoch: str
    last: int
    entries: list[RoomEntry]
    current: bool


class BrokerRecovery:
    """This node's side of recovery in a Redis-backed cluster."""

    def __init__(self, config: Config, adapter: BrokerAdapter, prefix: str) -> None:
        self.adapter = adapter
        self.prefix = prefix
        self.window_ms = round(config.recovery_window * 1000)
        self.ttl_ms = round((config.history_ttl or config.recovery_window) * 1000)
        self.size = config.history_size
        self.max_held = config.max_connections
        self.expire_ms = self.window_ms + self.ttl_ms
        self.publish_command = "SPUBLISH" if adapter.name == "redis-cluster" else "PUBLISH"
        # Position of the last room message delivered on this node, per room.
        self.positions: dict[str, tuple[str, int]] = {}
        # Sessions this node held: sid -> [last direct seq, expiry (monotonic), SessionBlob].
        self.held: dict[str, list[Any]] = {}
        self.unlogged = 0  # room messages sent without a position (the broker was down)
        self.lost_direct = 0  # direct messages for a held session that expired meanwhile
        self.gaps = 0  # $gap notices sent to a room's local members (cluster/catchup.py)
        self.caught_up = 0  # room messages delivered from the history after an outage
        # Sends a direct message to a session that resumed on another node (set by the node).
        self.forward: Callable[[str, str, bytes, bool], None] | None = None

    # keys (hash-tagged: a room's keys live with its channel on a Redis Cluster)

    @staticmethod
    def room_keys(channel: str) -> list[str]:
        return [f"{{{channel}}}:m", f"{{{channel}}}:h"]

    def session_keys(self, sid: str) -> list[str]:
        tag = f"{{{self.prefix}.s.{sid}}}"
        return [tag, tag + ":o", tag + ":at", tag + ":t"]

    # room messages

    def publish_room(
        self, channel: str, envelope: bytes, payload: bytes, binary: bool, excluded: list[str],
    ) -> bool:
        """Queue a room message for logging and publishing (in order with this node's other
        messages); False if the broker cannot take it now."""
        args = [
            channel, envelope, self.size, self.expire_ms, secrets.token_urlsafe(6),
            self.publish_command, _encode((payload, binary, excluded)),
        ]
        return self.adapter.publish(channel, ScriptCall(LOG, self.room_keys(channel), args))

    async def read_room(self, channel: str, after: int) -> RoomLog | None:
        """The room's epoch, last offset and entries after ``after``; None if the room has
        no history."""
        start = f"{after + 1}-0" if after >= 0 else "-"
        reply = await self.adapter.run_script(READ, self.room_keys(channel), [start])
        if not reply:
            return None
        epoch, last, raw, current = reply
        entries = []
        for entry_id, fields in raw:  # fields: [b"e", packed entry, b"t", ms]
            payload, binary, excluded = _entry(fields[1])
            entries.append(RoomEntry(
                int(entry_id[:-2]), int(fields[3]), payload, binary, excluded
            ))
        return RoomLog(epoch.decode(), int(last), entries, current == 1)

    # sessions

    def hold(self, socket: Socket, state: SessionState) -> None:
        """Write a dropped session to Redis (queued in order with this node's messages: direct
        messages to it that follow find it there)."""
        wall, mono = time.time(), time.monotonic()  # outbox times: monotonic -> wall ms
        outbox = [
            (seq, int((wall - mono + at) * 1000), payload, binary)
            for seq, _, at, payload, binary, _ in state.outbox or ()
        ]
        blob = SessionBlob(
            BLOB_VERSION, _digest(socket.token), socket.identity, socket.data, socket.presence,
            socket.joined_rooms(), dict(state.joined), state.seq, outbox, _replies(state),
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
        held[socket.id] = [state.seq, time.monotonic() + self.window_ms / 1000, blob]

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

    def direct(self, sid: str, payload: bytes, binary: bool) -> bool:
        """A message (encoded, without meta) for a session this node held: numbered and
        appended to its stored outbox. False if the session is not held here (any more)."""
        entry = self.held.get(sid)
        if entry is None or entry[1] < time.monotonic():
            self.held.pop(sid, None)
            return False
        entry[0] += 1
        seq = entry[0]
        numbered = envelope.with_meta(payload, seq, binary=binary)
        record = _encode(DirectEntry(seq, int(time.time() * 1000), numbered, binary))
        keys = self.session_keys(sid)

        def appended(result: Any) -> None:
            if isinstance(result, bytes) and self.forward is not None:
                # Resumed on that node before this one heard of it: send it there.
                self.forward(sid, result.decode(), payload, binary)
            elif result != 1:
                self.lost_direct += 1

        return self.adapter.publish(keys[0], ScriptCall(APPEND, keys, [record], appended))

    async def take(
        self, sid: str, token: str, node_id: str
    ) -> tuple[SessionBlob, list[DirectEntry]] | None:
        """Take the held session ``sid`` for node ``node_id`` if ``token`` is its token (the
        script compares the digests: a wrong token leaves the session alone)."""
        args = [_digest(token), node_id, self.window_ms]
        reply = await self.adapter.run_script(TAKE, self.session_keys(sid), args)
        if not reply:
            return None
        blob = _blob.decode(reply[0])
        if blob.v != BLOB_VERSION:
            return None
        return blob, [_direct.decode(raw) for raw in reply[1]]

    def sweep(self) -> list[str]:
        """Forget sessions whose window passed; their ids."""
        now = time.monotonic()
        expired = [sid for sid, entry in self.held.items() if entry[1] < now]
        for sid in expired:
            del self.held[sid]
        return expired


def _replies(state: SessionState) -> list[tuple[Any, Any, Any]]:
    if state.replies is None:
        return []
    return [(key, result, error) for key, (result, error) in state.replies.done.items()]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_logged(data: bytes) -> tuple[str, int, bytes]:
    """``P<epoch> <offset> <envelope>`` -> (epoch, offset, envelope)."""
    head, _, rest = data.partition(b" ")
    offset, _, envelope = rest.partition(b" ")
    return head[1:].decode(), int(offset), envelope
