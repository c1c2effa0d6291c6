"""Instructions per Socket.IO ack on the server: a measure that a loaded machine does not move.

Runs ``smartsocket serve`` (the bench flags) under valgrind's callgrind, drives the ``ack``
workload through the Socket.IO endpoint (``/socket.io/``) with the C generator (``42<id>["echo",
"<64 bytes>"]`` in, ``43<id>["<64 bytes>"]`` out), zeroes the counters at ``#MEASURE_START``,
dumps them at ``#MEASURE_END`` and prints the instructions the server executed per ack in
that window. ``--native`` drives the native endpoint the same way (the reference).

With ``--inflight 1`` every client waits for its ack before sending the next: one frame per
read and per write, no batching, so the count depends on the code only (two runs of one
checkout agree within ~1%). More in flight batch frames per read depending on timing.

    .venv/bin/python -m bench.tools.sio_ack_instructions [--base main] [--native]

``--base REV`` measures that commit too (exported to the ``bench compare`` cache), after this
checkout. Needs valgrind; 127.0.0.1 only; about a minute per checkout.
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
from bench.servers import SIO_PATH, SmartSocketPeer


def measure(
    tree: Path, python: str, clients: int, inflight: int, duration: float, proto: str,
    keep: Path | None = None,
) -> dict[str, float]:
    """Instructions per ack of one checkout (``tree``, run by ``python``)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sio-ack-ir-") as tmp:
        out = Path(tmp) / "callgrind.out"
        # no heartbeat inside the window (Engine.IO pings follow ping_interval too)
        serve = [
            "-m", "smartsocket", "serve", "--port", str(port), "--host", HOST,
            *SmartSocketPeer.FLAGS, "--ping-interval", "3600",
        ]
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, *serve],
            cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 300  # valgrind starts slowly on a loaded machine
            while not port_open(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server under valgrind did not start ({tree})")
                time.sleep(0.5)
            result = _drive(server.pid, port, clients, inflight, duration, proto)
        finally:
            server.terminate()
            server.wait(timeout=60)
        dumps = sorted(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise SystemExit("callgrind wrote no dump for the measured window")
        instructions = _total(dumps[-1])
        if keep is not None:  # for callgrind_annotate: where the instructions go
            shutil.copy(dumps[-1], keep)
    acks = float(result["acks_window"])
    return {
        "instructions": instructions,
        "acks": acks,
        "per_ack": instructions / acks if acks else 0.0,
    }


def _drive(
    pid: int, port: int, clients: int, inflight: int, duration: float, proto: str
) -> dict[str, int]:
    binary = loadgen.ensure_built()
    args = [
        str(binary), "--proto", proto, "--port", str(port), "--workload", "ack",
        "--clients", str(clients), "--inflight", str(inflight), "--payload-size", "64",
        "--duration", str(duration), "--warmup", "1", "--connect-timeout", "300",
        "--drain-timeout", "120",
    ]
    if proto == "socketio":
        args += ["--path", SIO_PATH]
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
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    ap.add_argument("--native", action="store_true", help="the native endpoint instead")
    ap.add_argument("--keep", type=Path, help="copy the measured window's callgrind dumps to "
                    "this directory (callgrind_annotate reads them)")
    a = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind (callgrind) is not installed")
    proto = "smartsocket" if a.native else "socketio"
    runs = [("this checkout", REPO_ROOT, project_python())]
    if a.base:
        from bench.compare import prepare_base, resolve

        tree = prepare_base(resolve(a.base))
        runs.append((a.base, tree, str(tree / ".venv" / "bin" / "python")))
    rows = []
    for i, (name, tree, python) in enumerate(runs):
        keep = None
        if a.keep is not None:
            a.keep.mkdir(parents=True, exist_ok=True)
            keep = a.keep / f"callgrind.{proto}.{'base' if i else 'new'}"
        r = measure(tree, python, a.clients, a.inflight, a.duration, proto, keep)
        rows.append((name, r))
        print(
            f"{name}: {r['per_ack']:,.0f} instructions per ack ({proto}; "
            f"{r['instructions']:,.0f} for {r['acks']:,.0f} acks; {a.clients} clients, "
            f"{a.inflight} in flight)",
            flush=True,
        )
    if len(rows) == 2 and rows[1][1]["per_ack"]:
        change = rows[0][1]["per_ack"] / rows[1][1]["per_ack"] - 1
        print(f"this checkout vs {a.base}: {change:+.2%} instructions per ack")


if __name__ == "__main__":
    main()
