"""``ClusterNode``: one server's place in a cluster.

It owns the node's side of every cross-node operation, on top of an ``Adapter`` (pub/sub):

channels (``<prefix>`` is ``cluster_prefix``)
    ``<prefix>.all``            heartbeats, goodbyes, server broadcasts, server events, queries
                                to every node; every node subscribes.
    ``<prefix>.node.<id>``      this node's inbox: operations on its sockets, replies.
    ``<prefix>.room.<token>``   one room's broadcasts and presence changes; a node subscribes
                                only while it has local members, so it never decodes traffic
                                it would not deliver.

Socket ids start with the node id (``<node>.<random>``), so an operation on a remote socket
goes straight to its node's inbox.

Node liveness: every node publishes a heartbeat each ``cluster_heartbeat`` seconds (carrying
its counters, for cluster-wide stats); a node unheard of for ``node_timeout`` seconds is
dropped: it leaves the counts, its members leave presence (members elsewhere get ``$presence``
``left``) and requests stop waiting for it. A graceful shutdown says goodbye at once.

Presence: a node with local members in a presence room keeps a replica of the members on
other nodes (kept by the deltas on the room channel, filled by a snapshot query when it
subscribes, and refreshed when a node appears or reconnects). Deltas and snapshots carry the
sender's sequence number, so a snapshot that arrives after a newer delta cannot undo it.

Broker faults: the adapter reports the link down; the node keeps delivering locally, reports
itself degraded, counts what it could not publish, and when the link is back it bumps its
epoch (peers then resync their view of it) and resyncs its own presence replicas.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket import compression
from smartsocket.cluster import messages as m
from smartsocket.cluster.adapter import Adapter, BrokerAdapter, create_adapter
from smartsocket.errors import AckError, AckTimeout, ConnectionClosed
from smartsocket.handlers import Handler
from smartsocket.protocol import envelope
from smartsocket.security import LimitExceeded

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.server.app import SmartSocket
    from smartsocket.server.rooms import SendFrame
    from smartsocket.server.socket import Socket

logger = logging.getLogger("smartsocket.cluster")

_SAFE = re.compile(r"[A-Za-z0-9_\-]+")
_RECORDS = msgspec.msgpack.Decoder(list[tuple[str, list[str], dict[str, Any]]])
_SNAPSHOT = msgspec.msgpack.Decoder(tuple[int, list[tuple[str, dict[str, Any]]]])
PRESENCE_EVENT = "$presence"


def channel_token(name: str) -> str:
    """A room name as one channel token, safe in a NATS subject; injective ('~' marks the
    encoded ones, and plain tokens never contain it)."""
    if _SAFE.fullmatch(name):
        return name
    return "~" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def node_of(sid: str) -> str | None:
    """The node a socket id belongs to (None for an id without one)."""
    node, dot, _ = sid.partition(".")
    return node if dot else None


class RemoteNode:
    __slots__ = ("epoch", "id", "interval", "last_seen", "started", "stats")

    def __init__(self, node_id: str, beat: m.Heartbeat, now: float) -> None:
        self.id = node_id
        self.epoch = beat.epoch
        self.interval = beat.interval
        self.started = beat.started
        self.stats = beat.stats
        self.last_seen = now


class _Pending:
    """A request waiting for replies from ``expected`` nodes."""

    __slots__ = ("expected", "future", "on_reply", "replies", "timer")

    def __init__(
        self, expected: set[str], future: asyncio.Future[dict[str, m.Reply]],
        on_reply: Callable[[str, m.Reply], None] | None,
    ) -> None:
        self.expected = expected
        self.future = future
        self.on_reply = on_reply
        self.replies: dict[str, m.Reply] = {}
        self.timer: asyncio.TimerHandle | None = None

    def check(self) -> None:
        if not self.future.done() and self.expected <= self.replies.keys():
            self.future.set_result(self.replies)


class _Replica:
    """Members of one presence room on the other nodes, as this node knows them."""

    __slots__ = ("floor", "members", "synced", "tombs")

    def __init__(self) -> None:
        self.members: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}  # node -> sid
        self.tombs: dict[str, dict[str, int]] = {}  # node -> sid -> seq of its leaving
        self.floor: dict[str, int] = {}  # node -> seq of the last snapshot applied
        self.synced = asyncio.Event()

    def apply(self, node: str, sid: str, seq: int, info: dict[str, Any] | None) -> bool:
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
        members[sid] = (seq, info)
        return known is None or known[1] != info

    def snapshot(
        self, node: str, seq: int, entries: list[tuple[str, dict[str, Any]]]
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
        """Apply node's members as of ``seq``; returns (joined, left)."""
        if seq <= self.floor.get(node, 0):
            return [], []
        members = self.members.setdefault(node, {})
        tombs = self.tombs.setdefault(node, {})
        joined: list[tuple[str, dict[str, Any]]] = []
        left: list[tuple[str, dict[str, Any]]] = []
        present = set()
        for sid, info in entries:
            present.add(sid)
            known = members.get(sid)
            if (known is not None and known[0] > seq) or tombs.get(sid, 0) > seq:
                continue  # a newer delta already told us
            members[sid] = (seq, info)
            if known is None:
                joined.append((sid, info))
        for sid, (since, info) in list(members.items()):
            if sid not in present and since <= seq:
                del members[sid]
                left.append((sid, info))
        self.floor[node] = seq
        self.tombs[node] = {sid: s for sid, s in tombs.items() if s > seq}
        return joined, left

    def drop(self, node: str) -> list[tuple[str, dict[str, Any]]]:
        self.floor.pop(node, None)
        self.tombs.pop(node, None)
        return [(sid, info) for sid, (_, info) in self.members.pop(node, {}).items()]

    def listing(self) -> list[m.PresenceMember]:
        return [
            m.PresenceMember(sid, node, info)
            for node, members in self.members.items()
            for sid, (_, info) in members.items()
        ]


