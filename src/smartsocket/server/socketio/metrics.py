"""The Socket.IO side's figures for ``GET /metrics`` (a collector of its own, registered
beside the server's; read at scrape time from plain counters)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from smartsocket.server.socketio.endpoint import SocketIOEndpoint


class SocketIOCollector(Collector):
    """Connections by protocol, Engine.IO sessions, Socket.IO packets and refusals."""

    def __init__(self, endpoint: SocketIOEndpoint, connections: Callable[[], int]) -> None:
        self._endpoint = endpoint
        self._connections = connections  # every connected socket, both protocols

    def collect(self) -> Iterator[Metric]:
        endpoint = self._endpoint
        socketio = endpoint.connected()
        by_protocol = GaugeMetricFamily(
            "smartsocket_protocol_connections", "Connected sockets by protocol",
            labels=["protocol"],
        )
        by_protocol.add_metric(["native"], max(0, self._connections() - socketio))
        by_protocol.add_metric(["socketio"], socketio)
        yield by_protocol
        yield GaugeMetricFamily(
            "smartsocket_socketio_sessions", "Open Engine.IO sessions (connected or not)",
            value=len(endpoint.sessions),
        )
        c = endpoint.counters
        for name, doc, value in (
            ("socketio_sessions_opened", "Engine.IO sessions opened", c.sessions_total),
            ("socketio_packets_received", "Engine.IO messages received", c.packets_in),
            ("socketio_packets_sent", "Socket.IO packets sent (one per receiver)",
             c.packets_out),
            ("socketio_connect_errors", "CONNECTs refused with CONNECT_ERROR", c.connect_errors),
        ):
            yield CounterMetricFamily(f"smartsocket_{name}", doc, value=value)
