"""Counters behind /smartsocket/stats: plain ints on the hot path, rates derived when read.

Definitions (documented in the README): "payload" bytes are message bytes before compression,
"wire" bytes are the bytes actually sent or received for the message payloads (after
compression), excluding WebSocket frame headers.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any


class Stats:
    """Server-wide counters. ``record_*`` methods are called on the hot paths."""

    __slots__ = (
        "bytes_in",
        "bytes_in_wire",
        "bytes_out_payload",
        "bytes_out_wire",
        "compressed_out",
        "compressed_out_payload",
        "compressed_out_wire",
        "dropped_slow",
        "errors_sent",
        "messages_in",
        "messages_out",
        "rate_limit_closes",
        "rate_limited",
        "rejected_connections",
        "rtt",
        "started",
        "started_wall",
        "total_connections",
    )

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.total_connections = 0
        self.messages_in = 0
        self.bytes_in = 0  # inflated
        self.bytes_in_wire = 0
        self.messages_out = 0
        self.bytes_out_payload = 0
        self.bytes_out_wire = 0
        self.compressed_out = 0
        self.compressed_out_payload = 0
        self.compressed_out_wire = 0
        self.errors_sent = 0
        self.rate_limited = 0  # events refused by a rate limit
        self.rate_limit_closes = 0  # sockets closed with 4008
        self.dropped_slow = 0  # sockets dropped as slow consumers (4009)
        self.rejected_connections = 0  # upgrades refused (origin, auth, limits)
        self.rtt: deque[float] = deque(maxlen=1024)  # recent $ping round trips, seconds

    def record_out(self, count: int, payload: int, wire: int) -> None:
        """``count`` deliveries of one message: ``payload`` and ``wire`` bytes each."""
        self.messages_out += count
        self.bytes_out_payload += payload * count
        self.bytes_out_wire += wire * count
        if wire != payload:
            self.compressed_out += count
            self.compressed_out_payload += payload * count
            self.compressed_out_wire += wire * count

    def snapshot(self, *, connections: int, rooms: int) -> dict[str, Any]:
        """The seed README's JSON shape, plus exact numbers under ``raw``."""
        uptime = time.monotonic() - self.started
        payload = self.bytes_in + self.bytes_out_payload
        wire = self.bytes_in_wire + self.bytes_out_wire
        latency = sum(self.rtt) / len(self.rtt) if self.rtt else None
        speed = wire / uptime if uptime > 0 else 0.0
        saved = 1 - wire / payload if payload else 0.0
        compression = (
            1 - self.compressed_out_wire / self.compressed_out_payload
            if self.compressed_out_payload
            else 0.0
        )
        return {
            "connections": connections,
            "totalConnections": self.total_connections,
            "uptime": round(uptime),
            "rooms": rooms,
            "transmission": {
                "totalMessages": self.messages_in + self.messages_out,
                "averageLatency": f"{latency * 1000:.1f}ms" if latency is not None else None,
                "averageSpeed": f"{_human(speed)}/s",
                "averageCompression": f"{compression * 100:.1f}%",
                "totalDataTransmitted": _human(payload),
                "totalCompressed": _human(wire),
                "bandwidthSaved": f"{saved * 100:.1f}%",
            },
            "raw": {
                "uptimeSeconds": uptime,
                "messagesIn": self.messages_in,
                "messagesOut": self.messages_out,
                "bytesIn": self.bytes_in,
                "bytesInWire": self.bytes_in_wire,
                "bytesOutPayload": self.bytes_out_payload,
                "bytesOutWire": self.bytes_out_wire,
                "compressedMessagesOut": self.compressed_out,
                "errorsSent": self.errors_sent,
                "rateLimited": self.rate_limited,
                "rateLimitCloses": self.rate_limit_closes,
                "droppedSlow": self.dropped_slow,
                "rejectedConnections": self.rejected_connections,
                "latencySeconds": latency,
                "latencySamples": len(self.rtt),
                "bytesPerSecond": speed,
                "compressionRatio": compression,
                "bandwidthSavedRatio": saved,
            },
        }


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError("unreachable")
