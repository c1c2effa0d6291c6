"""Which other nodes are alive.

Every node publishes a heartbeat on ``<prefix>.all`` each ``cluster_heartbeat`` seconds
(carrying its counters, for cluster-wide stats); a node unheard of for ``node_timeout`` seconds
is dropped: it leaves the counts, its members leave presence (members elsewhere get
``$presence`` ``left``) and requests stop waiting for it. A graceful shutdown says goodbye
(``Bye``) and is dropped at once. A heartbeat carries the sender's epoch, which it bumps when
it reconnects to the broker: a new epoch, like a new node, makes peers resync their view of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from smartsocket.cluster import messages as m

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode

logger = logging.getLogger("smartsocket.cluster")


class RemoteNode:
    __slots__ = ("epoch", "id", "interval", "last_seen", "started", "stats")

    def __init__(self, node_id: str, beat: m.Heartbeat, now: float) -> None:
        self.id = node_id
        self.epoch = beat.epoch
        self.interval = beat.interval
        self.started = beat.started
        self.stats = beat.stats
        self.last_seen = now


class Liveness:
    """Heartbeats out and in; the other nodes as last heard."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.nodes: dict[str, RemoteNode] = {}
        self.dropped = 0  # nodes dropped (silent, or said goodbye)

    async def run(self) -> None:
        node = self.node
        due = time.monotonic()
        while True:
            now = time.monotonic()
            node.publish(node.all_channel, self.heartbeat())
            self._expire(now, late=max(0.0, now - due))
            due = now + node.heartbeat_interval
            await asyncio.sleep(node.heartbeat_interval)

    def heartbeat(self) -> m.Heartbeat:
        node = self.node
        counters = node.local.counters()
        counters["publishFailed"] = node.failed_total
        return m.Heartbeat(node.epoch, node.heartbeat_interval, node.started, counters)

    def on_heartbeat(self, src: str, beat: m.Heartbeat) -> bool:
        """Note ``src`` alive; True when it is new or reconnected (its state needs a resync)."""
        now = time.monotonic()
        known = self.nodes.get(src)
        if known is None:
            self.nodes[src] = RemoteNode(src, beat, now)
            logger.info("node %s joined the cluster", src)
            # Introduce ourselves now rather than at our next beat.
            self.node.publish(self.node.inbox(src), self.heartbeat())
            return True
        resync = known.epoch != beat.epoch
        known.epoch, known.stats, known.last_seen = beat.epoch, beat.stats, now
        known.interval = beat.interval
        return resync

    def _expire(self, now: float, late: float) -> None:
        """Drop the nodes silent for longer than ``node_timeout``, not counting ``late``, how
        late this round runs: a stalled event loop (a long handler, a busy machine) has not
        read the heartbeats that came in meanwhile, so their senders only look silent."""
        timeout = self.node.node_timeout + late
        for known in [n for n in self.nodes.values() if now - n.last_seen > timeout]:
            logger.warning("node %s silent for %.1f s: dropped from the cluster", known.id,
                           now - known.last_seen)
            self.node.drop_node(known.id)

    def forget(self, node_id: str) -> bool:
        """Drop ``node_id``; False if it was not known."""
        if self.nodes.pop(node_id, None) is None:
            return False
        self.dropped += 1
        return True
