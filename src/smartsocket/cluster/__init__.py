"""Beyond one process: nodes joined by a pub/sub broker (Redis, NATS, or in-process memory).

``SmartSocket(cluster_url="redis://127.0.0.1:6379")`` (or ``redis://...?cluster=1`` for a Redis
Cluster, ``nats://...``, ``memory://NAME``) makes a server a node; without ``cluster_url`` it
is a single node and none of this costs anything on the hot path. See ``node.py`` for the
design (channels, faults) and the modules it names (liveness, requests, operations,
presence), ``messages.py`` for what travels between nodes, and ``brokers/`` for the brokers.
"""

from smartsocket.cluster.brokers import (
    Adapter,
    BrokerAdapter,
    MemoryAdapter,
    MemoryBroker,
    create_adapter,
)
from smartsocket.cluster.messages import VERSION, PresenceMember, SocketRecord

__all__ = [
    "VERSION",
    "Adapter",
    "BrokerAdapter",
    "MemoryAdapter",
    "MemoryBroker",
    "PresenceMember",
    "SocketRecord",
    "create_adapter",
]
