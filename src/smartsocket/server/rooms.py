"""Room membership and room handles.

The registry maps a room name to its members: ``{socket: send_frame}``, so a broadcast loop is
one dict iteration and one bound-method call per member. Empty rooms are dropped at once;
``Room`` is a cheap handle by name, valid whether or not the room has members right now.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from smartsocket.protocol.codes import ErrorCode
from smartsocket.security import LimitExceeded, TokenBucket

if TYPE_CHECKING:
    from smartsocket.cluster.messages import PresenceMember
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.config import Config
    from smartsocket.metrics import Stats
    from smartsocket.server.room_policy import RoomGate
    from smartsocket.server.socket import Socket

SendFrame = Callable[[bytes], None]
Exclude = "Socket | str | Iterable[Socket | str] | None"


class RoomRegistry:
    """Which sockets are in which room, on this node."""

    __slots__ = ("_rooms", "hook")

    def __init__(self, hook: ClusterNode | None = None) -> None:
        self._rooms: dict[str, dict[Socket, SendFrame]] = {}
        self.hook = hook  # told of every membership change (channels, presence)

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, name: object) -> bool:
        return name in self._rooms

    def names(self) -> list[str]:
        return list(self._rooms)

    def add(self, name: str, socket: Socket, send: SendFrame) -> bool:
        """Add ``socket``; True if it was not a member yet."""
        members = self._rooms.get(name)
        created = members is None
        if members is None:
            members = self._rooms[name] = {}
        elif socket in members:
            return False
        members[socket] = send
        if self.hook is not None:
            self.hook.room_joined(name, socket, created)
        return True

    def discard(self, name: str, socket: Socket) -> bool:
        """Remove ``socket``; True if it was a member. The last member out drops the room."""
        members = self._rooms.get(name)
        if members is None or members.pop(socket, None) is None:
            return False
        if not members:
            del self._rooms[name]
        if self.hook is not None:
            self.hook.room_left(name, socket, not members)
        return True

    def set_sender(self, name: str, socket: Socket, send: SendFrame) -> None:
        """Change how ``socket`` gets this room's frames (it must be a member)."""
        self._rooms[name][socket] = send

    def members(self, name: str) -> Mapping[Socket, SendFrame]:
        return self._rooms.get(name) or _EMPTY

    def pop(self, name: str) -> dict[Socket, SendFrame]:
        members = self._rooms.pop(name, None) or {}
        if members and self.hook is not None:
            self.hook.room_removed(name, members)
        return members

    def largest(self, count: int) -> list[tuple[str, int]]:
        """The ``count`` rooms with the most members, with their sizes."""
        sizes = ((name, len(members)) for name, members in self._rooms.items())
        return heapq.nlargest(count, sizes, key=lambda item: item[1])


_EMPTY: Mapping[Any, Any] = {}


class RoomLimits:
    """Per-room broadcast rates (``room_rate_limit_messages``): one token bucket per room with
    members; a room that emptied forgets its bucket (``prune``)."""

    __slots__ = ("_buckets", "burst", "clock", "rate", "stats")

    def __init__(self, config: Config, clock: Callable[[], int]) -> None:
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self.stats: Stats | None = None
        self.configure(config, None)

    def configure(self, config: Config, stats: Stats | None) -> None:
        self.rate = config.room_rate_limit_messages
        self.burst = config.room_rate_limit_burst or max(1.0, 2 * self.rate)
        self.stats = stats

    def check(self, name: str) -> None:
        """Count a broadcast to ``name``; raise LimitExceeded when the room is over its rate."""
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = TokenBucket(self.rate, self.burst, self.clock())
        wait = bucket.take(self.clock())
        if wait:
            if self.stats is not None:
                self.stats.rate_limited += 1
            raise LimitExceeded(
                ErrorCode.RATE_LIMITED, f"room {name!r} is over its broadcast rate",
                retry_after=round(wait, 3),
            )

    def prune(self, registry: RoomRegistry) -> None:
        for name in [n for n in self._buckets if n not in registry]:
            del self._buckets[name]


class RoomContext:
    """What ``Room`` handles and ``RoomsView`` use of their server: the registry, the per-room
    rates, the room policies, the broadcast (``Broadcaster.send``, bound once) and the cluster."""

    __slots__ = ("broadcast", "cluster", "gate", "limits", "registry")

    def __init__(
        self, registry: RoomRegistry, limits: RoomLimits, broadcast: Callable[..., int],
        cluster: ClusterNode, gate: RoomGate,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.gate = gate  # the room policies (rebuilt with the configuration)
        self.broadcast = broadcast
        self.cluster = cluster


class Room:
    """A room by name. ``server.room(name)`` returns one; members come and go."""

    __slots__ = ("_ctx", "name")

    def __init__(self, context: RoomContext, name: str) -> None:
        self._ctx = context
        self.name = name

    def broadcast(
        self,
        event: str,
        data: Any = None,
        *,
        exclude: Socket | str | Iterable[Socket | str] | None = None,
        binary: bool | None = None,
    ) -> int:
        """Send ``event`` to every member except ``exclude`` (sockets or socket ids).

        The message is encoded and framed once for all members. Returns the deliveries made
        on this node (in a cluster the other nodes deliver to their members too, uncounted).
        With ``room_rate_limit_messages`` set, raises LimitExceeded (``rate_limited``) when the
        room is over its rate; in a handler that becomes the sender's ack error.
        """
        ctx = self._ctx
        gate = ctx.gate
        if gate.active and gate.check_rate(self.name):
            pass  # the room's policy sets its rate
        elif ctx.limits.rate:
            ctx.limits.check(self.name)
        return ctx.broadcast(
            ctx.registry.members(self.name), event, data, exclude, binary, self.name
        )

    emit = broadcast

    async def subscribed(self, *, timeout: float = 2.0) -> bool:
        """In a cluster, the first local member's join subscribes this node to the room's
        channel: await this (e.g. before acking a join) to be sure broadcasts made on other
        nodes from now on reach the room's members here. False on timeout or no local member."""
        return await self._ctx.cluster.subscribed(self.name, timeout)

    async def presence(self, *, timeout: float = 2.0) -> list[PresenceMember]:
        """Members cluster-wide, each with the ``socket.presence`` info its app set."""
        return await self._ctx.cluster.presence(self.name, timeout)

    @property
    def sockets(self) -> list[Socket]:
        return list(self._ctx.registry.members(self.name))

    def socket_count(self) -> int:
        return len(self._ctx.registry.members(self.name))

    def __len__(self) -> int:
        return self.socket_count()

    def __contains__(self, socket: object) -> bool:
        return socket in self._ctx.registry.members(self.name)

    def __iter__(self) -> Iterator[Socket]:
        return iter(self.sockets)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Room):
            return False
        room: Room = other
        return room.name == self.name and room._ctx is self._ctx

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={self.socket_count()}>"


class RoomsView(Mapping[str, Room]):
    """``server.rooms``: a read-only mapping of the rooms that have members."""

    __slots__ = ("_ctx",)

    def __init__(self, context: RoomContext) -> None:
        self._ctx = context

    def __getitem__(self, name: str) -> Room:
        if name not in self._ctx.registry:
            raise KeyError(name)
        return Room(self._ctx, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ctx.registry.names())

    def __len__(self) -> int:
        return len(self._ctx.registry)
