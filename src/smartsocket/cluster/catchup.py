"""Room messages across broker outages, with recovery on Redis (protocol.md section 8,
"Gaps").

``RoomSync`` owns this node's view of each room's position and the delivery of logged room
messages (``P<epoch> <offset> <envelope>``, cluster/roomlog.py) to local members, so that a
member either gets every message of its rooms, in order, or a ``$gap`` notice for the room.

It stays in ``cluster/`` (not ``recovery/``): it orders what a room channel delivers to this
node's members across outages of the node's broker link, driven by the node's link events and
subscriptions; it holds no session, and ``cluster/`` never calls up into ``recovery/``.

Continuity
    While the link to Redis is up, this node's subscription hears every message of its rooms,
    in the order Redis numbered them: each message is the one after the last
    (``offset == last + 1`` in the same epoch, or offset 1 of a new epoch: the old one ended
    with what we saw). Anything else (a hole, a step back, a new epoch joined late) means
    something was missed or rewound: members get ``$gap`` before the message. Continuity
    starts anew when a first local member (re)subscribes the node to the room: until the
    broker confirms that subscription, what it sends is left over from the one before (the
    room emptied here and was unsubscribed), delivered but not taken as a position.

Link lost, link back (item by item)
    - Own messages on their way through Redis (queued, or sent and not yet back on our
      subscription) are delivered here when the link breaks, so the sender's count stays
      true; Redis may or may not have logged them, so their payloads are kept to be matched
      against the history below.
    - While the link is down, messages are delivered here without a position; the room is
      noted, and when the link is back its history is broken (new epoch, so no session
      resumes across it) and the other nodes are told to send ``$gap`` to their members.
    - When the link is back, each room with local members is caught up: messages arriving
      live are held back, the room's history after our last position is read (Redis
      numbered everything before the read, the subscription gets everything after): the
      missed messages are delivered in order (same epoch, nothing trimmed), and the members
      get ``$gap`` if they cannot be (another epoch, trimmed, no history) or if the epoch
      began under another incarnation of the server (it restarted or failed over since, so
      a tail that we never saw may be lost). Then what was held back.

Bounds
    What is held back while a room catches up, and the own messages delivered when the link
    broke (kept to be matched against the history), are at most ``limit`` per room (the
    adapter's outbound queue, ``max_queue``). Past it, the room's members get ``$gap``
    instead of a longer wait: the held-back messages are dropped (live delivery resumes
    with the next message), or the own messages are no longer matched (the room's epoch is
    broken, as for messages Redis never logged). Own messages in flight are remembered up to
    ``limit`` too; if older ones were forgotten and Redis ran none of the remembered ones
    when the link broke, the forgotten ones never reached our members: ``$gap``.

Everything here is per broadcast, never per delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from smartsocket.cluster import messages as m
from smartsocket.cluster.brokers.scripts import Script, ScriptCall
from smartsocket.protocol import envelope

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.cluster.roomlog import RoomLog, RoomLogs

logger = logging.getLogger("smartsocket.cluster")

# Start a new epoch for a room (its history lost messages: no resume may cross them) and tell
# the other nodes. ARGV: channel, publish command, the notice, incarnation (unused).
BREAK = Script("""
redis.call('DEL', KEYS[1], KEYS[2])
redis.call(ARGV[2], ARGV[1], ARGV[3])
return 1
""")

_NOWHERE = 1 << 60  # read a room's state without its entries
_READS_AT_ONCE = 64  # room histories read concurrently after an outage (one round trip each)


def gap_notice(room: str) -> bytes:
    """``["$gap", {"room": room}]``: messages of ``room`` may be lost (protocol.md 8, "Gaps")."""
    return envelope.encode_event("$gap", {"room": room})


class RoomSync:
    """Positions and delivery of this node's logged room messages (see the module doc)."""

    def __init__(self, node: ClusterNode, logs: RoomLogs, limit: int) -> None:
        self.node = node
        self.logs = logs
        self.limit = limit  # per room: own messages in flight, held back, uncertain
        self.positions = logs.positions  # room -> (epoch, offset) of the last delivered
        # Own messages sent to Redis and not back yet, per room (in order: one channel).
        self.pending: dict[str, deque[tuple[bytes, bool, list[str]]]] = {}
        # Payloads delivered here when the link broke: Redis may have logged them.
        self.uncertain: dict[str, list[bytes]] = {}
        self.unlogged_rooms: set[str] = set()  # rooms with messages Redis never logged
        # Rooms whose uncertain messages went over ``limit``: $gap at catch-up.
        self.overflowed: set[str] = set()
        # Rooms whose in-flight queue forgot own messages not back yet (over ``limit``).
        self.forgotten: set[str] = set()
        # Rooms being caught up: logged messages held back meanwhile.
        self.holding: dict[str, list[tuple[str, int, m.Broadcast]]] = {}
        # Rooms (re)subscribed for a first local member, until the broker confirms it.
        self.subscribing: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def catching_up(self) -> int:
        """Rooms waiting for their history to be read (held back since the link broke)."""
        return len(self.holding)

    # sending

    def sent(self, room: str, payload: bytes, binary: bool, excluded: list[str]) -> None:
        """An own message of ``room`` (which has local members) went to Redis."""
        queue = self.pending.get(room)
        if queue is None:
            queue = self.pending[room] = deque(maxlen=self.limit)
        elif len(queue) == queue.maxlen:
            # The oldest is forgotten. Redis runs one link's calls in order: if the link
            # breaks, either it ran the forgotten one (the catch-up finds it in the history)
            # or none of the later ones either, and then our members never had it: $gap.
            self.forgotten.add(room)
        queue.append((payload, binary, excluded))

    def unlogged(self, room: str) -> None:
        """A message of ``room`` was delivered here only (the broker is down)."""
        self.unlogged_rooms.add(room)

    # receiving

    def logged(self, room: str, epoch: str, offset: int, body: m.Broadcast, own: bool) -> None:
        if own:
            queue = self.pending.get(room)
            if queue and _back(queue, body.payload):
                self.forgotten.discard(room)  # the forgotten ones were before it: settled
        held = self.holding.get(room)
        if held is not None:
            if len(held) < self.limit:
                held.append((epoch, offset, body))
                return
            # Caught up too slowly for what arrives: stop holding back. What was held back
            # is lost to the members (told), and delivery carries on from this message.
            del self.holding[room]
            self.gap(room)
            self.positions.pop(room, None)
        self._deliver(room, epoch, offset, body)

    def started(self, room: str, subscribed: asyncio.Future[None]) -> None:
        """``room`` got a first local member and this node subscribes to it: what it heard
        before (when it had members) says nothing about the new subscription."""
        self.positions.pop(room, None)
        self.subscribing[room] = subscribed

    def _deliver(self, room: str, epoch: str, offset: int, body: m.Broadcast) -> None:
        last = self.positions.get(room)
        subscribing = self.subscribing.get(room)
        if subscribing is not None:
            if subscribing.done():  # confirmed: what follows is the new subscription
                del self.subscribing[room]
            else:
                # Left over from the old subscription (the broker sends it before it confirms
                # the new one): the hole after it is not one of the new subscription, and a
                # $gap for it would make clients drop their dedupe state while a resume
                # replays the same messages (recovery/resume.py). Deliver, unchecked and
                # unrecorded.
                last = None
        if last is not None and (
            offset != last[1] + 1 if epoch == last[0] else offset != 1
        ):
            self.gap(room)  # missed or rewound: told, then carry on from here
        if room not in self.subscribing:
            self.positions[room] = (epoch, offset)
        local = self.node.local
        if not local.has_room(room):
            return
        payload = envelope.with_meta(body.payload, [room, epoch, offset], binary=body.binary)
        local.deliver(room, payload, body.binary, body.exclude)

    def gap(self, room: str) -> None:
        local = self.node.local
        if local.has_room(room):
            self.logs.gaps += 1
            local.deliver(room, gap_notice(room), False)

    def forget(self, room: str) -> None:
        """No local member left: the node stops hearing the room."""
        self.positions.pop(room, None)
        self.holding.pop(room, None)
        self.pending.pop(room, None)
        self.subscribing.pop(room, None)
        self.overflowed.discard(room)
        self.forgotten.discard(room)

    # the link

    def link_lost(self) -> None:
        local = self.node.local
        for room, queue in self.pending.items():
            uncertain = self.uncertain.setdefault(room, [])
            for payload, binary, excluded in queue:
                local.deliver(room, payload, binary, excluded)
                uncertain.append(payload)
            if len(uncertain) > self.limit:
                # Too many to match against the history: members get $gap at catch-up,
                # and the room's epoch is broken (like messages Redis never logged).
                del self.uncertain[room]
                self.overflowed.add(room)
                self.unlogged_rooms.add(room)
        self.pending.clear()
        for room in local.room_names():
            self.holding.setdefault(room, [])

    def link_up(self) -> None:
        for room in self.node.local.room_names():
            self.holding.setdefault(room, [])
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._catch_up_all())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _catch_up_all(self) -> None:
        rooms = list(self.holding)
        for start in range(0, len(rooms), _READS_AT_ONCE):
            batch = rooms[start:start + _READS_AT_ONCE]
            if not all(await asyncio.gather(*(self._catch_up(room) for room in batch))):
                return  # the link broke again: the next link_up goes on
        for room in list(self.uncertain) + list(self.unlogged_rooms):
            if not self._break(room):
                return

    async def _catch_up(self, room: str) -> bool:
        """Catch ``room`` up (or send ``$gap``), then deliver what was held back; False if
        the link broke again first."""
        node = self.node
        last = self.positions.get(room)
        log: RoomLog | None = None
        try:
            log = await self.logs.read_room(
                node.room_channel(room), last[1] if last is not None else _NOWHERE
            )
        except Exception as exc:
            adapter = node.adapter
            if adapter is None or not adapter.connected:
                logger.info("catching up room %r stopped: the broker link broke (%s)", room, exc)
                return False
            logger.warning("cannot read the history of room %r (%s): members get $gap", room,
                           exc)
            last = None
        held = self.holding.pop(room, None)
        if held is None:
            return True  # forgotten meanwhile
        uncertain = self.uncertain.get(room, [])
        if room in self.overflowed:
            self.overflowed.discard(room)
            last = None  # ours went out here, too many to match: $gap, not a catch-up
        if last is not None and log is not None and _follows(log, last):
            # What the history holds after our position (a prefix of the room's messages,
            # even where Redis went back: every state of an epoch is); then, if Redis may
            # have lost a tail of it since, $gap.
            members = node.local.has_room(room)
            for entry in log.entries:
                if entry.offset <= last[1]:
                    continue
                if entry.payload in uncertain:  # ours, delivered when the link broke
                    uncertain.remove(entry.payload)
                elif members:
                    payload = envelope.with_meta(
                        entry.payload, [room, log.epoch, entry.offset], binary=entry.binary
                    )
                    node.local.deliver(room, payload, entry.binary, entry.excluded)
                    self.logs.caught_up += 1
            self.positions[room] = (log.epoch, log.last)
            if not log.current or (room in self.forgotten and uncertain):
                # A tail may be lost; or Redis never ran our last ones (still uncertain),
                # so not the forgotten ones before them either, which our members never got.
                self.gap(room)
                self.positions.pop(room, None)
        else:
            self.gap(room)
            self.positions.pop(room, None)
        self.forgotten.discard(room)
        if room in self.uncertain and not uncertain:
            del self.uncertain[room]  # all of them were logged: others had them
        for epoch, offset, body in held:
            known = self.positions.get(room)
            if known is not None and epoch == known[0] and offset <= known[1]:
                continue  # in the history read above
            self._deliver(room, epoch, offset, body)
        return True

    def _break(self, room: str) -> bool:
        """Messages of ``room`` went out here only: tell the other nodes, and end the room's
        epoch (a session resuming across them must get ``recovered: false``)."""
        node = self.node
        adapter = self.logs.adapter
        channel = node.room_channel(room)
        notice = m.encode(node.node_id, m.Broadcast(room, gap_notice(room), False))
        call = ScriptCall(
            BREAK, self.logs.room_keys(channel), [channel, self.logs.publish_command, notice],
        )
        if not adapter.publish(channel, call):
            return False  # the link broke again: the next link_up goes on
        self.uncertain.pop(room, None)
        self.unlogged_rooms.discard(room)
        return True


def _back(queue: deque[tuple[bytes, bool, list[str]]], payload: bytes) -> bool:
    """Own message ``payload`` came back: it and the ones sent before it are settled (those
    never came back when the room's subscription was not confirmed yet, as for any message
    then). False if it was not in ``queue`` (forgotten)."""
    if queue[0][0] == payload:  # the usual case: in order
        queue.popleft()
        return True
    for index, entry in enumerate(queue):
        if entry[0] == payload:
            for _ in range(index + 1):
                queue.popleft()
            return True
    return False


def _follows(log: RoomLog, last: tuple[str, int]) -> bool:
    """Whether ``log`` holds every message it numbered after position ``last``."""
    if log.epoch != last[0] or log.last < last[1]:
        return False
    return log.last == last[1] or (bool(log.entries) and log.entries[0].offset == last[1] + 1)
