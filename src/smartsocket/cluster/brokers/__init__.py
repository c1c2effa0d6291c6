"""The brokers that join nodes: a pub/sub link moving opaque bytes on named channels.

- ``base``: the ``Adapter`` interface and ``BrokerAdapter`` (supervised link, ordered outbound
  queue, reconnect with backoff) that the network brokers share;
- ``memory``: ``MemoryBroker`` / ``MemoryAdapter``, nodes in one process;
- ``redis``, ``redis_cluster``, ``nats``: the network brokers (optional extras, imported on use);
- ``scripts``: the Lua script registry the Redis brokers load;
- ``factory``: ``create_adapter(url)``, the adapter for a ``cluster_url``.

Nothing here knows rooms or sockets (``cluster/node.py`` does).
"""

from smartsocket.cluster.brokers.base import Adapter, Backoff, BrokerAdapter, Outbound
from smartsocket.cluster.brokers.factory import create_adapter
from smartsocket.cluster.brokers.memory import MemoryAdapter, MemoryBroker
from smartsocket.cluster.brokers.scripts import SCRIPTS, Script, ScriptCall

__all__ = [
    "SCRIPTS",
    "Adapter",
    "Backoff",
    "BrokerAdapter",
    "MemoryAdapter",
    "MemoryBroker",
    "Outbound",
    "Script",
    "ScriptCall",
    "create_adapter",
]
