"""What a server reports about itself: ``/smartsocket/stats``, ``/smartsocket/health`` and
``/metrics`` (Prometheus), gathered from its parts when asked (nothing on the hot path).

``Figures`` reads the parts as they are at each call (the stats and the session store follow
the configuration); the Prometheus registry is made on first use and again after the
configuration changed (``configure``): its collector holds that configuration's stats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smartsocket._version import __version__
from smartsocket.server import prometheus
from smartsocket.server.socketio.metrics import SocketIOCollector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from smartsocket.server.parts import Parts
    from smartsocket.server.socketio import SocketIOEndpoint


class Figures:
    """The figures of the server made of ``parts``, with its Socket.IO endpoint's."""

    def __init__(self, parts: Parts, socketio: SocketIOEndpoint) -> None:
        self._parts = parts
        self._socketio = socketio
        self._prometheus: CollectorRegistry | None = None

    def configure(self) -> None:
        self._prometheus = None  # its collector reads the previous configuration's parts

    def registry(self) -> CollectorRegistry:
        if self._prometheus is None:
            parts = self._parts
            sockets = parts.sockets
            self._prometheus = prometheus.registry_for(prometheus.ServerCollector(
                sockets, parts.registry, parts.resumer, parts.stats
            ))
            self._prometheus.register(SocketIOCollector(self._socketio, lambda: len(sockets)))
        return self._prometheus

    def metrics(self) -> bytes:
        return prometheus.exposition(self.registry())

    def health(self) -> tuple[int, dict[str, Any]]:
        parts = self._parts
        closing = parts.connections.closing
        body: dict[str, Any] = {
            "status": "closing" if closing else "ok",
            "version": __version__,
            "connections": len(parts.sockets),
        }
        cluster = parts.cluster
        if cluster.active:
            # Cut off from the broker the node still serves its own clients: "degraded", but
            # 200, so a load balancer keeps it (an outage of the broker must not empty the pool).
            section = cluster.stats_section()
            if section["status"] == "degraded" and not closing:
                body["status"] = "degraded"
            body["cluster"] = section
        return (503 if closing else 200), body

    def stats(self, aggregate: bool) -> dict[str, Any]:
        parts = self._parts
        registry = parts.registry
        figures = parts.still_stats.snapshot(
            connections=len(parts.sockets),
            rooms=len(registry),
            top_rooms=registry.largest(10),
        )
        if parts.stats is None:
            figures["metrics"] = "disabled"  # the counters are zeros, not measurements
        if parts.recovery is not None:
            figures["recovery"] = parts.resumer.stats()
        if (outbox := parts.outbox.stats()) is not None:
            figures["outbox"] = outbox
        if parts.config.socketio:
            figures["socketio"] = self._socketio.stats()
        cluster = parts.cluster
        if cluster.active:
            section = figures["cluster"] = cluster.stats_section(aggregate=aggregate)
            if "raw" in figures:
                figures["raw"]["clusterPublished"] = section["published"]
                figures["raw"]["clusterPublishFailed"] = section["publishFailed"]
                figures["raw"]["clusterReceived"] = section["received"]
        return figures
