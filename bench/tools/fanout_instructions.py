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
from pathlib import Path

from bench.tools.callgrind import checkouts, window_instructions


def measure(
    tree: Path, python: str, members: int, window: int, duration: float
) -> dict[str, float]:
    """Instructions per delivery of one checkout (``tree``, run by ``python``)."""
    instructions, result = window_instructions(tree, python, [
        "--proto", "smartsocket", "--workload", "fanout", "--members", str(members),
        "--window", str(window), "--duration", str(duration),
    ])
    deliveries = float(result["deliveries_window"])
    return {
        "instructions": instructions,
        "deliveries": deliveries,
        "per_delivery": instructions / deliveries if deliveries else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="also measure this revision (e.g. main)")
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    a = ap.parse_args()
    rows = []
    for name, tree, python in checkouts(a.base):
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
