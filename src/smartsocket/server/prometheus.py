"""``GET /metrics``: the server's figures in the Prometheus text format (prometheus-client).

A collector reads the same plain counters as /smartsocket/stats at scrape time, so the hot
paths pay nothing for Prometheus. Each server has its own registry (several servers in one
process do not clash), with the process collector (memory, CPU, open fds) added.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from smartsocket.metrics import RTT_BUCKETS

if TYPE_CHECKING:
    from smartsocket.metrics import Stats
    from smartsocket.recovery.resume import Resumer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerCollector(Collector):
    """Reads one server's parts at scrape time: its sockets and rooms (sized), the resume flow
    (its store is None when recovery is off) and the stats (None when off)."""

    def __init__(
        self, sockets: Sized, rooms: Sized, resumer: Resumer, stats: Stats | None
    ) -> None:
        self._sockets = sockets
        self._rooms = rooms
        self._resumer = resumer
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "smartsocket_connections", "Connected sockets", value=len(self._sockets)
        )
        yield GaugeMetricFamily(
            "smartsocket_rooms", "Rooms with members", value=len(self._rooms)
        )
        resumer = self._resumer
        if resumer.store is not None:
            yield GaugeMetricFamily(
                "smartsocket_held_sessions", "Dropped sessions that may still resume",
                value=resumer.store.stats()["heldSessions"],
            )
            resumes = CounterMetricFamily(
                "smartsocket_resumes", "Resume attempts ($resume)", labels=["result"]
            )
            resumes.add_metric(["recovered"], resumer.recovered)
            resumes.add_metric(["failed"], resumer.failed)
            yield resumes
        stats = self._stats
        if stats is None:
            return
        counters = (
            ("connections_accepted", "Connections accepted and admitted",
             stats.total_connections),
            ("messages_received", "Messages received from clients", stats.messages_in),
            ("messages_sent", "Messages delivered to clients (one per receiver)",
             stats.messages_out),
            ("errors_sent", "Ack errors and $error events sent", stats.errors_sent),
            ("rate_limited", "Events refused by a rate limit", stats.rate_limited),
            ("rate_limit_closes", "Sockets closed for rate limit abuse (4008)",
             stats.rate_limit_closes),
            ("error_closes", "Sockets closed by the error-rate rule (1008)", stats.error_closes),
            ("dropped_slow_consumers", "Sockets dropped as slow consumers (4009)",
             stats.dropped_slow),
            ("rejected_connections", "Connections refused (origin, auth, limits)",
             stats.rejected_connections),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(f"smartsocket_{name}", doc, value=value)
        received = CounterMetricFamily(
            "smartsocket_received_bytes", "Message bytes received", labels=["kind"]
        )
        received.add_metric(["wire"], stats.bytes_in_wire)
        received.add_metric(["payload"], stats.bytes_in)
        yield received
        sent = CounterMetricFamily(
            "smartsocket_sent_bytes", "Message bytes sent (per delivery)", labels=["kind"]
        )
        sent.add_metric(["wire"], stats.bytes_out_wire)
        sent.add_metric(["payload"], stats.bytes_out_payload)
        yield sent
        cumulative, buckets = 0, []
        for bound, count in zip((*RTT_BUCKETS, float("inf")), stats.rtt_buckets, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        yield HistogramMetricFamily(
            "smartsocket_heartbeat_rtt_seconds",
            "Round trip of $ping/$pong heartbeats",
            buckets=buckets,
            sum_value=stats.rtt_sum,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def registry_for(collector: ServerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
