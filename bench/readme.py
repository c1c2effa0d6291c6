"""The README's performance figures, generated from bench/RESULTS.md (its blocks' data).

The figures live in one place: the numbers each workload block of RESULTS.md keeps. This
module renders from them the README's headline ratios and its Performance table, between
``bench:*`` markers; ``python -m bench readme`` rewrites those parts (a run does it too) and
``python -m bench readme --check`` fails when they differ (tests/test_docs.py runs it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_MD
from bench.report import DASH, TIMES, _block_data, _us

README = REPO_ROOT / "README.md"
SMART, PSIO, NODE, CREF = "smartsocket", "python-socketio", "socketio-node", "c-reference"
PEERS = (PSIO, NODE, SMART, CREF)
PARTS = ("headline", "table")


def _ratio(x: float) -> str:
    return f"{x:.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 0.95 else f"{x:.2f}x"


class Figures:
    """The rows of one measure of RESULTS.md, by peer."""

    def __init__(self, data: dict[str, dict[str, Any]], workload: str, measure: str) -> None:
        block = data.get(workload)
        if block is None:
            raise SystemExit(f"bench/RESULTS.md has no `{workload}` results: run it first")
        self.run: str = block.get("run", "")
        self.rows: dict[str, dict[str, Any]] = block["measures"][measure]

    def metric(self, peer: str) -> float | None:
        value = self.rows.get(peer, {}).get("metric")
        return float(value) if value else None

    def extra(self, peer: str, key: str) -> float | None:
        value = (self.rows.get(peer, {}).get("extra") or {}).get(key)
        return None if value is None else float(value)

    def ratios(self, peer: str = SMART) -> str:
        """``(15.2x / 2.8x)``: ``peer`` against python-socketio and Node Socket.IO."""
        own, psio, node = self.metric(peer), self.metric(PSIO), self.metric(NODE)
        if not own or not psio or not node:
            return ""
        return f" ({_ratio(own / psio)} / {_ratio(own / node)})"


def _count(v: float | None) -> str:
    return DASH if v is None else f"{v:,.0f}"


def _kib(v: float | None) -> str:
    return DASH if v is None else f"{v:,.1f} KiB"


def _runs(figures: dict[str, Figures]) -> str:
    """``2026-11-26 02:02 UTC (ack, fanout), 02:32 UTC (rooms)``: when each workload ran."""
    by_run: dict[str, list[str]] = {}
    for workload, fig in figures.items():
        by_run.setdefault(fig.run, []).append(f"`{workload}`")
    return "; ".join(f"{run} ({', '.join(names)})" for run, names in sorted(by_run.items()))


def render(data: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The README's generated parts, by marker name."""
    ack = Figures(data, "ack", "ack")
    rtt = Figures(data, "ack", "ack/latency")
    half = Figures(data, "ack", "ack/half-load")
    fanout = Figures(data, "fanout", "fanout")
    deflate = Figures(data, "fanout-deflate", "fanout-deflate")
    rooms = Figures(data, "rooms", "rooms")
    idle = Figures(data, "idle", "idle")

    def row(label: str, fig: Figures, fmt: Any, tail: str = "") -> str:
        cells = [fmt(fig.metric(p)) for p in PEERS]
        cells[2] = f"**{cells[2]}**{tail}"
        return f"| {label} | " + " | ".join(cells) + " |"

    wire_on, wire_off = deflate.extra(SMART, "wire"), deflate.extra("smartsocket-nodeflate", "wire")
    wire = ""
    if wire_on and wire_off:
        wire = f", {wire_on:,.0f} vs {wire_off:,.0f} wire bytes per message"
    own_rss, psio_rss, node_rss = idle.metric(SMART), idle.metric(PSIO), idle.metric(NODE)
    rss = f" ({_ratio(own_rss / psio_rss)} / {_ratio(own_rss / node_rss)})" if (
        own_rss and psio_rss and node_rss) else ""
    table = [
        "| workload (one run, medians of 3) | python-socketio | Node Socket.IO | **SmartSocket** "
        "| C reference server |",
        "|---|---:|---:|---:|---:|",
        row("acked request/response, acks/s (50 clients x 16 in flight)", ack, _count,
            ack.ratios()),
        row("sequential ack round trip, p50", rtt, _us),
        row("room fan-out, 1,000 members, deliveries/s", fanout, _count, fanout.ratios()),
        row("same, permessage-deflate on, ~1 KB chat JSON", deflate, _count,
            deflate.ratios() + wire),
        row("10,000 connections in 1,000 rooms of 10, deliveries/s", rooms, _count,
            rooms.ratios()),
        row("RSS per idle connection (10,000 open)", idle, _kib, rss),
        "",
        f"Ratios are {TIMES} python-socketio / {TIMES} Node Socket.IO, between peers of the "
        "same run: "
        + _runs({"ack": ack, "fanout": fanout, "fanout-deflate": deflate, "rooms": rooms,
                 "idle": idle})
        + ".",
    ]
    notes = []
    history = [
        (what, fig.metric("smartsocket-history"), fig.metric(SMART))
        for what, fig in (("fan-out", fanout), ("many rooms", rooms))
    ]
    if all(kept and plain for _, kept, plain in history):
        notes.append("Recovery on (room history): " + ", ".join(
            f"{what} {kept / plain:.2f}x" for what, kept, plain in history if kept and plain
        ) + " of off.")
    spread = half.extra(SMART, "p99_over_p50")
    if spread is not None:
        met = "met" if spread <= 3 else "not met"
        notes.append(
            f"p99 at half of the peak ack rate: {spread:.1f}x p50 (target <= 3x: {met}; "
            "RESULTS.md says why)."
        )
    if notes:
        table += ["", " ".join(notes)]
    def versus_psio(fig: Figures) -> str:
        return _ratio((fig.metric(SMART) or 0) / (fig.metric(PSIO) or 1))

    headline = (
        f"{versus_psio(ack)} python-socketio's acked requests/s and {versus_psio(fanout)} its "
        "room fan-out"
    )
    return {"headline": headline, "table": "\n".join(table)}


def _marker(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- bench:{name}:start -->)(?P<body>.*?)(<!-- bench:{name}:end -->)", re.S
    )


def rewrite(readme: str, parts: dict[str, str]) -> str:
    for name in PARTS:
        pattern = _marker(name)
        if not pattern.search(readme):
            raise SystemExit(f"README.md misses the <!-- bench:{name}:start/end --> markers")
        sep = "" if name == "headline" else "\n"
        body = f"{sep}{parts[name]}{sep}"
        readme = pattern.sub(lambda m, body=body: m[1] + body + m[3], readme, count=1)
    return readme


def results_data(path: Path = RESULTS_MD) -> dict[str, dict[str, Any]]:
    return _block_data(path.read_text())


def main(check: bool = False) -> int:
    text = README.read_text()
    new = rewrite(text, render(results_data()))
    if check:
        if new != text:
            print("README.md's performance figures differ from bench/RESULTS.md: "
                  "run `python -m bench readme`")
            return 1
        return 0
    if new != text:
        README.write_text(new)
    return 0
