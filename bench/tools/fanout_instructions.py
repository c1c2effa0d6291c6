"""Instructions per fan-out delivery: a measure that a loaded machine does not move.

Wall-clock throughput on a shared 2-core machine follows the CPU share the server gets (a
fan-out server that is runnable but waits for a core 65-75% of the time delivers in proportion
to what it gets), so two checkouts can differ by 25% with the same code. This runs
``smartsocket serve`` (the bench flags) under valgrind's callgrind, drives the ``fanout``
workload with the C generator, zeroes the counters at ``#MEASURE_START`` and dumps them at
``#MEASURE_END``, and prints the instructions the server executed per delivery in that window.

With ``--window 1`` every message reaches every member before the next leaves: one frame per
member per message, no batching, so the count depends on the code only (two runs of one
checkout agree within ~0.5%). Larger windows batch frames per write depending on timing.

    .venv/bin/python -m bench.tools.fanout_instructions [--base main] [--members 1000]

``--base REV`` measures that commit too (exported to the ``bench compare`` cache). Needs
valgrind; 127.0.0.1 only; about a minute per checkout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.common import HOST, REPO_ROOT, free_port, port_open, project_python
from bench.servers import SmartSocketPeer


def measure(
    tree: Path, python: str, members: int, window: int, duration: float
) -> dict[str, float]:
    """Instructions per delivery of one checkout (``tree``, run by ``python``)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fanout-ir-") as tmp:
        out = Path(tmp) / "callgrind.out"
        # no heartbeat inside the window: 1,000 $pings would be counted as deliveries' cost
        serve = [
            "-m", "smartsocket", "serve", "--port", str(port), "--host", HOST,
            *SmartSocketPeer.FLAGS, "--ping-interval", "3600",
        ]
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, *serve],
            cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not port_open(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server under valgrind did not start ({tree})")
                time.sleep(0.5)
            result = _drive(server.pid, port, members, window, duration)
        finally:
            server.terminate()
            server.wait(timeout=60)
        dumps = sorted(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise SystemExit("callgrind wrote no dump for the measured window")
        instructions = _total(dumps[-1])
    deliveries = float(result["deliveries_window"])
    return {
        "instructions": instructions,
        "deliveries": deliveries,
        "per_delivery": instructions / deliveries if deliveries else 0.0,
    }


def _drive(pid: int, port: int, members: int, window: int, duration: float) -> dict[str, int]:
    binary = loadgen.ensure_built()
    args = [
        str(binary), "--proto", "smartsocket", "--port", str(port), "--workload", "fanout",
        "--members", str(members), "--window", str(window), "--payload-size", "64",
        "--duration", str(duration), "--warmup", "1", "--connect-timeout", "300",
        "--drain-timeout", "120",
    ]
    gen = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert gen.stdout is not None
    result: dict[str, int] = {}
    for line in gen.stdout:
        line = line.strip()
        if line == "#MEASURE_START":
            subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
        elif line == "#MEASURE_END":
            subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
        elif line.startswith("{"):
            result = json.loads(line)
    gen.wait()
    if not result.get("ok"):
        raise SystemExit(f"the generator failed: {result.get('error')}")
    return result


def _total(dump: Path) -> float:
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):  # what callgrind_annotate shows as PROGRAM TOTALS
            return float(line.split()[1])
    raise SystemExit(f"no totals in {dump}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="also measure this revision (e.g. main)")
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    a = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind (callgrind) is not installed")
    runs = [("this checkout", REPO_ROOT, project_python())]
    if a.base:
        from bench.compare import prepare_base, resolve

        tree = prepare_base(resolve(a.base))
        runs.append((a.base, tree, str(tree / ".venv" / "bin" / "python")))
    rows = []
    for name, tree, python in runs:
        r = measure(tree, python, a.members, a.window, a.duration)
        rows.append((name, r))
        print(
            f"{name}: {r['per_delivery']:,.0f} instructions per delivery "
            f"({r['instructions']:,.0f} for {r['deliveries']:,.0f} deliveries; "
            f"{a.members} members, window {a.window})",
            flush=True,
        )
    if len(rows) == 2 and rows[1][1]["per_delivery"]:
        change = rows[0][1]["per_delivery"] / rows[1][1]["per_delivery"] - 1
        print(f"this checkout vs {a.base}: {change:+.2%} instructions per delivery")


if __name__ == "__main__":
    main()
