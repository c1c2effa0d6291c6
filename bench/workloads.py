"""Workloads: what the load generator does against each peer.

A workload is a list of *measures*; each measure is one load generator run
against a freshly started server (measures of one workload share the server
instance of that repetition).  Adding a workload = adding a :class:`Workload`
to :data:`WORKLOADS` (and, if it needs a new traffic pattern, a mode in
bench/loadgen/loadgen.c).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Result = dict[str, Any]  # the generator's JSON result
Window = dict[
    str, Any
]  # CPU/RSS samples taken around the measured window (loadgen.LoadgenRun.window)
Prev = dict[str, dict[str, Any]]  # measure key -> record, same peer and repetition


class NeedsEarlierMeasure(RuntimeError):
    """A measure's arguments depend on a measure that did not succeed."""


@dataclass
class Options:
    duration: float = 10.0  # measured window of the throughput measures, seconds
    latency_duration: float = 3.0  # measured window of latency measures
    warmup: float = 1.0
    repeat: int = 3
    quick: bool = False
    clients: int = 50
    inflight: int = 16
    members: int = 1000
    window: int = 32
    payload_size: int = 64
    half_load: float = 0.5  # ack/half-load: fraction of the peer's measured ack rate
    deflate_payload: int = 1024  # fanout-deflate: chat text bytes (words)
    deflate_window: int = 16  # fanout-deflate: messages not yet fully delivered
    idle_connections: int = 10000
    idle_settle: float = 2.0  # idle: wait after the last handshake before reading RSS
    idle_hold: float = 2.0  # idle: connections held open after that (CPU of idle sockets)
    rooms: int = 1000
    room_members: int = 10
    room_window: int = 2  # rooms: messages per room not yet fully delivered
    connect_timeout: float = 60.0
    drain_timeout: float = 5.0

    def apply_quick(self) -> None:
        self.quick = True
        self.duration = 2.0
        self.latency_duration = 1.0
        self.warmup = 0.5
        self.repeat = 1
        self.idle_settle = 1.0
        self.idle_hold = 1.0


@dataclass
class Extra:
    """One more column of a measure's table: a number taken from each run (median shown)."""

    key: str
    header: str
    value: Callable[[Result, Window], float | None]
    fmt: Callable[[float], str]


@dataclass
class Measure:
    key: str  # unique, e.g. "ack" or "ack/latency"
    title: str
    unit: str  # of the headline metric
    higher_is_better: bool
    args: Callable[[Options, Prev], list[str]]  # loadgen arguments (besides proto/port/path)
    metric: Callable[[Result, Window], float]
    window_s: Callable[[Options], float]
    checks: Callable[[Result, Options], list[str]] = field(default=lambda r, o: [])
    params: Callable[[Options], str] = field(default=lambda o: "")
    extras: list[Extra] = field(default_factory=list)
    rss: bool = False  # read the server's RSS before the run and at the window markers
    setup_s: Callable[[Options], float] = field(default=lambda o: 0.0)  # extra time budget
    drain_s: Callable[[Options], float] | None = None  # drain timeout (default: options')
    lat_label: str = "latency p50 / p99"
    # an extra to chart as a panel of its own: (extra key, title, unit); lower is better
    chart_extra: tuple[str, str, str] | None = None

    def drain_timeout(self, o: Options) -> float:
        return self.drain_s(o) if self.drain_s else o.drain_timeout

    def timeout_s(self, o: Options) -> float:
        return (
            o.connect_timeout
            + max(o.warmup, o.idle_settle)
            + self.window_s(o)
            + self.drain_timeout(o)
            + self.setup_s(o)
            + 30.0
        )


@dataclass
class Workload:
    name: str
    description: str
    measures: list[Measure]
    chart_log: bool = True  # log scale when the values span more than 20x
    # peers of the two ratio columns (default: --baseline and SECOND_BASELINE)
    baselines: tuple[str, str] | None = None


# --------------------------------------------------------------------------
# checks shared by all measures


