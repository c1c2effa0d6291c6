"""``LinkGaps``: room messages lost to a broker outage are never lost silently, also without
recovery (with recovery on Redis, ``catchup.py`` catches rooms up instead, or says ``$gap``).

Without a room history nothing missed can be replayed, but the members can be told: a node
whose link to the broker broke (Redis also closes a subscriber that reads too slowly: its
``client-output-buffer-limit pubsub``) sends ``$gap`` to the members of each of its rooms when
the link is back, since what other nodes published meanwhile never reached it; and a node
whose room broadcasts could not be published meanwhile (delivered to its own members only)
publishes a ``$gap`` notice to those rooms, for the other nodes' members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartsocket.cluster import messages as m
from smartsocket.cluster.brokers import BrokerAdapter
from smartsocket.cluster.catchup import gap_notice
from smartsocket.cluster.channels import token_room

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode


class LinkGaps:
    """What a node without room histories tells its rooms' members after a broker outage."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.unpublished: set[str] = set()  # rooms whose broadcasts did not go out
        self.sent = 0  # $gap notices delivered to local rooms (stats: cluster.gaps)

    def not_published(self, room: str | None) -> None:
        """A broadcast to ``room`` was delivered here only (the link is down)."""
        if room is not None:
            self.unpublished.add(room)

    def link_up(self) -> None:
        """The link is back after an outage: what was published meanwhile by the other nodes
        is lost to this node's members, and this node's own broadcasts of that time to the
        other nodes' members."""
        node = self.node
        local = node.local
        gap = gap_notice
        for room in local.room_names():
            self.sent += 1
            local.deliver(room, gap(room), False)
        rooms, self.unpublished = self.unpublished, set()
        adapter = node.adapter
        if isinstance(adapter, BrokerAdapter):  # queued or in flight when the link broke
            lost, adapter.lost_channels = adapter.lost_channels, set()
            marker = f"{node.prefix}.room."
            for channel in lost:
                name = token_room(channel[len(marker):]) if channel.startswith(marker) else None
                if name is not None:
                    rooms.add(name)
        for room in rooms:
            if not node.publish(node.room_channel(room), m.Broadcast(room, gap(room), False)):
                self.unpublished.add(room)  # the link broke again: at the next link_up

