"""Logged room channels: with recovery in a cluster on Redis, Redis numbers, logs and publishes
every room message (protocol.md section 8), so a client may resume on any node and a node can
catch a room up after an outage.

Room history
    A room broadcast is not published as is: a Lua script, run by Redis atomically, gives it
    the room's next offset (``HINCRBY`` on ``{<room channel>}:m``, which also holds the epoch),
    appends it to the stream ``{<room channel>}:h`` (entry id ``<offset>-0``, capped at
    the room's history size: ``history.py``, the server's ``history_size`` or the room policy's;
    0 keeps no entry) and publishes it on the room channel prefixed with its position:
    ``P<epoch> <offset> <envelope>``. Every node with members, the sender included, delivers
    it from its subscription, in the order Redis published: offsets arrive in order everywhere,
    and each node adds the position to the payload once per broadcast. The keys share the
    channel's hash tag, so on a Redis Cluster they live on the shard of the room's sharded
    channel. Idle keys expire after ``recovery_window + history_ttl`` (the room's TTL, as its
    size); an expired room starts a new epoch. The size and expiry are arguments of each
    call: every publisher must give a room the same ones (nodes with the same policies do; an
    emitter is given them, docs/emitter.md).

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

The sessions held in Redis are ``recovery/redis.py``'s; catch-up after an outage is
``catchup.py``'s. This stays in ``cluster/``: numbering and ordering what a room channel
carries is the node's delivery, which the node drives (link state, subscriptions).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import msgspec

from smartsocket.cluster.brokers.scripts import Script, ScriptCall
from smartsocket.history import HistoryLimits

if TYPE_CHECKING:
    from smartsocket.cluster.brokers.base import BrokerAdapter
    from smartsocket.config import Config

# ARGV: channel, envelope, history size (0: none kept), expiry ms, a new epoch, publish
# command, the packed entry, the server's incarnation (added by the adapter).
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
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[2])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'e', ARGV[7], 't', ms)
end
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

_encode = msgspec.msgpack.Encoder().encode
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


class RoomLogs:
    """This node's logged room channels: logging and publishing room messages, reading a
    room's history, and the position of the last message delivered here per room."""

    def __init__(
        self, config: Config, adapter: BrokerAdapter, history: HistoryLimits | None = None,
    ) -> None:
        self.adapter = adapter
        # Each room's history size and TTL (history.py): the server's, or its policy's.
        self.history = history if history is not None else HistoryLimits.of_config(config)
        self.publish_command = "SPUBLISH" if adapter.name == "redis-cluster" else "PUBLISH"
        # Position of the last room message delivered on this node, per room.
        self.positions: dict[str, tuple[str, int]] = {}
        self.unlogged = 0  # room messages sent without a position (the broker was down)
        self.gaps = 0  # $gap notices sent to a room's local members (catchup.py)
        self.caught_up = 0  # room messages delivered from the history after an outage

    @staticmethod
    def room_keys(channel: str) -> list[str]:
        """A room's keys, hash-tagged: they live with its channel on a Redis Cluster."""
        return [f"{{{channel}}}:m", f"{{{channel}}}:h"]

    def publish_room(
        self, room: str, channel: str, envelope: bytes, payload: bytes, binary: bool,
        excluded: list[str],
    ) -> bool:
        """Queue a room message for logging and publishing (in order with this node's other
        messages); False if the broker cannot take it now."""
        history = self.history.of(room)
        args = [
            channel, envelope, history.size, history.expire_ms, secrets.token_urlsafe(6),
            self.publish_command, _encode((payload, binary, excluded)),
        ]
        return self.adapter.publish(channel, ScriptCall(LOG, self.room_keys(channel), args))

    async def read_room(self, channel: str, after: int) -> RoomLog | None:
        """The room's epoch, last offset and entries after ``after`` (all with a negative
        one); None if the room has no history."""
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


def parse_logged(data: bytes) -> tuple[str, int, bytes]:
    """``P<epoch> <offset> <envelope>`` -> (epoch, offset, envelope)."""
    head, _, rest = data.partition(b" ")
    offset, _, envelope = rest.partition(b" ")
    return head[1:].decode(), int(offset), envelope
