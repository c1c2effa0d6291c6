"""Server instructions in a generator's measured window, under valgrind's callgrind: the
shared part of the ``*_instructions`` tools (a measure a loaded machine does not move).

``window_instructions`` runs ``smartsocket serve`` (the bench flags, no heartbeat inside the
window) of one checkout under callgrind on a free port, drives it with the C generator,
zeroes the counters at ``#MEASURE_START``, dumps them at ``#MEASURE_END`` and returns the
instructions the server executed in that window with the generator's result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.common import HOST, REPO_ROOT, free_port, port_open, project_python
from bench.servers import SmartSocketPeer


def checkouts(base: str | None) -> list[tuple[str, Path, str]]:
    """(name, tree, python) for this checkout and, with ``base``, that revision (exported to
    the ``bench compare`` cache)."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind (callgrind) is not installed")
    runs = [("this checkout", REPO_ROOT, project_python())]
    if base:
        from bench.compare import prepare_base, resolve

        tree = prepare_base(resolve(base))
        runs.append((base, tree, str(tree / ".venv" / "bin" / "python")))
    return runs


def window_instructions(
    tree: Path, python: str, generator: list[str], keep: Path | None = None
) -> tuple[float, dict[str, Any]]:
    """Instructions of one checkout's server (``tree``, run by ``python``) in the window of
    the C generator run with ``generator`` (its arguments but ``--port``), and its result.
    ``keep``: where to copy the window's dump (for ``callgrind_annotate``)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        # no heartbeat inside the window: $pings (and Engine.IO pings) would be counted
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
            result = _drive(server.pid, [*generator, "--port", str(port)])
        finally:
            server.terminate()
            server.wait(timeout=60)
        dumps = sorted(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise SystemExit("callgrind wrote no dump for the measured window")
        if keep is not None:
            shutil.copy(dumps[-1], keep)
        return _total(dumps[-1]), result


def _drive(pid: int, generator: list[str]) -> dict[str, Any]:
    args = [
        str(loadgen.ensure_built()), *generator, "--payload-size", "64", "--warmup", "1",
        "--connect-timeout", "300", "--drain-timeout", "120",
    ]
    gen = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert gen.stdout is not None
    result: dict[str, Any] = {}
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
