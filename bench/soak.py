"""Soak: well-behaved clients next to hostile ones (issue 14). Not a test: it measures.

    python -m bench.soak                 # 20 s without attackers, then 60 s with them
    python -m bench.soak --duration 10   # a shorter attack phase

A server runs in a subprocess (so its RSS is its own) on 127.0.0.1 with the default limits.
100 well-behaved clients (the Python client) each make acked ``echo`` calls at a steady pace.
Phase 1 measures their round trips alone; phase 2 adds, from another process, one hostile
client of each kind, each reconnecting whenever the server drops it, until the phase ends:

- ping-flood: WebSocket PINGs with 125-byte payloads, as fast as the socket takes them, never
  reading (a tiny receive window);
- fragment-flood: a text message that never ends, in 1-byte and empty continuation frames;
- error-flood: malformed messages and ack replies for unknown ids, never reading;
- reconnect-storm: 2,000 simultaneous connects (WebSocket handshakes) every 5 s; they stay
  2 s and leave over 1 s (``SOAK_STORM_CLOSE_AT_ONCE=1``: all in the same millisecond).

The attackers run at nice 19: on a small machine they would otherwise take CPU from the
server, which remote attackers cannot. It prints the server's RSS before / peak / after, the
well-behaved clients' p50/p99 with and without attackers, how many of them were dropped or saw
a failed call, and what the server counted (drops, closes). Every loop is bounded by the
phase's deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, log, project_python

HOST = "127.0.0.1"
KINDS = ("ping-flood", "fragment-flood", "error-flood", "reconnect-storm")
STORM = 2000
STORM_EVERY = 5.0  # seconds between two storms
CLOSE_AT_ONCE = os.environ.get("SOAK_STORM_CLOSE_AT_ONCE") == "1"


# --- the server ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_server() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [project_python(), "-m", "smartsocket", "serve", "--host", HOST, "--port", "0",
         "--max-connections-per-ip", "0",  # a storm after a restart comes from many addresses
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "SmartSocket listening on ws://127.0.0.1:PORT/"
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1].strip().strip("/"))


def server_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/smartsocket/stats", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


# --- well-behaved clients -----------------------------------------------------------------------


@dataclass
class Behaved:
    latencies: list[float] = field(default_factory=list)
    failed_calls: int = 0
    dropped: set[int] = field(default_factory=set)
    recording: bool = False


async def behave(index: int, port: int, rate: float, stop: asyncio.Event, out: Behaved) -> None:
    from smartsocket import Client

    client = Client(f"ws://{HOST}:{port}/", reconnect=False)
    client.on("disconnect", lambda *_: None if stop.is_set() else out.dropped.add(index))
    await client.connect()
    payload = {"i": index, "text": "x" * 64}
    period = 1.0 / rate
    await asyncio.sleep(period * (index / 100))  # spread the clients over one period
    while not stop.is_set():
        started = time.perf_counter()
        try:
            await client.call("echo", payload, timeout=10)
        except Exception:
            out.failed_calls += 1
            if not client.connected:
                break
        else:
            if out.recording:
                out.latencies.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, period - (time.perf_counter() - started)))
    with contextlib.suppress(Exception):
        await client.close()


def quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


# --- hostile clients (run in their own process: python -m bench.soak --attack KIND) -------------


def ws_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def upgrade_request(port: int) -> bytes:
    return (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, ws_key())
    )


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A client frame, masked with a zero key (valid, and the payload needs no XOR)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


async def open_raw(port: int, *, rcvbuf: int | None = None) -> tuple[Any, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(upgrade_request(port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head[:60])
    return reader, writer


async def drain_reader(reader: Any) -> None:
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass


@dataclass
class Attack:
    sessions: int = 0  # connections the attacker opened
    frames: int = 0
    errors: list[str] = field(default_factory=list)


async def attack_once(kind: str, port: int, deadline: float, stats: Attack) -> None:
    """One connection's worth of attack: returns when the server dropped it (or time is up)."""
    if kind == "ping-flood":
        reader, writer = await open_raw(port, rcvbuf=4096)  # and never read
        batch = frame(0x9, b"p" * 125) * 16
    elif kind == "fragment-flood":
        reader, writer = await open_raw(port)
        asyncio.get_running_loop().create_task(drain_reader(reader))
        writer.write(frame(0x1, b'["echo", "', fin=False))
        batch = (frame(0x0, b"x", fin=False) + frame(0x0, b"", fin=False)) * 8
    elif kind == "error-flood":
        reader, writer = await open_raw(port, rcvbuf=4096)  # replies pile up unread
        batch = (frame(0x1, b"not json") + frame(0x1, b'[987654, "late"]')) * 8
    else:
        raise ValueError(kind)
    stats.sessions += 1
    try:
        while time.monotonic() < deadline and not writer.is_closing():
            writer.write(batch)
            stats.frames += 16
            await writer.drain()  # as fast as the server takes them
    except (ConnectionError, OSError):
        pass  # dropped by the server: reconnect
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def storm(port: int, deadline: float, stats: Attack) -> None:
    async def one() -> Any:
        try:
            _, writer = await open_raw(port)
            return writer
        except Exception as exc:
            stats.errors.append(type(exc).__name__)
            return None

    while time.monotonic() < deadline:
        started = time.monotonic()
        writers = await asyncio.gather(*(one() for _ in range(STORM)))
        stats.sessions += sum(w is not None for w in writers)
        await asyncio.sleep(2.0)
        # They leave as clients do, over a second (a simultaneous close of all 2,000 is
        # another attack; bench/RESULTS.md gives its cost separately: --storm-close-at-once).
        for i, writer in enumerate(writers):
            if writer is not None:
                writer.close()
            if not CLOSE_AT_ONCE and i % 20 == 19:
                await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, STORM_EVERY - (time.monotonic() - started)))


