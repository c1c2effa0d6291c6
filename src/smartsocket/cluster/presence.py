"""Presence: the members of presence rooms, cluster-wide.

A room is a presence room when ``server.room(name, presence=True)`` said so or its name matches
``presence_rooms``. Every join and leave of a local member sends ``$presence`` to the local
members and a ``PresenceDelta`` on the room channel (also when this node is alone).

A node with local members in a presence room keeps a replica of the members on other nodes
(kept by the deltas on the room channel, filled by a snapshot query when it subscribes, and
refreshed when a node appears or reconnects). Deltas and snapshots carry the sender's sequence
number, so a snapshot that arrives after a newer delta cannot undo it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket.cluster import messages as m
from smartsocket.protocol import envelope

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.cluster.ports import LocalSocket

PRESENCE_EVENT = "$presence"
# A member as the nodes exchange it: (sid, info, user).
Entry = tuple[str, dict[str, Any], str | None]
_SNAPSHOT = msgspec.msgpack.Decoder(tuple[int, list[Entry]])


class Replica:
    """Members of one presence room on the other nodes, as this node knows them."""

    __slots__ = ("floor", "members", "synced", "tombs")

    def __init__(self) -> None:
        # node -> sid -> (seq, info, user)
        self.members: dict[str, dict[str, tuple[int, dict[str, Any], str | None]]] = {}
        self.tombs: dict[str, dict[str, int]] = {}  # node -> sid -> seq of its leaving
        self.floor: dict[str, int] = {}  # node -> seq of the last snapshot applied
        self.synced = asyncio.Event()

    def apply(
        self, node: str, sid: str, seq: int, info: dict[str, Any] | None,
        user: str | None = None,
    ) -> bool:
        """A delta (info None: left). True when it changed what we know."""
        if seq <= self.floor.get(node, 0):
            return False
        members = self.members.setdefault(node, {})
        tombs = self.tombs.setdefault(node, {})
        known = members.get(sid)
        if (known is not None and known[0] >= seq) or tombs.get(sid, 0) >= seq:
            return False
        if info is None:
            tombs[sid] = seq
            return members.pop(sid, None) is not None
        tombs.pop(sid, None)
        members[sid] = (seq, info, user)
        return known is None or known[1] != info or known[2] != user

    def snapshot(
        self, node: str, seq: int, entries: Iterable[Sequence[Any]]
    ) -> tuple[list[Entry], list[Entry]]:
        """Apply node's members (``Entry``; a user may be left out) as of ``seq``; returns
        (joined, left)."""
        if seq <= self.floor.get(node, 0):
            return [], []
        members = self.members.setdefault(node, {})
        tombs = self.tombs.setdefault(node, {})
        joined: list[Entry] = []
        left: list[Entry] = []
        present = set()
        for sid, info, *rest in entries:
            user = rest[0] if rest else None
            present.add(sid)
            known = members.get(sid)
            if (known is not None and known[0] > seq) or tombs.get(sid, 0) > seq:
                continue  # a newer delta already told us
            members[sid] = (seq, info, user)
            if known is None:
                joined.append((sid, info, user))
        for sid, (since, info, user) in list(members.items()):
            if sid not in present and since <= seq:
                del members[sid]
                left.append((sid, info, user))
        self.floor[node] = seq
        self.tombs[node] = {sid: s for sid, s in tombs.items() if s > seq}
        return joined, left

    def drop(self, node: str) -> list[Entry]:
        self.floor.pop(node, None)
        self.tombs.pop(node, None)
        return [(sid, info, user) for sid, (_, info, user) in self.members.pop(node, {}).items()]

    def listing(self) -> list[m.PresenceMember]:
        return [
            m.PresenceMember(sid, node, info, user)
            for node, members in self.members.items()
            for sid, (_, info, user) in members.items()
        ]


class Presence:
    """A node's presence bookkeeping: which rooms have presence, local changes, replicas."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._rooms: set[str] = set()
        self._patterns: tuple[str, ...] = ()
        self._prefixes: tuple[str, ...] = ()  # enable("chat:*"): room policies' patterns
        self.replicas: dict[str, Replica] = {}
        self.seq = 0  # bumped by every local change; orders deltas and snapshots

    def configure(self, presence_rooms: str | None) -> None:
        patterns = [p.strip() for p in (presence_rooms or "").split(",") if p.strip()]
        self._patterns = tuple(patterns)

    def enable(self, room: str) -> None:
        """A room name, or a prefix pattern ending in ``*`` (``chat:*``; ``*``: every room)."""
        if room.endswith("*"):
            self._prefixes = (*self._prefixes, room[:-1])
        else:
            self._rooms.add(room)

    def is_presence_room(self, room: str) -> bool:
        if room in self._rooms:
            return True
        if self._prefixes and room.startswith(self._prefixes):
            return True
        return any(fnmatch.fnmatchcase(room, p) for p in self._patterns)

    # local changes

    def changed(
        self, room: str, socket: LocalSocket, *, joined: bool, updated: bool = False
    ) -> None:
        """A local member of presence room ``room`` joined, left or (``updated``) changed its
        info: tell the local members, then the other nodes."""
        self.seq += 1
        info, user = socket.presence, socket.user
        payload = self.deliver(room, socket.id, info, user, joined=joined, updated=updated)
        node = self.node
        if node.active:
            node.publish(
                node.room_channel(room),
                m.PresenceDelta(room, socket.id, joined, info, payload, self.seq, user),
            )

    def updated(self, socket: LocalSocket, rooms: Iterable[str]) -> None:
        """A local member's info or user changed: its presence rooms among ``rooms`` learn it."""
        for room in rooms:
            if self.is_presence_room(room):
                self.changed(room, socket, joined=True, updated=True)

    def deliver(
        self, room: str, sid: str, info: dict[str, Any], user: str | None = None, *,
        joined: bool, updated: bool = False,
    ) -> bytes:
        """Send ``$presence`` to this node's members of ``room``; returns the payload."""
        change: dict[str, Any] = {"sid": sid, "info": info}
        if user is not None:  # shown only when the member has one (protocol.md)
            change["user"] = user
        kind = "updated" if updated else "joined" if joined else "left"
        payload = envelope.encode_event(PRESENCE_EVENT, {"room": room, kind: change})
        self.node.local.deliver(room, payload, False)
        return payload

    # replicas of the other nodes' members

    def track(self, room: str, subscribed: asyncio.Future[None]) -> None:
        """This node subscribed to ``room``'s channel: if it is a presence room, keep a
        replica, filled once the subscription is confirmed."""
        if self.is_presence_room(room) and room not in self.replicas:
            self.replicas[room] = Replica()
            self.node.spawn(self._sync_after(subscribed, room))

    def untrack(self, room: str) -> None:
        self.replicas.pop(room, None)

    async def _sync_after(self, subscribed: asyncio.Future[None], room: str) -> None:
        # Ask for the room's state once deltas on its channel reach us (or in any case soon).
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(subscribed), 2.0)
        if room in self.replicas:
            self.sync(room)

    def sync(self, room: str, target: str | None = None) -> None:
        """Ask ``target`` (None: every node) for its members of ``room``."""
        replica = self.replicas.get(room)
        node = self.node
        if replica is None or not node.active:
            return

        def on_reply(src: str, reply: m.Reply) -> None:
            current = self.replicas.get(room)
            if current is None or not reply.ok or reply.result is None:
                return
            seq, entries = _SNAPSHOT.decode(reply.result)
            joined, left = current.snapshot(src, seq, entries)
            for sid, info, user in joined:
                self.deliver(room, sid, info, user, joined=True)
            for sid, info, user in left:
                self.deliver(room, sid, info, user, joined=False)

        query = m.ListPresence(0, room)
        future = node.requests.request(query, target, node.node_timeout, on_reply)
        if target is None:
            future.add_done_callback(lambda _: replica.synced.set())

    def resync(self, target: str | None = None) -> None:
        """Refresh every replica (from ``target`` only, or from every node)."""
        for room in self.replicas:
            self.sync(room, target)

    def on_delta(self, src: str, body: m.PresenceDelta) -> None:
        replica = self.replicas.get(body.room)
        if replica is None:
            return
        info = body.info if isinstance(body.info, dict) else {}
        if replica.apply(src, body.sid, body.seq, info if body.joined else None, body.user):
            self.node.local.deliver(body.room, body.payload, False)

    def drop_node(self, node_id: str) -> None:
        """``node_id`` is gone: its members leave."""
        for room, replica in self.replicas.items():
            for sid, info, user in replica.drop(node_id):
                self.deliver(room, sid, info, user, joined=False)

    def snapshot(self, room: str) -> bytes:
        """This node's members of ``room`` as of now (a reply to a ``presence`` query)."""
        entries = [(s.id, s.presence, s.user) for s in self.node.local.members(room)]
        return m.pack((self.seq, entries))

    # queries

    async def members(self, room: str, timeout: float) -> list[m.PresenceMember]:
        node = self.node
        local = [
            m.PresenceMember(s.id, node.node_id, s.presence, s.user)
            for s in node.local.members(room)
        ]
        if not node.active:
            return local
        replica = self.replicas.get(room)
        if replica is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(replica.synced.wait(), timeout)
            return local + replica.listing()
        query = m.ListPresence(0, room)
        replies = await node.requests.request(query, None, timeout)
        for src, reply in replies.items():
            if reply.ok and reply.result is not None:
                _, entries = _SNAPSHOT.decode(reply.result)
                local.extend(
                    m.PresenceMember(sid, src, info, user) for sid, info, user in entries
                )
        return local