def common_checks(r: Result, o: Options) -> list[str]:
    notes = []
    if r.get("closed_during_run"):
        notes.append(f"{r['closed_during_run']} connection(s) closed during the run")
    if r.get("unexpected_acks"):
        notes.append(f"{r['unexpected_acks']} acks with unknown id")
    if r.get("ack_errors"):
        notes.append(f"{r['ack_errors']} ack errors")
    if r.get("proto") == "smartsocket" and r.get("subprotocol_echoed", 0) < r.get("clients", 0):
        notes.append("server did not echo Sec-WebSocket-Protocol")
    return notes


def ack_checks(r: Result, o: Options) -> list[str]:
    notes = common_checks(r, o)
    if not r.get("drained"):
        notes.append(f"not drained: {r.get('lost')} of {r.get('sent_total')} requests unanswered")
    elif r.get("acks_total") != r.get("sent_total"):
        notes.append(f"acks {r.get('acks_total')} != requests {r.get('sent_total')}")
    if r.get("echo_mismatch"):
        notes.append(f"{r['echo_mismatch']} echo replies with wrong data")
    return notes


def fanout_checks(r: Result, o: Options) -> list[str]:
    notes = common_checks(r, o)
    exp = r.get("expected_deliveries")
    got = r.get("deliveries_total")
    if not r.get("drained"):
        notes.append(f"not drained: {got} of {exp} deliveries")
    elif exp != got:
        notes.append(f"deliveries {got} != messages x (members-1) = {exp}")
    if r.get("delivered_mismatch"):
        notes.append(f"{r['delivered_mismatch']} chat acks with delivered != members-1")
    if r.get("chat_acks") != r.get("messages_sent"):
        notes.append(f"chat acks {r.get('chat_acks')} != messages {r.get('messages_sent')}")
    if r.get("self_deliveries"):
        notes.append(f"sender received its own message {r['self_deliveries']} times")
    if r.get("bad_seq") or r.get("over_deliveries"):
        notes.append(
            f"bad/duplicate/cross-room deliveries: "
            f"{r.get('bad_seq', 0) + r.get('over_deliveries', 0)}"
        )
    if r.get("join_members_max") not in (None, -1, r.get("members")):
        notes.append(f"room reported {r.get('join_members_max')} members")
    return notes


def deflate_checks(r: Result, o: Options) -> list[str]:
    notes = fanout_checks(r, o)
    d = r.get("deflate") or {}
    if d.get("inflate_errors"):
        notes.append(f"{d['inflate_errors']} messages failed to inflate")
    if not d.get("negotiated"):
        notes.append("permessage-deflate not negotiated: sent uncompressed")
    elif d.get("negotiated") != r.get("clients"):
        notes.append(
            f"deflate negotiated on {d.get('negotiated')} of {r.get('clients')} connections"
        )
    return notes


def cluster_checks(r: Result, o: Options) -> list[str]:
    """fanout_checks without the two that count one node only: in a cluster the chat ack's
    `delivered` and the join ack's `members` are the publisher's (joiner's) node's own counts.
    Every delivery is still checked at the receivers (count, sequence, room, no duplicate)."""
    return [
        n
        for n in fanout_checks(r, o)
        if "chat acks with delivered" not in n and "room reported" not in n
    ]


def idle_checks(r: Result, o: Options) -> list[str]:
    notes = common_checks(r, o)
    if r.get("ready") != r.get("clients"):
        notes.append(f"only {r.get('ready')} of {r.get('clients')} connections ready")
    return notes


