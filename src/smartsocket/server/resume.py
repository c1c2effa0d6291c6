"""Resuming a session in a cluster on Redis: the held session and the room histories come from
Redis (cluster/sessions.py), so the client may come back to any node.

Order matters: the socket joins its rooms (subscribing this node to their channels) before
the histories are read, and what the rooms deliver meanwhile is buffered; the replay goes out
first, then the buffer. A message may then arrive twice (in the history and live): the client
drops what it has seen by position (protocol.md section 8), so nothing is lost or doubled.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket.protocol import envelope
from smartsocket.server.recovery import Held, Recovery, Replies, SessionState

if TYPE_CHECKING:
    from smartsocket.cluster.sessions import BrokerRecovery, DirectEntry, SessionBlob
    from smartsocket.server.app import SmartSocket
    from smartsocket.server.socket import Socket

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
    server: SmartSocket, broker: BrokerRecovery, socket: Socket, held: Held | None,
    info: dict[str, Any],
) -> Resumed | None:
    """Take the session ``info`` names (or ``held``, taken over from a connection here),
    join its rooms and compute what its client missed; None if it cannot resume."""
    sid, token = info.get("sid"), info.get("token")
    if held is None:
        if type(sid) is not str or type(token) is not str:
            return None
        taken = await broker.take(sid, token, server._cluster.node_id)
        if taken is None:
            return None
        assert server._recovery is not None
        held = _held_from_blob(sid, token, *taken, server._recovery)
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
    registry = server._registry
    done = False
    try:
        for room in held.rooms:
            if registry.add(room, socket, buffered.append):
                socket._rooms[room] = None
                joined.append(room)
        for room in joined:
            await server._cluster.subscribed(room, 2.0)
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
    broker: BrokerRecovery, server: SmartSocket, room: str, held: Held, reported: Any,
) -> list[tuple[int, bytes, bool]] | None:
    """(wall ms, payload, binary) of the room messages ``held`` missed; None if some are
    gone (trimmed, too old, another epoch)."""
    epoch, after = held.state.joined.get(room, ("", -_now_ms()))
    if (
        type(reported) is list and len(reported) == 2 and type(reported[0]) is str
        and type(reported[1]) is int and reported[1] >= 0
        and (epoch == "" or (reported[0] == epoch and reported[1] > after))
    ):
        epoch, after = reported
    channel = server._cluster.room_channel(room)
    history = await broker.read_room(channel, after)
    if history is None:
        # No history: nothing was sent to the room since it expired. Fine if the socket knew
        # no position in it, or joined it after the last message it could have seen.
        return [] if epoch == "" else None
    current, last, entries = history
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
