"""Where does an idle SmartSocket connection's memory go?

Runs ``smartsocket serve`` (the demo app, bench flags) in this process with
tracemalloc on, opens N idle connections with the bench generator, and prints
the Python allocations that grew per connection (by source line) next to the
RSS growth.  The difference between the two is memory allocated outside
Python's allocator (uvloop/libuv handles, the kernel's socket accounting is not
in RSS).  127.0.0.1 only; everything is bounded in time.

    .venv/bin/python -m bench.tools.idle_profile [--connections 10000] [--top 25] [--socketio]

``--socketio``: the connections are Socket.IO clients on ``/socket.io/`` (WebSocket transport,
CONNECT to ``/``), as the bench's ``smartsocket-socketio`` peer drives them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from bench import loadgen
from bench.common import free_port, port_open
from bench.servers import SIO_PATH, SmartSocketPeer


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1, help="traceback depth per allocation")
    ap.add_argument(
        "--no-trace", action="store_true", help="RSS only (tracemalloc costs ~10 KiB/conn itself)"
    )
    ap.add_argument(
        "--no-aiofastnet",
        action="store_true",
        help="experiment: make picows use the event loop's own transport instead of aiofastnet's",
    )
    ap.add_argument("--socketio", action="store_true", help="Socket.IO clients on /socket.io/")
    args = ap.parse_args()
    proto = ["--proto", "socketio", "--path", SIO_PATH] if args.socketio else [
        "--proto", "smartsocket"]

    port = free_port()
    gen = loadgen.ensure_built()
    report: dict[str, object] = {}

    def drive() -> None:
        deadline = time.monotonic() + 30
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        base = tracemalloc.take_snapshot() if not args.no_trace else None
        rss0 = rss_kib()
        proc = subprocess.Popen(
            [str(gen), *proto, "--port", str(port), "--workload", "idle",
             "--clients", str(args.connections), "--warmup", "2", "--duration", "6"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "#MEASURE_START":  # all connected, 2 s settled
                report["rss"] = rss_kib() - rss0
                if base is not None:
                    key = "traceback" if args.frames > 1 else "lineno"
                    report["diff"] = tracemalloc.take_snapshot().compare_to(base, key)
                else:
                    report["diff"] = []
                break
        proc.wait(timeout=60)
        os._exit(_print(report, args.connections, args.top))

    if args.no_aiofastnet:
        import picows.api

        picows.api._HAS_AIOFASTNET = False  # type: ignore[attr-defined]
    threading.Thread(target=drive, daemon=True).start()
    if not args.no_trace:
        tracemalloc.start(args.frames)
    from smartsocket.cli import main as smartsocket_main

    cmd = ["serve", "--port", str(port), "--host", "127.0.0.1", *SmartSocketPeer.FLAGS]
    timer = threading.Timer(120, lambda: os._exit(3))  # bounded, whatever happens
    timer.daemon = True
    timer.start()
    smartsocket_main(cmd)
    return 1


def _print(report: dict[str, object], n: int, top: int) -> int:
    diff = report.get("diff")
    if diff is None:
        print("no snapshot: the generator did not get all connections ready", file=sys.stderr)
        return 1
    stats = list(diff)  # type: ignore[call-overload]
    py = sum(s.size_diff for s in stats)
    rss = int(report["rss"]) * 1024  # type: ignore[call-overload]
    print(
        f"{n} idle connections: RSS +{rss / n / 1024:.2f} KiB/conn, "
        f"Python allocations (tracemalloc) +{py / n / 1024:.2f} KiB/conn, "
        f"other (C allocations, allocator slack) {(rss - py) / n / 1024:.2f} KiB/conn"
    )
    print(f"\ntop {top} source lines by growth (bytes per connection, allocations per connection):")
    for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:top]:
        where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in s.traceback)
        print(f"  {s.size_diff / n:8.0f} B  {s.count_diff / n:5.2f}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
