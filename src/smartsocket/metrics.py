"""Counters behind /smartsocket/stats: plain ints on the hot path, rates derived when read.

Definitions (documented in the README): "payload" bytes are message bytes before compression,
"wire" bytes are the bytes actually sent or received for the message payloads (after
compression), excluding WebSocket frame headers.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

# Upper bounds (seconds) of the $ping round-trip histogram exported to Prometheus.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Sample:
    """Counters at one instant, for rates over the last second and minute."""

    __slots__ = ("bytes_in", "bytes_out", "cpu", "messages_in", "messages_out", "t")

    def __init__(self, stats: Stats) -> None:
        self.t = time.monotonic()
        self.cpu = time.process_time()
        self.messages_in = stats.messages_in
        self.messages_out = stats.messages_out
        self.bytes_in = stats.bytes_in_wire
        self.bytes_out = stats.bytes_out_wire


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
        "error_closes",
        "errors_sent",
        "messages_in",
        "messages_out",
        "rate_limit_closes",
        "rate_limited",
        "rejected_connections",
        "rtt",
        "rtt_buckets",
        "rtt_count",
        "rtt_sum",
        "samples",
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
        self.error_closes = 0  # sockets closed by the error-rate rule (1008)
        self.dropped_slow = 0  # sockets dropped as slow consumers (4009)
        self.rejected_connections = 0  # upgrades refused (origin, auth, limits)
        self.rtt: deque[float] = deque(maxlen=1024)  # recent $ping round trips, seconds
        self.rtt_buckets = [0] * (len(RTT_BUCKETS) + 1)  # last: +Inf
        self.rtt_sum = 0.0
        self.rtt_count = 0
        self.samples: deque[Sample] = deque([Sample(self)], maxlen=61)  # one a second

    def record_rtt(self, seconds: float) -> None:
        """A $pong arrived (once per ping_interval per socket: not a hot path)."""
        self.rtt.append(seconds)
        self.rtt_sum += seconds
        self.rtt_count += 1
        index = 0
        for bound in RTT_BUCKETS:
            if seconds <= bound:
                break
            index += 1
        self.rtt_buckets[index] += 1

    def sample(self) -> None:
        """Called every second by the server: keeps the last minute of counters."""
        self.samples.append(Sample(self))

    def rates(self) -> dict[str, float]:
        """Per-second rates over the last second and over the last minute (or since start)."""
        now = Sample(self)
        last = self.samples[-1]
        first = self.samples[0]
        out: dict[str, float] = {}
        for suffix, base in (("PerSecond", last), ("PerSecondLastMinute", first)):
            span = now.t - base.t
            if span < 0.2 and base is last and len(self.samples) > 1:
                base = self.samples[-2]  # just sampled: use the previous second
                span = now.t - base.t
            span = max(span, 1e-9)
            out["messagesIn" + suffix] = (now.messages_in - base.messages_in) / span
            out["messagesOut" + suffix] = (now.messages_out - base.messages_out) / span
            out["bytesIn" + suffix] = (now.bytes_in - base.bytes_in) / span
            out["bytesOut" + suffix] = (now.bytes_out - base.bytes_out) / span
            out["cpuPercent" + suffix] = 100 * (now.cpu - base.cpu) / span
        return out

    def latency(self) -> dict[str, float | int]:
        samples = sorted(self.rtt)
        if not samples:
            return {"p50Ms": 0.0, "p99Ms": 0.0, "meanMs": 0.0, "samples": 0}  # the shape stays
        n = len(samples)
        return {
            "p50Ms": samples[(n - 1) // 2] * 1000,
            "p99Ms": samples[min(n - 1, round(0.99 * (n - 1)))] * 1000,
            "meanMs": sum(samples) / n * 1000,
            "samples": n,
        }

    def record_out(self, count: int, payload: int, wire: int) -> None:
        """``count`` deliveries of one message: ``payload`` and ``wire`` bytes each."""
        self.messages_out += count
        self.bytes_out_payload += payload * count
        self.bytes_out_wire += wire * count
        if wire != payload:
            self.compressed_out += count
            self.compressed_out_payload += payload * count
            self.compressed_out_wire += wire * count

    def snapshot(
        self, *, connections: int, rooms: int, top_rooms: list[tuple[str, int]] | None = None
    ) -> dict[str, Any]:
        """The seed README's JSON shape, plus rates, latency, process figures and exact
        numbers under ``raw``."""
        uptime = time.monotonic() - self.started
        payload = self.bytes_in + self.bytes_out_payload
        wire = self.bytes_in_wire + self.bytes_out_wire
        latency = sum(self.rtt) / len(self.rtt) if self.rtt else 0.0  # nothing measured yet
        speed = wire / uptime if uptime > 0 else 0.0
        saved = 1 - wire / payload if payload else 0.0
        compression = (
            1 - self.compressed_out_wire / self.compressed_out_payload
            if self.compressed_out_payload
            else 0.0
        )
        rates = self.rates()
        return {
            "connections": connections,
            "totalConnections": self.total_connections,
            "uptime": round(uptime),
            "rooms": rooms,
            "topRooms": [{"room": name, "members": n} for name, n in top_rooms or ()],
            "rates": rates,
            "latency": self.latency(),
            "process": {
                "rssBytes": rss_bytes(),
                "cpuPercent": rates["cpuPercentPerSecond"],
                "pid": os.getpid(),
            },
            "transmission": {
                "totalMessages": self.messages_in + self.messages_out,
                "averageLatency": f"{latency * 1000:.1f}ms",
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
                "errorCloses": self.error_closes,
                "droppedSlow": self.dropped_slow,
                "rejectedConnections": self.rejected_connections,
                "latencySeconds": latency,
                "latencySamples": len(self.rtt),
                "bytesPerSecond": speed,
                "compressionRatio": compression,
                "bandwidthSavedRatio": saved,
            },
        }


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError("unreachable")