async def attacker(kind: str, port: int, duration: float) -> None:
    deadline = time.monotonic() + duration
    stats = Attack()
    if kind == "reconnect-storm":
        await storm(port, deadline, stats)
    else:
        while time.monotonic() < deadline:
            try:
                await attack_once(kind, port, deadline, stats)
            except (TimeoutError, ConnectionError, OSError) as exc:
                stats.errors.append(type(exc).__name__)
                await asyncio.sleep(0.05)
    print(json.dumps({"kind": kind, "sessions": stats.sessions, "framesWritten": stats.frames,
                      "errors": len(stats.errors)}), flush=True)


# --- the run ------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    proc, port = start_server()
    peak = [0]
    sampling = True

    async def sample() -> None:
        while sampling:
            peak[0] = max(peak[0], rss_kib(proc.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.get_running_loop().create_task(sample())
    stop = asyncio.Event()
    out = Behaved()
    try:
        tasks = [
            asyncio.get_running_loop().create_task(behave(i, port, args.rate, stop, out))
            for i in range(args.clients)
        ]
        await asyncio.sleep(2.0)  # connected and warm
        before = rss_kib(proc.pid)
        peak[0] = before
        log(f"phase 1: {args.clients} clients, no attackers, {args.baseline:g} s")
        out.recording = True
        await asyncio.sleep(args.baseline)
        calm = list(out.latencies)
        out.latencies.clear()
        log(f"phase 2: + {', '.join(args.kinds)}, {args.duration:g} s")
        attackers = [
            subprocess.Popen(  # noqa: ASYNC220 - starting a process does not block
                [project_python(), "-m", "bench.soak", "--attack", kind, "--port", str(port),
                 "--duration", str(args.duration)],
                stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
            )
            for kind in args.kinds
        ]
        await asyncio.sleep(args.duration)
        attacked = list(out.latencies)
        out.recording = False
        reports = []
        for attack in attackers:
            try:
                stdout, _ = await asyncio.to_thread(attack.communicate, timeout=30)
                reports.append(json.loads(stdout.strip().splitlines()[-1]))
            except Exception as exc:
                attack.kill()
                reports.append({"error": repr(exc)})
        await asyncio.sleep(5.0)  # the attackers' connections are gone; the heap settles
        after = rss_kib(proc.pid)
        stats = server_stats(port)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        sampling = False
        await sampler
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    p50, p99 = quantiles(calm)
    a50, a99 = quantiles(attacked)
    raw = stats.get("raw", {})
    return {
        "clients": args.clients, "rate": args.rate, "baseline_s": args.baseline,
        "attack_s": args.duration,
        "rss_kib": {"before": before, "peak": peak[0], "after": after},
        "calm": {"calls": len(calm), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)},
        "attacked": {"calls": len(attacked), "p50_ms": round(a50, 2), "p99_ms": round(a99, 2)},
        "dropped_clients": len(out.dropped), "failed_calls": out.failed_calls,
        "server": {
            **{k: raw.get(k) for k in (
                "droppedSlow", "errorCloses", "rateLimitCloses", "rateLimited", "errorsSent",
            )},
            "admitted": stats.get("totalConnections"), "connectionsAtEnd": stats.get("connections"),
        },
        "attackers": reports,
    }


def report(result: dict[str, Any]) -> str:
    rss = result["rss_kib"]
    calm, attacked = result["calm"], result["attacked"]
    ratio = attacked["p99_ms"] / calm["p99_ms"] if calm["p99_ms"] else float("nan")
    lines = [
        f"server RSS: before {rss['before'] / 1024:.1f} MiB, peak {rss['peak'] / 1024:.1f} MiB "
        f"(+{(rss['peak'] - rss['before']) / 1024:.1f}), after {rss['after'] / 1024:.1f} MiB",
        f"well-behaved echo round trip without attackers: p50 {calm['p50_ms']:.2f} ms, "
        f"p99 {calm['p99_ms']:.2f} ms ({calm['calls']} calls)",
        f"                                with attackers: p50 {attacked['p50_ms']:.2f} ms, "
        f"p99 {attacked['p99_ms']:.2f} ms ({attacked['calls']} calls); p99 x{ratio:.2f}",
        f"well-behaved clients dropped: {result['dropped_clients']} of {result['clients']}; "
        f"failed calls: {result['failed_calls']}",
        f"server counted: {result['server']}",
    ]
    lines += [f"attacker: {a}" for a in result["attackers"]]
    return "\n".join(lines)


def main() -> None:
    doc = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=doc)
    parser.add_argument("--duration", type=float, default=60.0, help="attack phase, seconds")
    parser.add_argument("--baseline", type=float, default=20.0, help="calm phase, seconds")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="echo calls/s per client")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="the attackers of phase 2 (default: all)")
    parser.add_argument("--attack", choices=KINDS, help=argparse.SUPPRESS)  # attacker process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        # Real attackers run on other machines and take no CPU from the server; here they
        # share its cores, so they yield them (the server and the measuring clients do not).
        os.nice(19)
        asyncio.run(attacker(args.attack, args.port, args.duration))
        return
    result = asyncio.run(soak(args))
    print(report(result))
    if args.json:
        print(json.dumps(result))
    sys.exit(0)


if __name__ == "__main__":
    main()
