"""Resume time: how long a client that missed N room messages takes to be whole again.

    .venv/bin/python -m bench.resume [--missed 1000] [--repeat 5] [--no-pin]
    .venv/bin/python -m bench.resume --cluster-url redis://127.0.0.1:6379   # across 2 nodes

The demo server (`python -m smartsocket serve --recovery-window 60`) runs pinned to core 0;
this process (two Python clients) to core 1. A subject client joins a room and loses its
connection (TCP abort, no close frame); a publisher sends N chat messages to the room; then the
subject reconnects with ``$resume``. Measured from the start of the reconnect attempt: until
the ``$welcome`` (``recovered: true``: TCP connect, upgrade, ``$resume``, session restore and
replay selection) and until the N-th missed message reached the application (the replay on
the wire plus the client's decoding and handling of every message). The figures include the
Python client's own cost; the median of ``--repeat`` runs is printed.

With ``--cluster-url`` two nodes run (both on core 0) joined by that Redis; the subject starts
on the first, the publisher is on the second, and the subject resumes on the second: the
session and the missed messages come from Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from smartsocket import Client


class TimedClient(Client):
    """The Python client, noting when each connection attempt starts."""

    attempt_started = 0.0

    async def _open(self, resume: bool = False) -> None:
        self.attempt_started = time.perf_counter()
        await super()._open(resume)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


async def one_run(urls: list[str], missed: int, room: str) -> tuple[float, float]:
    publisher = await Client(urls[-1]).connect()
    subject = TimedClient(urls[0], reconnect_delay=0.2, reconnect_delay_max=0.2,
                          randomization_factor=0.0)
    got: list[Any] = []
    done = asyncio.Event()
    welcomed_at = 0.0

    def on_chat(message: Any) -> None:
        got.append(message)
        if len(got) == missed:
            done.set()

    def on_connect(recovered: bool) -> None:
        nonlocal welcomed_at
        welcomed_at = time.perf_counter()

    subject.on("chat", on_chat)
    subject.on("connect", on_connect)
    await subject.connect()
    await publisher.call("join", {"room": room})
    await subject.call("join", {"room": room})
    assert subject._conn is not None
    subject.url = urls[-1]  # in a cluster: resume on the other node
    subject._conn.abort()  # a lost network: the server holds the session
    while subject.connected:
        await asyncio.sleep(0.001)
    for n in range(missed):
        publisher.send("chat", {"room": room, "text": f"message {n}"})
    await publisher.call("echo", None)  # every chat above was handled (in order)
    try:
        await asyncio.wait_for(done.wait(), 30)
    except TimeoutError:
        raise RuntimeError(
            f"got {len(got)} of {missed} messages (recovered: {subject.recovered})"
        ) from None
    total = time.perf_counter() - subject.attempt_started
    welcome = welcomed_at - subject.attempt_started
    await subject.close()
    await publisher.close()
    return welcome, total


def start_server(
    args: argparse.Namespace, port: int, cluster_prefix: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port",
        str(port), "--recovery-window", "60", "--history-size", str(args.missed + 100),
        "--rate-limit-messages", "0", "--rate-limit-bytes", "0", "--rate-limit-frames", "0",
        "--log-level", "WARNING",
    ]
    if args.cluster_url:
        cmd += ["--cluster-url", args.cluster_url, "--cluster-prefix", cluster_prefix]
    if not args.no_pin and _has_taskset():
        cmd = ["taskset", "-c", "0", *cmd]
        os.sched_setaffinity(0, {1})
    return subprocess.Popen(cmd)


async def main_async(args: argparse.Namespace) -> None:
    ports = [free_port() for _ in range(2 if args.cluster_url else 1)]
    cluster_prefix = f"resume{os.getpid()}"
    servers = [start_server(args, port, cluster_prefix) for port in ports]
    try:
        for port in ports:
            await wait_port(port)
        if args.cluster_url:
            await asyncio.sleep(1.5)  # the nodes hear each other
        urls = [f"ws://127.0.0.1:{port}/" for port in ports]
        welcomes, totals = [], []
        for run in range(args.repeat):
            welcome, total = await one_run(urls, args.missed, f"resume-{run}")
            welcomes.append(welcome)
            totals.append(total)
            print(f"run {run + 1}: $welcome after {welcome * 1000:.1f} ms, "
                  f"{args.missed} messages after {total * 1000:.1f} ms", file=sys.stderr)
        where = f" across 2 nodes on {args.cluster_url}" if args.cluster_url else ""
        print(
            f"resume{where} with {args.missed:,} missed messages (median of {args.repeat}): "
            f"$welcome {statistics.median(welcomes) * 1000:.1f} ms, all messages handled "
            f"{statistics.median(totals) * 1000:.1f} ms"
        )
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def _has_taskset() -> bool:
    return subprocess.call(["which", "taskset"], stdout=subprocess.DEVNULL) == 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--cluster-url", help="two nodes joined by this Redis")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