def half_load_checks(r: Result, o: Options) -> list[str]:
    notes = ack_checks(r, o)
    offered = float(r.get("rate_offered") or 0)
    got = float(r.get("rate") or 0)
    if offered and got < 0.95 * offered:
        notes.append(f"server kept up with only {got / offered:.0%} of the offered rate")
    if r.get("rate_blocked"):
        notes.append("requests waited for a free in-flight slot (server behind)")
    else:
        # How late the generator itself sent (it busy-polls, so this stays at a few us unless
        # it lost its core): a large share of the p99 is then the generator's, not the server's.
        lag99, p99 = _lag(r, "p99"), _lat(r, "p99")
        if p99 > 0 and lag99 > 0.25 * p99:
            notes.append(
                f"generator late: its send lag p99 is {_fmt_us(lag99)} of the {_fmt_us(p99)} p99"
            )
    return notes


def _lat(r: Result, k: str) -> float:
    return float(r.get("lat_us", {}).get(k, 0.0))


def _lag(r: Result, k: str) -> float:
    """Rate mode: how late the generator sent, vs the schedule (includes waits for a slot)."""
    return float(r.get("send_lag_us", {}).get(k, 0.0))


def _rate(r: Result, w: Window) -> float:
    return float(r["rate"])


def _rss_per_conn_kib(r: Result, w: Window) -> float:
    """(RSS with every connection open, after the settle time - RSS before) / connections."""
    rss = w.get("rss_kb") or {}
    before, after = rss.get("before"), rss.get("start")
    n = r.get("ready") or 0
    if before is None or after is None or not n:
        raise ValueError("no RSS samples")
    return max(0.0, float(after - before) / float(n))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ack_args(o: Options, prev: Prev) -> list[str]:
    return [
        *("--workload", "ack", "--clients", str(o.clients), "--inflight", str(o.inflight)),
        *("--payload-size", str(o.payload_size), "--duration", str(o.duration)),
    ]


def _half_load_args(o: Options, prev: Prev) -> list[str]:
    base = prev.get("ack")
    if not base or not base.get("ok") or not base.get("metric"):
        raise NeedsEarlierMeasure("needs a successful `ack` throughput run first")
    rate = max(1.0, float(base["metric"]) * o.half_load)
    return [
        *("--workload", "ack", "--clients", str(o.clients), "--inflight", str(o.inflight)),
        *("--rate", f"{rate:.0f}", "--payload-size", str(o.payload_size)),
        *("--duration", str(o.latency_duration)),
    ]


def _fanout_args(members: int, window: int, payload: int, duration: float) -> list[str]:
    return [
        *("--workload", "fanout", "--members", str(members), "--window", str(window)),
        *("--payload-size", str(payload), "--duration", str(duration)),
    ]


def _fmt_int(v: float) -> str:
    return f"{v:,.0f}"


def _fmt_x(v: float) -> str:
    return f"{v:.1f}x"


def _fmt_pct(v: float) -> str:
    return f"{v:.0%}"


def _fmt_s(v: float) -> str:
    return f"{v:.2f} s"


def _fmt_us(v: float) -> str:
    return f"{v:,.0f} \u00b5s" if v >= 10 else f"{v:.1f} \u00b5s"


def _fmt_mib(v: float) -> str:
    return f"{v / 1024:,.1f} MiB"


def _broker_cpu(r: Result, w: Window) -> float | None:
    b, dt = w.get("broker_cpu_s"), w.get("wall_s")
    return b / dt if b is not None and dt else None


def _busiest_proc_cpu(r: Result, w: Window) -> float | None:
    """CPU of the busiest server process (one node or worker): 100% = it had a whole core."""
    procs, dt = w.get("server_procs_cpu_s"), w.get("wall_s")
    return procs[0] / dt if procs and dt else None


def _deliveries_per_cpu_s(r: Result, w: Window) -> float | None:
    """Deliveries per CPU-second of the servers plus the broker (work per unit of CPU)."""
    cpu = (w.get("server_cpu_s") or 0.0) + (w.get("broker_cpu_s") or 0.0)
    n = r.get("deliveries_window")
    return float(n) / cpu if n and cpu > 0 else None


