"""Server CPU per connect: no auth, API keys, and JWTs (HS256, RS256, ES256) end to end.

    .venv/bin/python -m bench.jwt_connects [--connects 5000] [--modes none,apikey,hs256,rs256,es256]
        [--rounds 1] [--slices 10]

The issue's target: 10,000 JWT-authenticated connects no slower than 1.2x API-key ones.
The JWT rows configure the server with ``jwt_secret`` / ``jwt_public_key`` (checked at the
upgrade, like an API key; each socket then holds its claims and an expiry deadline). Each
round starts a fresh server process per mode, all pinned to core 0 (``python -m
smartsocket``-like, uvloop); this process, on core 1, warms each with 300 connections, then
opens ``--connects`` per mode (64 at a time; each: TCP connect, upgrade with ``?token=...``,
read the 101, close) in ``--slices`` short windows, the modes taking turns window by window
(the order reversed every other window). The figure is a server's CPU time per connect
(``/proc/PID/schedstat``, user + system in ns; ``/proc/PID/stat`` ticks where absent): it does
not depend on how fast this client is. Every client uses its own token (a verify cache would
not help a storm of distinct users).

How to read it: on a shared machine a window's CPU per connect moves with whatever else runs
(rounds of one mode differed by up to 30%), but two windows run back to back see nearly the
same machine. So the ratio to read is ``ratio to API keys``: for each window, the mode's µs
per connect over the API-key window next to it; printed is the median of those ratios over
every window of every round, with the lower and upper quartiles (a spread of a few percent is
the noise left). The per-mode medians of µs per connect are printed too, but compare those
only within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import time
from typing import Any

MODES = ("none", "apikey", "hs256", "rs256", "es256")
SECRET = "bench-secret-bench-secret-0123456"
API_KEY = "bench-api-key-0123456789"


def server_main(mode: str, keyfile: str | None) -> None:
    from smartsocket import SmartSocket

    options: dict[str, Any] = dict(
        host="127.0.0.1", port=0, max_connections=100_000, max_connections_per_ip=0,
        rate_limit_messages=0, rate_limit_bytes=0, enable_metrics=True,
    )
    if mode == "apikey":
        options["api_keys"] = API_KEY
    if mode == "hs256":
        options["jwt_secret"] = SECRET
    elif mode in ("rs256", "es256"):
        options["jwt_public_key"] = keyfile
    server = SmartSocket(**options)

    async def run() -> None:
        await server.start()
        print(server.port, flush=True)
        await server.serve()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def connect_all(port: int, tokens: list[str], concurrency: int = 64) -> int:
    queue = iter(tokens)
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for token in queue:
            key = base64.b64encode(os.urandom(16)).decode()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                failures += 1
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def make_tokens(mode: str, count: int, keys: dict[str, Any], prefix: str = "user"
                ) -> list[str]:
    import jwt

    if mode == "none":
        return ["-"] * count
    if mode == "apikey":
        return [API_KEY] * count
    exp = int(time.time()) + 3600
    key, alg = {"hs256": (SECRET, "HS256"), "rs256": (keys["rsa"], "RS256"),
                "es256": (keys["ec"], "ES256")}[mode]
    return [jwt.encode({"sub": f"{prefix}-{i}", "exp": exp, "iat": exp - 3600,
                        "rooms": ["chat:lobby"]}, key, alg) for i in range(count)]


def server_cpu_ns(pid: int) -> int:
    """CPU time the process has used, in ns: /proc/PID/schedstat (ns), else /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return int(cpu_seconds(pid) * 1e9)


def settle(pid: int, cap: float = 2.0, every: float = 0.05, idle_ns: int = 1_000_000) -> int:
    """Wait (at most ``cap`` seconds) until the server is idle, its last closes done: under
    ``idle_ns`` of CPU in ``every`` seconds. Its CPU ns then."""
    deadline = time.monotonic() + cap
    last = server_cpu_ns(pid)
    while time.monotonic() < deadline:
        time.sleep(every)
        now = server_cpu_ns(pid)
        if now - last < idle_ns:
            return now
        last = now
    return last


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def start_server(mode: str, keyfile: str | None) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "bench.jwt_connects", "--serve", mode]
    if keyfile:
        command += ["--keyfile", keyfile]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=5000, help="per mode and round")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=1,
                        help="fresh servers this many times; every window of every round counts")
    parser.add_argument("--slices", type=int, default=10,
                        help="windows per round: the modes take turns window by window")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--keyfile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        os.sched_setaffinity(0, {0})
        server_main(args.serve, args.keyfile)
        return 0
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    os.sched_setaffinity(0, {1})
    modes = args.modes.split(",")
    keys: dict[str, Any] = {"rsa": rsa.generate_private_key(public_exponent=65537,
                                                            key_size=2048),
                            "ec": ec.generate_private_key(ec.SECP256R1())}
    slices = max(1, min(args.slices, args.connects))
    per_slice = args.connects // slices
    samples: dict[str, list[float]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {m: [] for m in modes if m != "apikey"}
    failures = 0
    for r in range(args.rounds):
        keyfiles: dict[str, str] = {}
        servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
        try:
            for mode in modes:
                if mode in ("rs256", "es256"):
                    keyfiles[mode] = f"/tmp/bench-jwt-connects-{os.getpid()}-{mode}.pem"
                    with open(keyfiles[mode], "wb") as f:
                        f.write(keys["rsa" if mode == "rs256" else "ec"].public_key()
                                .public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
                servers[mode] = start_server(mode, keyfiles.get(mode))
            tokens = {m: make_tokens(m, per_slice * slices, keys, f"user-{r}") for m in modes}
            for mode in modes:  # other users than the measured ones: no verdict cache hits
                asyncio.run(connect_all(servers[mode][1], make_tokens(mode, 300, keys,
                                                                      f"warm-{r}")))
            round_samples: dict[str, list[float]] = {m: [] for m in modes}
            for i in range(slices):
                window: dict[str, float] = {}
                for mode in (modes if i % 2 == 0 else modes[::-1]):
                    proc, port = servers[mode]
                    before = settle(proc.pid)
                    batch = tokens[mode][i * per_slice:(i + 1) * per_slice]
                    failures += asyncio.run(connect_all(port, batch))
                    window[mode] = (settle(proc.pid) - before) / per_slice / 1000
                    round_samples[mode].append(window[mode])
                    samples[mode].append(window[mode])
                if "apikey" in window:
                    for mode in ratios:
                        ratios[mode].append(window[mode] / window["apikey"])
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait()
            for keyfile in keyfiles.values():
                os.unlink(keyfile)
        print(f"round {r + 1}: " + ", ".join(
            f"{m} {statistics.median(v):.0f} µs" for m, v in round_samples.items())
            + f"  (median of {slices} windows of {per_slice} connects; failures {failures})",
            flush=True)
    print("\nserver CPU per connect, median of all windows: " + ", ".join(
        f"{m} {statistics.median(v):.0f} µs" for m, v in samples.items()))
    if ratios and samples.get("apikey"):
        spreads = {m: quartiles(v) for m, v in ratios.items()}
        print("ratio to API keys, window by window (median [quartiles]): " + ", ".join(
            f"{m} x{q2:.3f} [{q1:.3f}-{q3:.3f}]" for m, (q1, q2, q3) in spreads.items()))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