class ClusterNode:
    """A server's link to the rest of the cluster (also its presence bookkeeping when alone)."""

    def __init__(self, server: SmartSocket) -> None:
        self.server = server
        self.node_id = secrets.token_urlsafe(6).replace(".", "_")
        self.adapter: Adapter | None = None
        self.active = False  # an adapter is attached: publish and listen
        self.prefix = "smartsocket"
        self.heartbeat_interval = 1.0
        self.node_timeout = 5.0
        self.nodes: dict[str, RemoteNode] = {}
        self._presence_rooms: set[str] = set()
        self._presence_patterns: tuple[str, ...] = ()
        self._replicas: dict[str, _Replica] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._seq = 0
        self._epoch = 0
        self._handlers: dict[str, list[Handler]] = {}
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._version_warned: set[tuple[str, int]] = set()
        self.degraded_since: float | None = None
        self._connected_once = False
        self._failed_at_loss = 0
        self.started = time.time()
        # counters (raw.cluster* in the stats)
        self.published = 0
        self.publish_failed = 0
        self.received = 0
        self.dropped_version = 0
        self.dropped_invalid = 0
        self.nodes_dropped = 0

    # configuration

    def configure(self, config: Config) -> None:
        patterns = [p.strip() for p in (config.presence_rooms or "").split(",") if p.strip()]
        self._presence_patterns = tuple(patterns)
        self.prefix = config.cluster_prefix
        self.heartbeat_interval = config.cluster_heartbeat
        self.node_timeout = config.node_timeout

    def enable_presence(self, room: str) -> None:
        self._presence_rooms.add(room)

    def is_presence_room(self, room: str) -> bool:
        if room in self._presence_rooms:
            return True
        return any(fnmatch.fnmatchcase(room, p) for p in self._presence_patterns)

    def new_sid(self) -> str:
        token = secrets.token_urlsafe(12)
        return f"{self.node_id}.{token}" if self.active else token

    # channels

    @property
    def all_channel(self) -> str:
        return f"{self.prefix}.all"

    def inbox(self, node: str) -> str:
        return f"{self.prefix}.node.{node}"

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}.room.{channel_token(room)}"

    # lifecycle

    async def start(self, config: Config, adapter: Adapter | None = None) -> None:
        self.configure(config)
        if adapter is None and config.cluster_url:
            adapter = create_adapter(config.cluster_url)
        if adapter is None:
            return
        self.adapter = adapter
        self.active = True
        self._epoch = 1
        self.degraded_since = time.monotonic()
        adapter.subscribe(self.all_channel)
        adapter.subscribe(self.inbox(self.node_id))
        for room in self.server._registry.names():
            self._room_created(room)
        await adapter.start(self._receive, self._on_state)
        self._task = asyncio.get_running_loop().create_task(self._beat())
        logger.info("node %s in cluster %r via %s", self.node_id, self.prefix, adapter.name)

    async def close(self) -> None:
        if self.adapter is None:
            return
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._publish(self.all_channel, m.Bye())
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_result(pending.replies)
        for task in list(self._tasks):
            task.cancel()
        adapter, self.adapter = self.adapter, None
        self.active = False  # before the adapter reports its link down: no "degraded" alarm
        await adapter.close()
        self.nodes.clear()
        self._replicas.clear()

    def _on_state(self, connected: bool) -> None:
        if not self.active:
            return  # closing
        if not connected:
            self.degraded_since = time.monotonic()
            self._failed_at_loss = self.failed_total
            logger.warning(
                "node %s lost the cluster broker: degraded (local delivery continues; "
                "cross-node messages are counted as failed until it reconnects)", self.node_id,
            )
            return
        since, self.degraded_since = self.degraded_since, None
        if self._connected_once:
            logger.warning(
                "node %s reconnected to the cluster broker after %.1f s; %d messages could not "
                "be published meanwhile (%d in all)", self.node_id,
                time.monotonic() - (since or time.monotonic()),
                self.failed_total - self._failed_at_loss, self.failed_total,
            )
        self._connected_once = True
        self._epoch += 1
        self._publish(self.all_channel, self._heartbeat())
        for room in self._replicas:
            self._sync_presence(room)

    @property
    def degraded(self) -> bool:
        return self.active and self.degraded_since is not None

    @property
    def failed_total(self) -> int:
        lost = self.adapter.lost if isinstance(self.adapter, BrokerAdapter) else 0
        return self.publish_failed + lost

    async def _beat(self) -> None:
        while True:
            self._publish(self.all_channel, self._heartbeat())
            self._expire_nodes()
            await asyncio.sleep(self.heartbeat_interval)

    def _heartbeat(self) -> m.Heartbeat:
        server = self.server
        stats = server._stats
        counters: dict[str, int | float] = {
            "connections": len(server._sockets),
            "rooms": len(server._registry),
            "publishFailed": self.failed_total,
        }
        if stats is not None:
            counters.update(
                messagesIn=stats.messages_in, messagesOut=stats.messages_out,
                bytesIn=stats.bytes_in_wire, bytesOut=stats.bytes_out_wire,
                totalConnections=stats.total_connections,
            )
        return m.Heartbeat(self._epoch, self.heartbeat_interval, self.started, counters)

    def _expire_nodes(self) -> None:
        now = time.monotonic()
        for node in [n for n in self.nodes.values() if now - n.last_seen > self.node_timeout]:
            logger.warning("node %s silent for %.1f s: dropped from the cluster", node.id,
                           now - node.last_seen)
            self._drop_node(node.id)

    def _drop_node(self, node_id: str) -> None:
        if self.nodes.pop(node_id, None) is None:
            return
        self.nodes_dropped += 1
        for pending in list(self._pending.values()):
            if node_id in pending.expected:
                pending.expected.discard(node_id)
                pending.check()
        for room, replica in self._replicas.items():
            for sid, info in replica.drop(node_id):
                self._deliver_presence(room, sid, info, joined=False)

    # publishing

    def _publish(self, channel: str, body: m.Body) -> bool:
        adapter = self.adapter
        if adapter is None:
            return False
        if adapter.publish(channel, m.encode(self.node_id, body)):
            self.published += 1
            return True
        self.publish_failed += 1
        return False

    def publish_broadcast(
        self, room: str | None, members: Mapping[Socket, SendFrame], payload: bytes,
        binary: bool, skip: set[Socket] | None, exclude: Any,
    ) -> int:
        """Deliver here, then publish the encoded (and compressed, when it pays) payload."""
        server = self.server
        cfg = server.config
        deflated: bytes | None = None
        tried = False
        if cfg.enable_compression and len(payload) >= cfg.compression_threshold:
            deflated = compression.compress_once(
                payload, threshold=0, level=cfg.compression_level
            )
            tried = True
        count = server._deliver(members, payload, binary, skip, deflated, tried) if members else 0
        ids = _exclude_ids(exclude)
        channel = self.all_channel if room is None else self.room_channel(room)
        self._publish(channel, m.Broadcast(room, payload, binary, deflated, tried, ids))
        return count

    # registry hooks (RoomRegistry calls these)

    def room_joined(self, room: str, socket: Socket, created: bool) -> None:
        if created and self.active:
            self._room_created(room)
        if self.is_presence_room(room):
            info = socket.presence
            self._seq += 1
            payload = self._deliver_presence(room, socket.id, info, joined=True)
            if self.active:
                self._publish(
                    self.room_channel(room),
                    m.PresenceDelta(room, socket.id, True, info, payload, self._seq),
                )

    def room_left(self, room: str, socket: Socket, deleted: bool) -> None:
        if self.is_presence_room(room):
            self._seq += 1
            info = socket.presence
            payload = self._deliver_presence(room, socket.id, info, joined=False)
            if self.active:
                self._publish(
                    self.room_channel(room),
                    m.PresenceDelta(room, socket.id, False, info, payload, self._seq),
                )
        if deleted and self.active:
            self._replicas.pop(room, None)
            assert self.adapter is not None
            self.adapter.unsubscribe(self.room_channel(room))

    def room_removed(self, room: str, sockets: Iterable[Socket]) -> None:
        members = list(sockets)
        for index, socket in enumerate(members):
            self.room_left(room, socket, index == len(members) - 1)

    def _room_created(self, room: str) -> None:
        assert self.adapter is not None
        subscribed = self.adapter.subscribe(self.room_channel(room))
        if self.is_presence_room(room) and room not in self._replicas:
            self._replicas[room] = _Replica()
            self._spawn(self._sync_after(subscribed, room))

    async def _sync_after(self, subscribed: asyncio.Future[None], room: str) -> None:
        # Ask for the room's state once deltas on its channel reach us (or in any case soon).
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(subscribed), 2.0)
        if room in self._replicas:
            self._sync_presence(room)

    async def subscribed(self, room: str, timeout: float) -> bool:
        """Wait until broadcasts to ``room`` from other nodes reach this node (True), i.e. the
        broker confirmed the room channel its first local member subscribed to."""
        if not self.active or room not in self.server._registry:
            return not self.active
        assert self.adapter is not None
        future = self.adapter.subscribe(self.room_channel(room))
        try:
            await asyncio.wait_for(future, timeout)
        except (TimeoutError, asyncio.CancelledError):
            return False
        return True

    def _deliver_presence(
        self, room: str, sid: str, info: dict[str, Any], *, joined: bool
    ) -> bytes:
        """Send ``$presence`` to this node's members of ``room``; returns the payload."""
        change = {"sid": sid, "info": info}
        payload = envelope.encode_event(
            PRESENCE_EVENT, {"room": room, "joined" if joined else "left": change}
        )
        members = self.server._registry.members(room)
        if members:
            self.server._deliver(members, payload, False, None)
        return payload

    # presence queries

    def _sync_presence(self, room: str, node: str | None = None) -> None:
        replica = self._replicas.get(room)
        if replica is None or not self.active:
            return

        def on_reply(src: str, reply: m.Reply) -> None:
            current = self._replicas.get(room)
            if current is None or not reply.ok or reply.result is None:
                return
            seq, entries = _SNAPSHOT.decode(reply.result)
            joined, left = current.snapshot(src, seq, entries)
            for sid, info in joined:
                self._deliver_presence(room, sid, info, joined=True)
            for sid, info in left:
                self._deliver_presence(room, sid, info, joined=False)

        query = m.Query(0, "presence", room=room)
        future = self._request(query, node, self.node_timeout, on_reply)
        if node is None:
            future.add_done_callback(lambda _: replica.synced.set())

    async def presence(self, room: str, timeout: float = 2.0) -> list[m.PresenceMember]:
        local = [
            m.PresenceMember(s.id, self.node_id, s.presence)
            for s in self.server._registry.members(room)
        ]
        if not self.active:
            return local
        replica = self._replicas.get(room)
        if replica is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(replica.synced.wait(), timeout)
            return local + replica.listing()
        replies = await self._request(m.Query(0, "presence", room=room), None, timeout)
        for src, reply in replies.items():
            if reply.ok and reply.result is not None:
                _, entries = _SNAPSHOT.decode(reply.result)
                local.extend(m.PresenceMember(sid, src, info) for sid, info in entries)
        return local

    async def fetch_sockets(
        self, room: str | None = None, timeout: float = 2.0
    ) -> list[m.SocketRecord]:
        records = [
            m.SocketRecord(sid, self.node_id, rooms, presence)
            for sid, rooms, presence in self._local_records(room)
        ]
        if not self.active:
            return records
        replies = await self._request(m.Query(0, "sockets", room=room), None, timeout)
        for src, reply in replies.items():
            if reply.ok and reply.result is not None:
                records.extend(
                    m.SocketRecord(sid, src, rooms, presence)
                    for sid, rooms, presence in _RECORDS.decode(reply.result)
                )
        return records

    def _local_records(self, room: str | None) -> list[tuple[str, list[str], dict[str, Any]]]:
        server = self.server
        sockets: Iterable[Socket] = (
            server._sockets.values() if room is None else server._registry.members(room)
        )
        return [(s.id, sorted(s._rooms), s.presence) for s in sockets]

    # operations on sockets anywhere

    def _target(self, sid: str) -> str:
        node = node_of(sid)
        if not self.active or node is None or node == self.node_id:
            raise _NoSocket(sid)
        return node

    def send(self, sid: str, event: str, data: Any, binary: bool | None) -> bool:
        socket = self.server._sockets.get(sid)
        if socket is not None:
            socket.send(event, data, binary=binary)
            return True
        try:
            node = self._target(sid)
        except _NoSocket:
            return False
        _check_event(event)
        if binary is None:
            binary = envelope.needs_binary(data)
        payload = envelope.encode_event(event, data, binary=binary)
        query = m.Query(0, "send", sid=sid, data=payload, binary=binary, want_reply=False)
        return self._publish(self.inbox(node), query)

    async def operate(
        self, kind: str, sid: str, room: str | None = None, *, code: int = 0,
        reason: str = "", timeout: float = 2.0,
    ) -> bool:
        """join / leave / disconnect a socket anywhere; False if there is no such socket."""
        socket = self.server._sockets.get(sid)
        if socket is not None:
            return _operate_local(socket, kind, room, code, reason)
        try:
            node = self._target(sid)
        except _NoSocket:
            return False
        query = m.Query(0, kind, sid=sid, room=room, code=code, reason=reason)
        reply = (await self._request(query, node, timeout)).get(node)
        if reply is None:
            raise TimeoutError(f"node {node} did not answer {kind} within {timeout:g} s")
        if not reply.ok and reply.error not in (None, "no_socket"):
            raise LimitExceeded(reply.error, reply.message)
        return reply.ok

    async def call(
        self, sid: str, event: str, data: Any, timeout: float | None, binary: bool | None
    ) -> Any:
        socket = self.server._sockets.get(sid)
        if socket is not None:
            return await socket.call(event, data, timeout=timeout, binary=binary)
        try:
            node = self._target(sid)
        except _NoSocket:
            raise ConnectionClosed(None, f"no socket {sid!r}") from None
        _check_event(event)
        if timeout is None:
            timeout = self.server.config.message_timeout
        query = m.Query(
            0, "call", sid=sid, event=event, data=m.pack(data),
            binary=bool(binary) if binary is not None else envelope.needs_binary(data),
            timeout=timeout,
        )
        # The remote socket's own timer decides; ours only covers a node that went away.
        wait = timeout + max(1.0, self.node_timeout)
        reply = (await self._request(query, node, wait)).get(node)
        if reply is None:
            raise AckTimeout(event, timeout)
        if reply.ok:
            return m.unpack(reply.result)
        if reply.error == "timeout":
            raise AckTimeout(event, timeout)
        if reply.error in ("no_socket", "disconnected"):
            raise ConnectionClosed(None, reply.message)
        raise AckError(reply.error or "error", reply.message)

    # server events

    def on_server_event(self, name: str, handler: Callable[..., Any]) -> None:
        self._handlers.setdefault(name, []).append(Handler(handler, max_args=2))

    def emit_to_servers(self, name: str, data: Any) -> bool:
        if not self.active:
            return False
        return self._publish(self.all_channel, m.ServerEvent(name, m.pack(data)))

    # requests

    def _request(
        self, query: m.Query, node: str | None, timeout: float,
        on_reply: Callable[[str, m.Reply], None] | None = None,
    ) -> asyncio.Future[dict[str, m.Reply]]:
        """Send ``query`` to ``node`` (None: every known node); the future gets the replies
        by node once each expected node answered, was dropped, or ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, m.Reply]] = loop.create_future()
        expected = {node} if node is not None else set(self.nodes)
        if not expected:
            future.set_result({})
            return future
        self._next_id += 1
        query.id = request_id = self._next_id
        pending = self._pending[request_id] = _Pending(expected, future, on_reply)
        pending.timer = loop.call_later(timeout, self._expire_request, request_id)
        future.add_done_callback(lambda _: self._forget(request_id))
        channel = self.all_channel if node is None else self.inbox(node)
        if not self._publish(channel, query):
            future.set_result({})
        return future

    def _expire_request(self, request_id: int) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and not pending.future.done():
            missing = sorted(pending.expected - pending.replies.keys())
            logger.debug("request %d: no reply from %s", request_id, missing)
            pending.future.set_result(pending.replies)

    def _forget(self, request_id: int) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    def _reply(self, node: str, request_id: int, **fields: Any) -> None:
        self._publish(self.inbox(node), m.Reply(request_id, **fields))

    # receiving

    def _receive(self, channel: str, data: bytes) -> None:
        try:
            env = m.decode_envelope(data)
            if env.src == self.node_id:
                return  # our own message, back from the broker
            body = m.decode_body(env)
        except m.VersionMismatch as exc:
            self.dropped_version += 1
            if (exc.src, exc.version) not in self._version_warned:
                self._version_warned.add((exc.src, exc.version))
                logger.warning("dropping cluster messages: %s", exc)
            return
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.dropped_invalid += 1
            logger.debug("dropping an invalid cluster message on %s: %s", channel, exc)
            return
        self.received += 1
        src = env.src
        kind = type(body)
        try:
            if kind is m.Broadcast:
                self._on_broadcast(body)  # type: ignore[arg-type]
            elif kind is m.PresenceDelta:
                self._on_presence(src, body)  # type: ignore[arg-type]
            elif kind is m.Heartbeat:
                self._on_heartbeat(src, body)  # type: ignore[arg-type]
            elif kind is m.Reply:
                self._on_reply(src, body)  # type: ignore[arg-type]
            elif kind is m.Query:
                self._on_query(src, body)  # type: ignore[arg-type]
            elif kind is m.ServerEvent:
                self._on_server_event(src, body)  # type: ignore[arg-type]
            elif kind is m.Bye:
                logger.info("node %s left the cluster", src)
                self._drop_node(src)
        except Exception:
            logger.exception("handling a %s from node %s failed", kind.__name__, src)

    def _on_broadcast(self, body: m.Broadcast) -> None:
        server = self.server
        members: Mapping[Socket, SendFrame]
        if body.room is None:
            members = {s: s._send_frame for s in server._sockets.values()}
        else:
            members = server._registry.members(body.room)
        if not members:
            return
        skip = server._resolve_exclude(body.exclude) if body.exclude else None
        server._deliver(members, body.payload, body.binary, skip, body.deflated, body.tried)

    def _on_presence(self, src: str, body: m.PresenceDelta) -> None:
        replica = self._replicas.get(body.room)
        if replica is None:
            return
        info = body.info if isinstance(body.info, dict) else {}
        if replica.apply(src, body.sid, body.seq, info if body.joined else None):
            members = self.server._registry.members(body.room)
            if members:
                self.server._deliver(members, body.payload, False, None)

    def _on_heartbeat(self, src: str, beat: m.Heartbeat) -> None:
        now = time.monotonic()
        node = self.nodes.get(src)
        if node is None:
            self.nodes[src] = RemoteNode(src, beat, now)
            logger.info("node %s joined the cluster", src)
            # Introduce ourselves now rather than at our next beat.
            self._publish(self.inbox(src), self._heartbeat())
            resync = True
        else:
            resync = node.epoch != beat.epoch
            node.epoch, node.stats, node.last_seen = beat.epoch, beat.stats, now
            node.interval = beat.interval
        if resync:
            for room in self._replicas:
                self._sync_presence(room, src)

    def _on_reply(self, src: str, reply: m.Reply) -> None:
        pending = self._pending.get(reply.id)
        if pending is None:
            return
        pending.replies[src] = reply
        if pending.on_reply is not None:
            pending.on_reply(src, reply)
        pending.check()

    def _on_server_event(self, src: str, body: m.ServerEvent) -> None:
        handlers = self._handlers.get(body.name)
        if not handlers:
            return
        data = m.unpack(body.data)
        for handler in handlers:
            try:
                result = handler.fn(*(data, src)[: handler.arity])
                if asyncio.iscoroutine(result):
                    self._spawn(_log_failure(result, body.name))
            except Exception:
                logger.exception("server event handler %s for %r failed", handler.name,
                                 body.name)

    def _on_query(self, src: str, query: m.Query) -> None:
        kind = query.kind
        server = self.server
        if kind == "sockets":
            self._reply(src, query.id, result=m.pack(self._local_records(query.room)))
            return
        if kind == "presence":
            room = query.room or ""
            entries = [(s.id, s.presence) for s in server._registry.members(room)]
            self._reply(src, query.id, result=m.pack((self._seq, entries)))
            return
        socket = server._sockets.get(query.sid or "")
        if socket is None:
            if query.want_reply:
                self._reply(src, query.id, ok=False, error="no_socket",
                            message=f"no socket {query.sid!r}")
            return
        if kind == "send":
            if query.data is not None:
                socket._send_payload(query.data, query.binary)
            return
        if kind == "call":
            self._spawn(self._remote_call(src, query, socket))
            return
        try:
            _operate_local(socket, kind, query.room, query.code, query.reason)
        except AckError as exc:
            self._reply(src, query.id, ok=False, error=exc.code, message=exc.message)
            return
        self._reply(src, query.id)

    async def _remote_call(self, src: str, query: m.Query, socket: Socket) -> None:
        try:
            result = await socket.call(
                query.event or "", m.unpack(query.data), timeout=query.timeout or None,
                binary=query.binary,
            )
        except AckTimeout as exc:
            self._reply(src, query.id, ok=False, error="timeout", message=exc.message)
        except AckError as exc:
            self._reply(src, query.id, ok=False, error=exc.code, message=exc.message)
        except ConnectionClosed as exc:
            self._reply(src, query.id, ok=False, error="disconnected", message=str(exc))
        except Exception as exc:
            self._reply(src, query.id, ok=False, error="internal_error", message=str(exc))
        else:
            try:
                packed = m.pack(result)
            except (TypeError, msgspec.EncodeError) as exc:
                self._reply(src, query.id, ok=False, error="internal_error", message=str(exc))
            else:
                self._reply(src, query.id, result=packed)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # stats

    def stats_section(self, *, aggregate: bool = False) -> dict[str, Any]:
        adapter = self.adapter
        section: dict[str, Any] = {
            "node": self.node_id,
            "adapter": adapter.name if adapter is not None else None,
            "status": "degraded" if self.degraded else "ok",
            "degradedSeconds": (
                round(time.monotonic() - self.degraded_since, 3)
                if self.degraded_since is not None else 0.0
            ),
            "nodes": len(self.nodes) + 1,
            "published": self.published,
            "publishFailed": self.failed_total,
            "received": self.received,
            "droppedVersion": self.dropped_version,
            "nodesDropped": self.nodes_dropped,
            "reconnects": adapter.reconnects if isinstance(adapter, BrokerAdapter) else 0,
            "subscriptions": len(adapter.channels) if adapter is not None else 0,
        }
        if aggregate:
            now = time.monotonic()
            listing = [{"node": self.node_id, "self": True, **self._heartbeat().stats}]
            for node in self.nodes.values():
                listing.append({"node": node.id, "lastSeen": round(now - node.last_seen, 3),
                                **node.stats})
            totals: dict[str, int | float] = {}
            for entry in listing:
                for key, value in entry.items():
                    if isinstance(value, int | float) and not isinstance(value, bool) and (
                        key != "lastSeen"
                    ):
                        totals[key] = totals.get(key, 0) + value
            section["members"] = listing
            section["totals"] = totals
        return section


class _NoSocket(LookupError):
    pass


def _operate_local(socket: Socket, kind: str, room: str | None, code: int, reason: str) -> bool:
    if kind == "join":
        socket.join(room or "")
    elif kind == "leave":
        socket.leave(room or "")
    elif kind == "disconnect":
        socket.disconnect(code or 4000, reason)
    else:
        raise ValueError(f"unknown operation {kind!r}")
    return True


def _exclude_ids(exclude: Any) -> list[str]:
    if exclude is None:
        return []
    items = (exclude,) if isinstance(exclude, str) or hasattr(exclude, "_send_frame") else exclude
    return [item if isinstance(item, str) else item.id for item in items]


def _check_event(event: str) -> None:
    if type(event) is not str or not event or event[0] == "$":
        raise ValueError(f"invalid event name {event!r}")


async def _log_failure(coro: Any, name: str) -> None:
    try:
        await coro
    except Exception:
        logger.exception("server event handler for %r failed", name)
