"""Server instructions per whole connect, API keys against JWTs, under valgrind's callgrind.

    .venv/bin/python -m bench.tools.jwt_connect_instructions [--connects 2000]
        [--modes apikey,hs256,rs256] [--keep DIR]

The deterministic twin of ``bench.jwt_connects`` (whose wall-clock figure swings by 30%
between rounds on a shared machine): each mode runs the same server
(``python -m bench.jwt_connects --serve MODE``, ``PYTHONHASHSEED=0``) under callgrind, this
process opens 300 connections to warm it, zeroes the counters once the server is idle, opens
``--connects`` more (each its own token: TCP connect, upgrade with ``?token=...``, read the
101, close), waits for the server to go idle again (the closes) and dumps the counters. The
figure is the server's instructions in that window over ``--connects``: everything a connect
costs from accept to the freed socket, the event loop included. RSA keys are random, but a
2048-bit verify (public exponent 65537) costs the same instructions whatever the key.

``--keep DIR`` keeps each mode's dump as ``DIR/MODE.callgrind`` for
``callgrind_annotate --inclusive=yes DIR/hs256.callgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT
from bench.jwt_connects import connect_all, make_tokens, settle


def wait_idle(pid: int) -> None:
    """Until the server under valgrind uses under 50 ms of CPU in a second (at most 10 min)."""
    deadline = time.monotonic() + 600.0
    settle(pid, cap=600.0, every=1.0, idle_ns=50_000_000)
    if time.monotonic() >= deadline:
        raise SystemExit("the server under valgrind did not go idle")


def window(mode: str, connects: int, keys: dict[str, Any], keep: Path | None) -> float:
    from cryptography.hazmat.primitives import serialization

    with tempfile.TemporaryDirectory(prefix="jwt-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   sys.executable, "-m", "bench.jwt_connects", "--serve", mode]
        if mode in ("rs256", "es256"):
            keyfile = Path(tmp) / "key.pem"
            keyfile.write_bytes(keys["rsa" if mode == "rs256" else "ec"].public_key()
                                .public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
            command += ["--keyfile", str(keyfile)]
        env = dict(os.environ, PYTHONHASHSEED="0")
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            asyncio.run(connect_all(port, make_tokens(mode, 300, keys, "warm")))
            tokens = make_tokens(mode, connects, keys)
            wait_idle(server.pid)
            subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True,
                           check=True)
            failures = asyncio.run(connect_all(port, tokens))
            wait_idle(server.pid)
            subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True,
                           check=True)
        finally:
            server.terminate()
            server.wait(timeout=120)
        if failures:
            raise SystemExit(f"{mode}: {failures} connects refused")
        dumps = sorted(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise SystemExit("callgrind wrote no dump for the measured window")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(dumps[-1], keep / f"{mode}.callgrind")
        for line in dumps[-1].read_text().splitlines():
            if line.startswith("summary:"):
                return float(line.split()[1]) / connects
        raise SystemExit(f"no totals in {dumps[-1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--modes", default="apikey,hs256,rs256")
    parser.add_argument("--keep", type=Path, help="keep the dumps here (MODE.callgrind)")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind (callgrind) is not installed")
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    keys: dict[str, Any] = {"rsa": rsa.generate_private_key(public_exponent=65537,
                                                            key_size=2048),
                            "ec": ec.generate_private_key(ec.SECP256R1())}
    results: dict[str, float] = {}
    for mode in args.modes.split(","):
        results[mode] = window(mode, args.connects, keys, args.keep)
        print(f"{mode:<8} {results[mode]:>12,.0f} Ir per connect", flush=True)
    if "apikey" in results:
        base = results["apikey"]
        print("vs API keys: " + ", ".join(f"{m} x{v / base:.3f} ({v - base:+,.0f} Ir)"
                                          for m, v in results.items() if m != "apikey"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
