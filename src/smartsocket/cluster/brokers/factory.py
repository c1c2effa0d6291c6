"""``create_adapter``: the adapter for a ``cluster_url``. The network adapters are imported
when asked for (their client libraries are optional extras)."""

from __future__ import annotations

from smartsocket.cluster.brokers.base import LINK_TIMEOUT, Adapter
from smartsocket.cluster.brokers.memory import MemoryAdapter, MemoryBroker


def create_adapter(url: str, link_timeout: float = LINK_TIMEOUT) -> Adapter:
    """The adapter for a ``cluster_url``: ``redis://``, ``rediss://``, ``unix://``;
    ``redis://...?cluster=1`` (a Redis Cluster: sharded pub/sub); ``nats://``, ``tls://``
    (NATS over TLS) or ``memory://NAME``. ``link_timeout``: the network adapters' liveness
    period (``BrokerAdapter.idle_timeout``)."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from smartsocket.cluster.brokers.redis_cluster import RedisClusterAdapter, is_cluster_url

        if is_cluster_url(url):
            return RedisClusterAdapter(url, link_timeout)
        from smartsocket.cluster.brokers.redis import RedisAdapter

        return RedisAdapter(url, link_timeout)
    if scheme in ("nats", "tls"):
        from smartsocket.cluster.brokers.nats import NatsAdapter

        return NatsAdapter(url, link_timeout)
    if scheme == "memory":
        return MemoryAdapter(MemoryBroker.named(url.partition("://")[2]))
    raise ValueError(f"unsupported cluster_url scheme {scheme!r} (redis://, nats://, memory://)")
