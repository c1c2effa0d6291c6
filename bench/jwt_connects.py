"""Server CPU per connect: no auth, API keys, and JWTs (HS256, RS256, ES256) end to end.

    .venv/bin/python -m bench.jwt_connects [--connects 5000] [--modes none,apikey,hs256,rs256,es256]

The issue's target: 10,000 JWT-authenticated connects no slower than 1.2x API-key ones.
The JWT rows configure the server with ``jwt_secret`` / ``jwt_public_key`` (checked at the
upgrade, like an API key; each socket then holds its claims and an expiry deadline). Each
mode runs a fresh server process pinned to core 0 (``python -m smartsocket``-like, uvloop);
this process, on core 1, opens ``--connects``
connections (64 at a time; each: TCP connect, upgrade with ``?token=...``, read the 101,
close) after 300 for warm-up. The figure is the server process's CPU time (utime + stime
from /proc) per connect: it does not depend on how fast this client is. Every client uses
its own token (a verify cache would not help a storm of distinct users).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=5000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the modes this many times, alternating; medians reported")
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
    keys: dict[str, Any] = {"rsa": rsa.generate_private_key(public_exponent=65537,
                                                            key_size=2048),
                            "ec": ec.generate_private_key(ec.SECP256R1())}
    samples: dict[str, list[float]] = {}
    for mode in [m for _ in range(args.rounds) for m in args.modes.split(",")]:
        keyfile = None
        if mode in ("rs256", "es256"):
            keyfile = f"/tmp/bench-jwt-connects-{os.getpid()}.pem"
            with open(keyfile, "wb") as f:
                f.write(keys["rsa" if mode == "rs256" else "ec"].public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo))
        command = [sys.executable, "-m", "bench.jwt_connects", "--serve", mode]
        if keyfile:
            command += ["--keyfile", keyfile]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            warm = make_tokens(mode, 300, keys, "warm")  # other users: no verdict cache hits
            tokens = make_tokens(mode, args.connects, keys)
            asyncio.run(connect_all(port, warm))
            time.sleep(0.5)
            before = cpu_seconds(proc.pid)
            start = time.perf_counter()
            failures = asyncio.run(connect_all(port, tokens))
            wall = time.perf_counter() - start
            time.sleep(0.5)  # the last closes
            used = cpu_seconds(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait()
            if keyfile:
                os.unlink(keyfile)
        samples.setdefault(mode, []).append(used / args.connects * 1e6)
        print(f"{mode:<8} server CPU {samples[mode][-1]:7.1f} µs/connect   wall "
              f"{args.connects / wall:8.0f} connects/s   failures {failures}", flush=True)
    results = {mode: statistics.median(values) for mode, values in samples.items()}
    if args.rounds > 1:
        print("\nmedians: " + ", ".join(f"{m} {v:.0f} µs" for m, v in results.items()))
    if "apikey" in results:
        base = results["apikey"]
        print("\nvs API keys: " + ", ".join(f"{m} x{v / base:.2f}" for m, v in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