def _cluster_measure(key: str, title: str, split: str) -> Measure:
    return Measure(
        key=key,
        title=title,
        unit="deliveries/s",
        higher_is_better=True,
        args=lambda o, prev: _fanout_args(o.members, o.window, o.payload_size, o.duration),
        metric=_rate,
        window_s=lambda o: o.duration,
        checks=cluster_checks,
        drain_s=lambda o: max(o.drain_timeout, 10.0),
        params=lambda o: (
            f"{o.members} members in one room (1 publisher + {o.members - 1} receivers), "
            f"{split}; window {o.window} messages, {o.payload_size} B text, "
            f"{o.duration:g} s window; deliveries counted at the generator's receivers. "
            "server CPU = all SmartSocket processes together (both nodes, or every worker; "
            "100% = one core), busiest node CPU = the busiest of those processes, "
            "broker CPU = redis-server / nats-server in the same window, "
            "deliv/CPU-s = deliveries per CPU-second of servers + broker. Pinning: the "
            "nodes/workers share core 0 (a 2-core machine has no free core for a second "
            "node), the generator has core 1, the broker is not pinned (either core)"
        ),
        extras=[
            Extra("broker", "broker CPU", _broker_cpu, _fmt_pct),
            Extra("busiest", "busiest node CPU", _busiest_proc_cpu, _fmt_pct),
            Extra("per_cpu", "deliv/CPU-s", _deliveries_per_cpu_s, _fmt_int),
        ],
    )


def _wire_saved(r: Result, w: Window) -> float | None:
    wire, pay = r.get("wire_bytes_per_delivery"), r.get("payload_bytes_per_delivery")
    return 1.0 - wire / pay if wire and pay else None


