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
from pathlib import Path

from bench.servers import SIO_PATH
from bench.tools.callgrind import checkouts, window_instructions


def measure(
    tree: Path, python: str, clients: int, inflight: int, duration: float, proto: str,
    keep: Path | None = None,
) -> dict[str, float]:
    """Instructions per ack of one checkout (``tree``, run by ``python``)."""
    generator = [
        "--proto", proto, "--workload", "ack", "--clients", str(clients),
        "--inflight", str(inflight), "--duration", str(duration),
    ]
    if proto == "socketio":
        generator += ["--path", SIO_PATH]
    instructions, result = window_instructions(tree, python, generator, keep)
    acks = float(result["acks_window"])
    return {
        "instructions": instructions,
        "acks": acks,
        "per_ack": instructions / acks if acks else 0.0,
    }


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
    proto = "smartsocket" if a.native else "socketio"
    rows = []
    for i, (name, tree, python) in enumerate(checkouts(a.base)):
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
