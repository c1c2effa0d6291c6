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

Result = dict[str, Any]


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
    connect_timeout: float = 60.0
    drain_timeout: float = 5.0

    def apply_quick(self) -> None:
        self.quick = True
        self.duration = 2.0
        self.latency_duration = 1.0
        self.warmup = 0.5
        self.repeat = 1


@dataclass
class Measure:
    key: str  # unique, e.g. "ack" or "ack/latency"
    title: str
    unit: str  # of the headline metric
    higher_is_better: bool
    args: Callable[[Options], list[str]]  # loadgen arguments (besides proto/port/path)
    metric: Callable[[Result], float]
    window_s: Callable[[Options], float]
    checks: Callable[[Result, Options], list[str]] = field(default=lambda r, o: [])
    params: Callable[[Options], str] = field(default=lambda o: "")

    def timeout_s(self, o: Options) -> float:
        return o.connect_timeout + o.warmup + self.window_s(o) + o.drain_timeout + 30.0


@dataclass
class Workload:
    name: str
    description: str
    measures: list[Measure]


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
            f"bad/duplicate deliveries: {r.get('bad_seq', 0) + r.get('over_deliveries', 0)}"
        )
    if r.get("join_members_max") not in (None, -1, o.members):
        notes.append(f"room reported {r.get('join_members_max')} members")
    return notes


def _lat(r: Result, k: str) -> float:
    return float(r.get("lat_us", {}).get(k, 0.0))


# --------------------------------------------------------------------------
# registry

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "ack",
            "acked request/response: `echo` with an ack, many requests in flight; "
            "plus a sequential single-client latency measure",
            [
                Measure(
                    key="ack",
                    title="ack throughput",
                    unit="acks/s",
                    higher_is_better=True,
                    args=lambda o: [
                        "--workload",
                        "ack",
                        "--clients",
                        str(o.clients),
                        "--inflight",
                        str(o.inflight),
                        "--payload-size",
                        str(o.payload_size),
                        "--duration",
                        str(o.duration),
                    ],
                    metric=lambda r: float(r["rate"]),
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
                    args=lambda o: [
                        "--workload",
                        "latency",
                        "--payload-size",
                        str(o.payload_size),
                        "--duration",
                        str(o.latency_duration),
                    ],
                    metric=lambda r: _lat(r, "p50"),
                    window_s=lambda o: o.latency_duration,
                    checks=ack_checks,
                    params=lambda o: (
                        "1 client, 1 request in flight (sequential), "
                        f"{o.latency_duration:g} s window"
                    ),
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
                    args=lambda o: [
                        "--workload",
                        "fanout",
                        "--members",
                        str(o.members),
                        "--window",
                        str(o.window),
                        "--payload-size",
                        str(o.payload_size),
                        "--duration",
                        str(o.duration),
                    ],
                    metric=lambda r: float(r["rate"]),
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
                    args=lambda o: [
                        "--workload",
                        "fanout",
                        "--members",
                        str(o.members),
                        "--window",
                        "1",
                        "--payload-size",
                        str(o.payload_size),
                        "--duration",
                        str(o.latency_duration),
                    ],
                    metric=lambda r: _lat(r, "p50"),
                    window_s=lambda o: o.latency_duration,
                    checks=fanout_checks,
                    params=lambda o: (
                        f"{o.members} members, window 1 (next message only once the previous one "
                        f"reached all {o.members - 1} receivers), {o.latency_duration:g} s window"
                    ),
                ),
            ],
        ),
    ]
}


def metric_value_ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and v == v and v > 0
