"""Connection state recovery (protocol.md section 8): the layer between ``server/`` and
``cluster/``.

``store``     ``SessionStore``: the one interface (room history, held sessions, idempotent
              replies); ``memory.MemoryStore`` on one node, ``redis.RedisStore`` in a cluster on
              Redis (room histories from ``cluster/roomlog.py``);
``state``     a session's recovery state (direct-message log, joined positions, replies);
``resume``    ``Resumer``: the ``$resume`` flow, over small ``Protocol``s of the server.

The server picks the store once, at start-up (``pick_store``). Catch-up of rooms across broker
outages (``cluster/catchup.py``) stays in ``cluster/``: it orders what a room channel delivers,
driven by the node's link and subscriptions, and holds no session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartsocket.cluster.brokers.base import BrokerAdapter
from smartsocket.recovery.memory import MemoryStore
from smartsocket.recovery.redis import RedisStore
from smartsocket.recovery.resume import Resumer
from smartsocket.recovery.state import Held, Replies, SessionState
from smartsocket.recovery.store import RoomItem, RoomView, SessionStore

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.config import Config

__all__ = [
    "Held",
    "MemoryStore",
    "RedisStore",
    "Replies",
    "Resumer",
    "RoomItem",
    "RoomView",
    "SessionState",
    "SessionStore",
    "pick_store",
]


def pick_store(
    config: Config, node: ClusterNode, memory: MemoryStore | None
) -> SessionStore | None:
    """The store for a server whose node has started: Redis when the node logs its rooms
    there (recovery in a cluster), else ``memory`` (None: recovery is off)."""
    logs, adapter = node.room_logs, node.adapter
    if logs is None or not isinstance(adapter, BrokerAdapter):
        return memory
    return RedisStore(
        config, adapter, logs, prefix=node.prefix, node_id=node.node_id,
        channel=node.room_channel, forward=node.forward_direct,
    )