# --------------------------------------------------------------------------
# registry

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "ack",
            "acked request/response: `echo` with an ack, many requests in flight; a sequential "
            "single-client latency measure; and latency at half of the peer's measured maximum",
            [
                Measure(
                    key="ack",
                    title="ack throughput",
                    unit="acks/s",
                    higher_is_better=True,
                    args=_ack_args,
                    metric=_rate,
                    window_s=lambda o: o.duration,
                    checks=ack_checks,
                    params=lambda o: (
                        f"{o.clients} clients x {o.inflight} in flight, "
                        f"{o.payload_size} B string payload, {o.duration:g} s window"
                    ),
                ),
                Measure(
                    key="ack/latency",
                    title="ack round-trip latency",
                    unit="p50 \u00b5s",
                    higher_is_better=False,
                    args=lambda o, prev: [
                        *("--workload", "latency", "--payload-size", str(o.payload_size)),
                        *("--duration", str(o.latency_duration)),
                    ],
                    metric=lambda r, w: _lat(r, "p50"),
                    window_s=lambda o: o.latency_duration,
                    checks=ack_checks,
                    params=lambda o: (
                        "1 client, 1 request in flight (sequential), "
                        f"{o.latency_duration:g} s window"
                    ),
                ),
                Measure(
                    key="ack/half-load",
                    title="ack latency at half load",
                    unit="p50 \u00b5s",
                    higher_is_better=False,
                    args=_half_load_args,
                    metric=lambda r, w: _lat(r, "p50"),
                    window_s=lambda o: o.latency_duration,
                    checks=half_load_checks,
                    params=lambda o: (
                        f"{o.clients} clients, requests sent on a fixed schedule at "
                        f"{o.half_load:.0%} of the peer's own `ack` rate of the same repetition "
                        f"(open loop, at most {o.inflight} in flight per client; latency counted "
                        f"from the scheduled send time), {o.latency_duration:g} s window"
                    ),
                    extras=[
                        Extra(
                            "offered",
                            "offered req/s",
                            lambda r, w: float(r.get("rate_offered") or 0) or None,
                            _fmt_int,
                        ),
                        Extra("achieved", "achieved req/s", _rate, _fmt_int),
                        Extra(
                            "p99_over_p50",
                            "p99 / p50",
                            lambda r, w: _ratio(_lat(r, "p99"), _lat(r, "p50")),
                            _fmt_x,
                        ),
                        Extra(
                            "send_lag_p99",
                            "gen send lag p99",
                            lambda r, w: _lag(r, "p99") if "send_lag_us" in r else None,
                            _fmt_us,
                        ),
                    ],
                ),
            ],
        ),
        Workload(
            "fanout",
            "room broadcast: M members in one room, one of them publishes `chat` messages "
            "with at most W messages not yet delivered to every other member",
            [
                Measure(
                    key="fanout",
                    title="fan-out deliveries",
                    unit="deliveries/s",
                    higher_is_better=True,
                    args=lambda o, prev: _fanout_args(
                        o.members, o.window, o.payload_size, o.duration
                    ),
                    metric=_rate,
                    window_s=lambda o: o.duration,
                    checks=fanout_checks,
                    params=lambda o: (
                        f"{o.members} members (1 publisher + {o.members - 1} receivers), "
                        f"window {o.window} messages, {o.payload_size} B text, "
                        f"{o.duration:g} s window"
                    ),
                ),
                Measure(
                    key="fanout/latency",
                    title="fan-out delivery latency, one message at a time",
                    unit="p50 \u00b5s",
                    higher_is_better=False,
                    args=lambda o, prev: _fanout_args(
                        o.members, 1, o.payload_size, o.latency_duration
                    ),
                    metric=lambda r, w: _lat(r, "p50"),
                    window_s=lambda o: o.latency_duration,
                    checks=fanout_checks,
                    params=lambda o: (
                        f"{o.members} members, window 1 (next message only once the previous one "
                        f"reached all {o.members - 1} receivers), {o.latency_duration:g} s window"
                    ),
                ),
            ],
        ),
        Workload(
            "fanout-deflate",
            "room broadcast with permessage-deflate offered: ~1 KB chat text made of words, "
            "SmartSocket with compression on and off, the Socket.IO peers with theirs on",
            [
                Measure(
                    key="fanout-deflate",
                    title="compressed fan-out deliveries",
                    unit="deliveries/s",
                    higher_is_better=True,
                    args=lambda o, prev: [
                        *_fanout_args(o.members, o.deflate_window, o.deflate_payload, o.duration),
                        "--deflate",
                        "--words",
                    ],
                    metric=_rate,
                    window_s=lambda o: o.duration,
                    checks=deflate_checks,
                    drain_s=lambda o: max(o.drain_timeout, 10.0),
                    chart_extra=("wire", "wire bytes per delivered message", "bytes"),
                    params=lambda o: (
                        f"{o.members} members, window {o.deflate_window} messages, "
                        f"{o.deflate_payload} B chat text of words, the generator offers "
                        "`permessage-deflate; client_max_window_bits`, "
                        f"{o.duration:g} s window; wire B/msg = bytes on the wire per delivered "
                        "chat frame (header + payload), payload B/msg = the same frame inflated"
                    ),
                    extras=[
                        Extra(
                            "wire",
                            "wire B/msg",
                            lambda r, w: r.get("wire_bytes_per_delivery") or None,
                            _fmt_int,
                        ),
                        Extra(
                            "payload",
                            "payload B/msg",
                            lambda r, w: r.get("payload_bytes_per_delivery") or None,
                            _fmt_int,
                        ),
                        Extra("saved", "wire saved", _wire_saved, _fmt_pct),
                    ],
                ),
            ],
        ),
        Workload(
            "rooms",
            "many rooms: R rooms of M members (R x M connections); the first member of every "
            "room publishes `chat` with at most W messages of its room not yet fully delivered",
            [
                Measure(
                    key="rooms",
                    title="many-rooms deliveries",
                    unit="deliveries/s",
                    higher_is_better=True,
                    args=lambda o, prev: [
                        *("--workload", "rooms", "--rooms", str(o.rooms)),
                        *("--members", str(o.room_members), "--window", str(o.room_window)),
                        *("--payload-size", str(o.payload_size), "--duration", str(o.duration)),
                        *("--connect-concurrency", "128"),
                    ],
                    metric=_rate,
                    window_s=lambda o: o.duration,
                    checks=fanout_checks,
                    drain_s=lambda o: max(o.drain_timeout, 10.0),
                    params=lambda o: (
                        f"{o.rooms * o.room_members:,} connections in {o.rooms:,} rooms of "
                        f"{o.room_members}; {o.rooms:,} concurrent publishers (one per room), "
                        f"window {o.room_window} per room, {o.payload_size} B text, "
                        f"{o.duration:g} s window"
                    ),
                    extras=[
                        Extra(
                            "messages",
                            "messages/s",
                            lambda r, w: (
                                float(r.get("chat_acks_window") or 0)
                                / float(r.get("duration_s") or 1)
                            ),
                            _fmt_int,
                        ),
                        Extra("setup", "connect + join", lambda r, w: r.get("setup_s"), _fmt_s),
                    ],
                ),
            ],
        ),
        Workload(
            "idle",
            "idle connections: N WebSocket connections opened and held; server memory per "
            "connection and connect time",
            [
                Measure(
                    key="idle",
                    title="idle connections: server RSS per connection",
                    unit="KiB/conn",
                    higher_is_better=False,
                    args=lambda o, prev: [
                        *("--workload", "idle", "--clients", str(o.idle_connections)),
                        *("--warmup", str(o.idle_settle), "--duration", str(o.idle_hold)),
                    ],
                    metric=_rss_per_conn_kib,
                    window_s=lambda o: o.idle_hold,
                    checks=idle_checks,
                    rss=True,
                    lat_label="handshake p50 / p99",
                    params=lambda o: (
                        f"{o.idle_connections:,} connections, at most 64 handshakes at a time; "
                        "RSS/conn = (server VmRSS with every connection open, "
                        f"{o.idle_settle:g} s after the last handshake, - VmRSS before the "
                        "first) / connections; handshake = TCP connect to the ready signal "
                        "(`$welcome`, or Socket.IO's connect packet)"
                    ),
                    extras=[
                        Extra("connect", "connect all", lambda r, w: r.get("setup_s"), _fmt_s),
                        Extra(
                            "per_conn",
                            "per conn",
                            lambda r, w: (
                                float(r["setup_s"]) * 1e6 / r["ready"]
                                if r.get("setup_s") and r.get("ready")
                                else None
                            ),
                            _fmt_us,
                        ),
                        Extra(
                            "rss_before",
                            "RSS before",
                            lambda r, w: (w.get("rss_kb") or {}).get("before"),
                            _fmt_mib,
                        ),
                        Extra(
                            "rss_after",
                            "RSS with conns",
                            lambda r, w: (w.get("rss_kb") or {}).get("start"),
                            _fmt_mib,
                        ),
                    ],
                ),
            ],
            chart_log=False,
        ),
        Workload(
            "cluster-fanout",
            "cross-node fan-out: one room whose members are split evenly over 2 SmartSocket "
            "nodes joined by a broker (Redis, NATS), the publisher on the first node, vs the "
            "same room on a single node",
            [
                _cluster_measure(
                    "cluster-fanout",
                    "cross-node fan-out deliveries",
                    "2-node peers: the generator connects members alternately to the two nodes' "
                    "ports (`--port2`), the publisher to the first; single node: all on one",
                )
            ],
            chart_log=False,
            baselines=("smartsocket", "ss-2nodes-redis"),
        ),
        Workload(
            "workers-fanout",
            "the same room fan-out against `smartsocket serve --workers 2 --cluster-url "
            "redis://...` (one port, SO_REUSEPORT) vs `--workers 1` and a plain single node",
            [
                _cluster_measure(
                    "workers-fanout",
                    "fan-out deliveries over --workers",
                    "every member connects to the one port; the kernel spreads the connections "
                    "over the workers",
                )
            ],
            chart_log=False,
            baselines=("smartsocket", "ss-workers1-redis"),
        ),
    ]
}


def metric_value_ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and v == v and v > 0
