"""The broadcast pipeline: one message to the members of a room (or to every socket).

``Broadcaster`` encodes once (the session store logs room messages on one node), delivers here
through ``Fanout``, then, in a cluster, publishes the encoded payload: the compress decision is
``Fanout``'s, made once for here and every other node. With recovery on Redis, Redis logs room
messages and every node (this one too) delivers them from the room channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from smartsocket.protocol import envelope
from smartsocket.protocol.codes import ErrorCode
from smartsocket.protocol.names import check_event
from smartsocket.security import LimitExceeded
from smartsocket.server.fanout import (
    ONE,
    Exclude,
    Fanout,
    SendFrame,
    count_members,
    exclude_ids,
    skip_set,
)
from smartsocket.server.socket import Socket

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.recovery.store import SessionStore


class Broadcaster:
    """Broadcasts made on this node. ``fanout`` and ``recovery`` follow the configuration."""

    __slots__ = ("checked", "cluster", "fanout", "recovery", "sockets")

    def __init__(
        self, sockets: Mapping[str, Socket], cluster: ClusterNode, fanout: Fanout,
        recovery: SessionStore | None = None,
    ) -> None:
        self.sockets = sockets
        self.cluster = cluster
        self.fanout = fanout
        self.recovery = recovery
        self.checked: str | None = None  # the event name checked last: a run repeats it

    def send(
        self, members: Mapping[Socket, SendFrame], event: str, data: Any,
        exclude: Exclude, binary: bool | None, room: str | None = None,
    ) -> int:
        """Encode once, deliver here (server/fanout.py), then in a cluster publish the encoded
        payload to the other nodes (``room`` None: to every socket). Returns the deliveries
        made on this node."""
        if type(event) is not str or event != self.checked:  # a str subclass: every time
            check_event(event)
            if type(event) is str:
                self.checked = event
        cluster = self.cluster
        active = cluster.active
        recovery = self.recovery
        # With recovery a room message is logged even with no member here: a dropped member
        # may resume and want it (on one node the store logs it; in a cluster, Redis).
        logged = recovery is not None and room is not None
        if not members and not active and not logged:
            return 0
        if active and cluster.congested:
            # Refused as a whole, before it is logged or delivered here: never here (or in a
            # history) only and lost for the other nodes.
            raise LimitExceeded(
                ErrorCode.OVERLOADED, "the broker link is congested: publish slower",
                retry_after=0.05,
            )
        if binary is None:
            binary = envelope.needs_binary(data)
        if exclude is not None and not isinstance(exclude, ONE):
            exclude = tuple(exclude)  # read twice below
        skip = skip_set(exclude, self.sockets) if exclude is not None else None
        if logged:
            assert recovery is not None and room is not None
            ids = exclude_ids(exclude) if exclude is not None else None
            # None from the Redis store: Redis logs it as the node publishes it
            payload = recovery.log_room(room, event, data, binary, ids) or envelope.encode_event(
                event, data, binary=binary
            )
        else:
            payload = envelope.encode_event(event, data, binary=binary)
        if not active:
            return self.fanout.deliver(members, payload, binary, skip)
        return self._publish(members, room, payload, binary, skip, exclude_ids(exclude))

    def _publish(
        self, members: Mapping[Socket, SendFrame], room: str | None, payload: bytes,
        binary: bool, skip: set[Socket] | None, ids: tuple[str, ...],
    ) -> int:
        """A broadcast in a cluster: delivered here, then published (or, with recovery on
        Redis, logged by Redis and delivered from the room channel by every node)."""
        cluster = self.cluster
        fan = self.fanout
        if room is not None and cluster.logs_rooms:
            if cluster.publish_logged(room, payload, binary, ids, bool(members)):
                return count_members(members, skip)
            return fan.deliver(members, payload, binary, skip) if members else 0
        deflated, tried = fan.compress_for_publish(payload)
        count = fan.deliver(members, payload, binary, skip, deflated, tried) if members else 0
        cluster.publish_broadcast(room, payload, binary, deflated, tried, ids)
        return count

