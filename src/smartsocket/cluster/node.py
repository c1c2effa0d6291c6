"""``ClusterNode``: one server's place in a cluster.

It owns the node's side of every cross-node operation, on top of an ``Adapter`` (pub/sub),
and is the one object the server talks to; the parts live in their own modules:

``liveness.py``     heartbeats, the other nodes, dropping silent ones;
``requests.py``     queries to other nodes and their replies;
``operations.py``   operations on sockets anywhere (send, call, join, leave, disconnect) and
                    cluster-wide socket listings;
``presence.py``     presence rooms and the replicas of other nodes' members;
``users.py``        operations on every connection of a user (send, disconnect);
this module         the lifecycle, channels, broadcasts, server events, receiving, stats.

channels (``<prefix>`` is ``cluster_prefix``)
    ``<prefix>.all``            heartbeats, goodbyes, server broadcasts, server events, queries
                                to every node, messages for a user's connections; every node
                                subscribes.
    ``<prefix>.node.<id>``      this node's inbox: operations on its sockets, replies.
    ``<prefix>.room.<token>``   one room's broadcasts and presence changes; a node subscribes
                                only while it has local members, so it never decodes traffic
                                it would not deliver.

Socket ids start with the node id (``<node>.<random>``), so an operation on a remote socket
goes straight to its node's inbox.

Broker faults: the adapter reports the link down; the node keeps delivering locally, reports
itself degraded, counts what it could not publish, and when the link is back it bumps its
epoch (peers then resync their view of it) and resyncs its own presence replicas. With
recovery, ``roomlog.py`` logs room messages in Redis and ``catchup.py`` catches rooms up from
their history (or sends ``$gap``); the sessions themselves are ``recovery/``'s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket.cluster import messages as m
from smartsocket.cluster.brokers import Adapter, BrokerAdapter, create_adapter
from smartsocket.cluster.catchup import RoomSync
from smartsocket.cluster.channels import all_channel, channel_token, inbox_channel, room_channel
from smartsocket.cluster.gaps import LinkGaps
from smartsocket.cluster.liveness import Liveness, RemoteNode
from smartsocket.cluster.operations import Operations, node_of
from smartsocket.cluster.presence import Presence
from smartsocket.cluster.requests import Requests
from smartsocket.cluster.roomlog import RoomLogs, parse_logged
from smartsocket.cluster.users import UserOperations
from smartsocket.handlers import Handler

__all__ = ["ClusterNode", "all_channel", "channel_token", "inbox_channel", "room_channel"]

if TYPE_CHECKING:
    from smartsocket.cluster.ports import LocalServer, LocalSocket
    from smartsocket.config import Config
    from smartsocket.history import HistoryLimits

logger = logging.getLogger("smartsocket.cluster")

_URGENT = (m.Heartbeat, m.Bye, m.Reply)  # what a full broker queue still takes


class ClusterNode:
    """A server's link to the rest of the cluster (also its presence bookkeeping when alone)."""

    def __init__(self, local: LocalServer) -> None:
        self.local = local  # this node's sockets and rooms (cluster/ports.py)
        self.node_id = secrets.token_urlsafe(6).replace(".", "_")
        self._own = m.head(self.node_id)  # how this node's messages start (see _receive)
        self.adapter: Adapter | None = None
        self._broker: BrokerAdapter | None = None  # the adapter, if a network broker's
        self.active = False  # an adapter is attached: publish and listen
        self.prefix = "smartsocket"
        self.heartbeat_interval = 1.0
        self.node_timeout = 5.0
        self.message_timeout = 10.0  # a remote call's default ack timeout (config)
        self.liveness = Liveness(self)
        self.requests = Requests(self)
        self.operations = Operations(self)
        self.presence_state = Presence(self)
        self.users = UserOperations(self)
        self.epoch = 0  # bumped on every (re)connection to the broker: peers resync
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
        self.overflowed = 0  # publishes refused because the broker link's queue was full
        self.received = 0
        self.dropped_version = 0
        self.dropped_invalid = 0
        # Recovery on Redis (roomlog.py): Redis numbers and logs room messages.
        self.room_logs: RoomLogs | None = None
        # Each room's history size and TTL in Redis (the server sets it: its room policies).
        self.history: HistoryLimits | None = None
        self.sync: RoomSync | None = None  # room positions across outages (catchup.py)
        self.gaps = LinkGaps(self)  # without it: $gap for what an outage lost (gaps.py)
        # Sessions of this node's sockets that resumed on another node: sid -> that node.
        self.moved: dict[str, str] = {}
        self._receivers = self._receivers_by_type()

    # configuration

    def configure(self, config: Config) -> None:
        self.presence_state.configure(config.presence_rooms)
        self.prefix = config.cluster_prefix
        self.heartbeat_interval = config.cluster_heartbeat
        self.node_timeout = config.node_timeout
        self.message_timeout = config.message_timeout

    def enable_presence(self, room: str) -> None:
        self.presence_state.enable(room)

    def is_presence_room(self, room: str) -> bool:
        return self.presence_state.is_presence_room(room)

    def new_sid(self) -> str:
        token = secrets.token_urlsafe(12)
        return f"{self.node_id}.{token}" if self.active else token

    @property
    def nodes(self) -> dict[str, RemoteNode]:
        """The other nodes this one hears, by id."""
        return self.liveness.nodes

    # channels

    @property
    def all_channel(self) -> str:
        return all_channel(self.prefix)

    def inbox(self, node: str) -> str:
        return inbox_channel(self.prefix, node)

    def room_channel(self, room: str) -> str:
        return room_channel(self.prefix, room)

    # lifecycle

    async def start(self, config: Config, adapter: Adapter | None = None) -> None:
        self.configure(config)
        if adapter is None and config.cluster_url:
            adapter = create_adapter(config.cluster_url, config.cluster_link_timeout)
        if adapter is None:
            return
        self.adapter = adapter
        self._broker = adapter if isinstance(adapter, BrokerAdapter) else None
        self.active = True
        self.epoch = 1
        if isinstance(adapter, BrokerAdapter):
            adapter.max_queue = config.cluster_queue
        if config.recovery_window:
            # The server picks its session store (recovery/) once this returns.
            if not isinstance(adapter, BrokerAdapter) or not adapter.supports_scripts:
                raise ValueError(f"recovery in a cluster needs Redis, not {adapter.name}")
            self.room_logs = RoomLogs(config, adapter, self.history)
            self.sync = RoomSync(self, self.room_logs, adapter.max_queue)
        self.degraded_since = time.monotonic()
        adapter.subscribe(self.all_channel)
        adapter.subscribe(self.inbox(self.node_id))
        for room in self.local.room_names():
            self._room_created(room)
        await adapter.start(self._receive, self._on_state)
        self._task = asyncio.get_running_loop().create_task(self.liveness.run())
        logger.info("node %s in cluster %r via %s", self.node_id, self.prefix, adapter.name)

    async def close(self) -> None:
        if self.adapter is None:
            return
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.publish(self.all_channel, m.Bye())
        self.requests.close()
        for task in list(self._tasks):
            task.cancel()
        adapter, self.adapter = self.adapter, None
        self._broker = None
        self.active = False  # before the adapter reports its link down: no "degraded" alarm
        if self.sync is not None:
            self.sync.close()
            self.sync = None
        self.room_logs = None
        await adapter.close()
        self.liveness.nodes.clear()
        self.presence_state.replicas.clear()

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
            if self.sync is not None:
                self.sync.link_lost()
            return
        since, self.degraded_since = self.degraded_since, None
        reconnected = self._connected_once
        if reconnected:
            logger.warning(
                "node %s reconnected to the cluster broker after %.1f s; %d messages could not "
                "be published meanwhile (%d in all)", self.node_id,
                time.monotonic() - (since or time.monotonic()),
                self.failed_total - self._failed_at_loss, self.failed_total,
            )
        self._connected_once = True
        self.epoch += 1
        self.publish(self.all_channel, self.liveness.heartbeat())
        self.presence_state.resync()
        if self.sync is not None:
            self.sync.link_up()
        elif reconnected:
            self.gaps.link_up()

    @property
    def degraded(self) -> bool:
        return self.active and self.degraded_since is not None

    @property
    def congested(self) -> bool:
        """The broker link is up but its outbound queue is full: a publish now would be
        refused (the server refuses the broadcast instead: ``overloaded``)."""
        broker = self._broker  # checked twice per publish: no isinstance (an ABC's) here
        return broker is not None and broker.connected and broker.full

    async def wait_writable(self, timeout: float) -> bool:
        """Wait until the broker link can take a burst (see ``BrokerAdapter.wait_writable``);
        True at once without a network broker."""
        adapter = self.adapter
        if not isinstance(adapter, BrokerAdapter):
            return adapter is not None or not self.active
        return await adapter.wait_writable(timeout)

    @property
    def failed_total(self) -> int:
        lost = self.adapter.lost if isinstance(self.adapter, BrokerAdapter) else 0
        return self.publish_failed + lost

    def drop_node(self, node_id: str) -> None:
        """``node_id`` went silent or said goodbye: forget it everywhere."""
        if not self.liveness.forget(node_id):
            return
        self.requests.drop_node(node_id)
        self.presence_state.drop_node(node_id)
        for sid in [sid for sid, node in self.moved.items() if node == node_id]:
            del self.moved[sid]

    # publishing

    def publish(self, channel: str, body: m.Body) -> bool:
        adapter = self.adapter
        if adapter is None:
            return False
        data = m.encode(self.node_id, body)
        if type(body) in _URGENT and isinstance(adapter, BrokerAdapter):
            sent = adapter.publish_urgent(channel, data)  # liveness: past a full queue
        else:
            sent = adapter.publish(channel, data)
        if sent:
            self.published += 1
            return True
        self._refused(adapter)
        return False

    def _refused(self, adapter: Adapter) -> None:
        """Count a publish the adapter refused; a full queue (the link is up) is logged: the
        message did not go out although the broker is reachable."""
        self.publish_failed += 1
        if isinstance(adapter, BrokerAdapter) and adapter.connected and adapter.full:
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 1000 == 0:
                logger.warning(
                    "the %s broker link's queue is full (%d messages): %d publishes refused "
                    "so far; publish slower or wait for the link (server.wait_for_broker)",
                    adapter.name, adapter.max_queue, self.overflowed,
                )

    def publish_broadcast(
        self, room: str | None, payload: bytes, binary: bool, deflated: bytes | None,
        tried: bool, exclude: Sequence[str],
    ) -> bool:
        """Publish a broadcast the server delivered here already (``room`` None: to every
        socket), compressed or not as the server decided (server/fanout.py)."""
        channel = self.all_channel if room is None else self.room_channel(room)
        if self.publish(
            channel, m.Broadcast(room, payload, binary, deflated, tried, list(exclude))
        ):
            return True
        self.gaps.not_published(room)
        return False

    @property
    def logs_rooms(self) -> bool:
        """Room broadcasts go through Redis, which logs them (recovery in a cluster)."""
        return self.sync is not None

    def publish_logged(
        self, room: str, payload: bytes, binary: bool, exclude: Sequence[str], local: bool
    ) -> bool:
        """Recovery on Redis: log a room message in Redis with its position; every node with
        members (this one too, when ``local``: it has members) delivers it from the room
        channel, in the order of the positions. False when the broker is down: then the
        server delivers it here, without a position, and the other nodes get ``$gap`` when
        the link is back. If the link breaks before the message comes back, it is delivered
        here then (catchup.py)."""
        logs, sync = self.room_logs, self.sync
        assert logs is not None and sync is not None
        ids = list(exclude)
        body = m.encode(self.node_id, m.Broadcast(room, payload, binary, exclude=ids))
        if logs.publish_room(room, self.room_channel(room), body, payload, binary, ids):
            self.published += 1
            if local:
                sync.sent(room, payload, binary, ids)
            return True
        logs.unlogged += 1
        assert self.adapter is not None
        self._refused(self.adapter)
        sync.unlogged(room)
        return False

    # registry hooks (RoomRegistry calls these)

    def room_joined(self, room: str, socket: LocalSocket, created: bool) -> None:
        if created and self.active:
            self._room_created(room)
        if self.presence_state.is_presence_room(room):
            self.presence_state.changed(room, socket, joined=True)

    def room_left(self, room: str, socket: LocalSocket, deleted: bool) -> None:
        if self.presence_state.is_presence_room(room):
            self.presence_state.changed(room, socket, joined=False)
        if deleted and self.active:
            if self.sync is not None:
                self.sync.forget(room)
            self.presence_state.untrack(room)
            assert self.adapter is not None
            self.adapter.unsubscribe(self.room_channel(room))

    def room_removed(self, room: str, sockets: Iterable[LocalSocket]) -> None:
        members = list(sockets)
        for index, socket in enumerate(members):
            self.room_left(room, socket, index == len(members) - 1)

    def _room_created(self, room: str) -> None:
        assert self.adapter is not None
        subscribed = self.adapter.subscribe(self.room_channel(room))
        if self.sync is not None:
            self.sync.started(room, subscribed)
        self.presence_state.track(room, subscribed)

    async def subscribed(self, room: str, timeout: float) -> bool:
        """Wait until broadcasts to ``room`` from other nodes reach this node (True), i.e. the
        broker confirmed the room channel its first local member subscribed to."""
        if not self.active or not self.local.has_room(room):
            return not self.active
        assert self.adapter is not None
        future = self.adapter.subscribe(self.room_channel(room))
        try:
            await asyncio.wait_for(future, timeout)
        except (TimeoutError, asyncio.CancelledError):
            return False
        return True

    # cluster-wide queries and operations on sockets anywhere (operations.py, presence.py)

    async def presence(self, room: str, timeout: float = 2.0) -> list[m.PresenceMember]:
        return await self.presence_state.members(room, timeout)

    async def fetch_sockets(
        self, room: str | None = None, timeout: float = 2.0
    ) -> list[m.SocketRecord]:
        return await self.operations.fetch_sockets(room, timeout)

    def send(self, sid: str, event: str, data: Any, binary: bool | None) -> bool:
        return self.operations.send(sid, event, data, binary)

    async def join(self, sid: str, room: str, timeout: float) -> bool:
        """Make a socket anywhere join ``room``; False if there is no such socket."""
        return await self.operations.operate(m.JoinRoom(0, sid, room), timeout)

    async def leave(self, sid: str, room: str, timeout: float) -> bool:
        return await self.operations.operate(m.LeaveRoom(0, sid, room), timeout)

    async def disconnect(self, sid: str, code: int, reason: str, timeout: float) -> bool:
        return await self.operations.operate(m.DisconnectSocket(0, sid, code, reason), timeout)

    async def call(
        self, sid: str, event: str, data: Any, timeout: float | None, binary: bool | None
    ) -> Any:
        return await self.operations.call(sid, event, data, timeout, binary)

    def to_user(self, user: str, event: str, data: Any, binary: bool | None) -> int:
        return self.users.send(user, event, data, binary)

    async def disconnect_user(self, user: str, code: int, reason: str, timeout: float) -> int:
        return await self.users.disconnect(user, code, reason, timeout)

    # server events

    def on_server_event(self, name: str, handler: Callable[..., Any]) -> None:
        self._handlers.setdefault(name, []).append(Handler(handler, max_args=2))

    def emit_to_servers(self, name: str, data: Any) -> bool:
        if not self.active:
            return False
        return self.publish(self.all_channel, m.ServerEvent(name, m.pack(data)))

    def emit_to_node(self, node: str, name: str, data: Any) -> bool:
        """A server event for one node's handlers (its inbox)."""
        if not self.active:
            return False
        return self.publish(self.inbox(node), m.ServerEvent(name, m.pack(data)))

    # receiving

    def _receive(self, channel: str, data: bytes) -> None:
        if data[:1] == b"P":  # a room message logged by Redis (roomlog.py)
            self._on_logged(channel, data)
            return
        if data.startswith(self._own):
            return  # our own message, back from the broker (Redis: every one to a room here)
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
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            # RecursionError: nested ~1000 deep; raised here it would break the broker link
            self.dropped_invalid += 1
            logger.debug("dropping an invalid cluster message on %s: %r", channel, exc)
            return
        self.received += 1
        src = env.src
        try:
            # Dispatch on the message type; broadcasts, by far the most frequent, first.
            if type(body) is m.Broadcast:
                self._on_broadcast(body)
            else:
                self._receivers[type(body)](src, body)
        except Exception:
            logger.exception("handling a %s from node %s failed", type(body).__name__, src)

    def _receivers_by_type(self) -> dict[type, Callable[[str, Any], None]]:
        ops = self.operations
        return {
            m.PresenceDelta: self.presence_state.on_delta,
            m.Heartbeat: self._on_heartbeat,
            m.Reply: self.requests.on_reply,
            m.SendTo: ops.send_to,
            m.CallSocket: ops.call_socket,
            m.JoinRoom: ops.operate_here,
            m.LeaveRoom: ops.operate_here,
            m.DisconnectSocket: ops.operate_here,
            m.ListSockets: ops.list_sockets,
            m.ListPresence: self._on_list_presence,
            m.SessionMoved: ops.session_moved,
            m.SessionGone: ops.session_gone,
            m.ServerEvent: self._on_server_event,
            m.Bye: self._on_bye,
            m.SendToUser: self.users.send_here,
            m.DisconnectUser: self.users.disconnect_here,
        }

    def _on_heartbeat(self, src: str, beat: m.Heartbeat) -> None:
        if self.liveness.on_heartbeat(src, beat):
            self.presence_state.resync(src)

    def _on_bye(self, src: str, _: m.Bye) -> None:
        logger.info("node %s left the cluster", src)
        self.drop_node(src)

    def _on_list_presence(self, src: str, query: m.ListPresence) -> None:
        self.requests.reply(src, query.id, result=self.presence_state.snapshot(query.room))

    def _on_broadcast(self, body: m.Broadcast) -> None:
        self.local.deliver(
            body.room, body.payload, body.binary, body.exclude, body.deflated, body.tried
        )

    def _on_logged(self, channel: str, data: bytes) -> None:
        """A logged room message, ours or another node's: deliver it with its position."""
        try:
            epoch, offset, raw = parse_logged(data)
            env = m.decode_envelope(raw)
            body = m.decode_body(env)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self.dropped_invalid += 1
            logger.debug("dropping an invalid logged message on %s: %r", channel, exc)
            return
        if type(body) is not m.Broadcast or body.room is None or self.sync is None:
            self.dropped_invalid += 1
            return
        self.received += 1
        self.sync.logged(body.room, epoch, offset, body, env.src == self.node_id)

    def resumed_here(self, sid: str) -> None:
        """Session ``sid`` resumed on this node: its home node forwards what is sent to it."""
        self.moved.pop(sid, None)
        home = node_of(sid)
        if self.active and home is not None and home != self.node_id:
            self.publish(self.inbox(home), m.SessionMoved(sid))

    def forward_direct(self, sid: str, node: str, payload: bytes, binary: bool) -> None:
        """A direct message for a session of ours that resumed on ``node`` (the session store
        learns it from Redis before the node's notice arrives)."""
        self.moved[sid] = node
        self.publish(self.inbox(node), m.SendTo(sid, payload, binary))

    def ended_here(self, sid: str) -> None:
        """Session ``sid`` (resumed here from another node) ended for good."""
        home = node_of(sid)
        if self.active and home is not None and home != self.node_id:
            self.publish(self.inbox(home), m.SessionGone(sid))

    def _on_server_event(self, src: str, body: m.ServerEvent) -> None:
        handlers = self._handlers.get(body.name)
        if not handlers:
            return
        data = m.unpack(body.data)
        for handler in handlers:
            try:
                result = handler.fn(*(data, src)[: handler.arity])
                if asyncio.iscoroutine(result):
                    self.spawn(_log_failure(result, body.name))
            except Exception:
                logger.exception("server event handler %s for %r failed", handler.name,
                                 body.name)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in a task the node cancels when it closes."""
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
            "publishOverflowed": self.overflowed,
            "received": self.received,
            "droppedVersion": self.dropped_version,
            "nodesDropped": self.liveness.dropped,
            "reconnects": adapter.reconnects if isinstance(adapter, BrokerAdapter) else 0,
            "subscriptions": len(adapter.channels) if adapter is not None else 0,
            # Rooms whose history is still to be read after a broker outage (catchup.py):
            # until it is 0, live messages of those rooms are held back.
            "catchingUp": self.sync.catching_up if self.sync is not None else 0,
            # Without recovery: $gap notices sent to local rooms after broker outages.
            "gaps": self.gaps.sent,
        }
        if aggregate:
            now = time.monotonic()
            listing = [{"node": self.node_id, "self": True, **self.liveness.heartbeat().stats}]
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


async def _log_failure(coro: Any, name: str) -> None:
    try:
        await coro
    except Exception:
        logger.exception("server event handler for %r failed", name)
