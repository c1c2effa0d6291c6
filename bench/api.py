"""The HTTP API's publish rate and publish-to-delivery latency (issue 18).

    .venv/bin/python -m bench.api [--seconds 5] [--members 2] [--connections 4] [--batch 1000]
    .venv/bin/python -m bench.api --nodes 2 [--redis redis://127.0.0.1:6379] [...]

A ``smartsocket serve`` process (its own core when pinning is available) with ``--api-secret``;
in this process: ``--members`` WebSocket members of one room (raw asyncio protocols,
bench/api_members.py, joined through the API's ``join``) and the HTTP clients (a minimal
keep-alive HTTP/1.1 client: aiohttp for the set-up and the idle latency).

- Latency, idle: one publish at a time, the next once every member got the previous one;
  from just before the POST is sent until a member's receive loop has the message. p50/p99.
- Single publishes: ``--connections`` clients POST ``publish`` back to back for ``--seconds``;
  publishes/s answered 200.
- Batched: the same with ``batch`` requests of ``--batch`` publishes each.
- Under load (both runs): every 100th publish carries its send time; its delivery latency is
  measured at the first member. Publishes are counted as accepted (200, or a batch result
  without error) or refused (by error code, e.g. ``overloaded``); deliveries at the end
  (every member gets every accepted publish: a lost one would show, and so would ``$gap``).
- ``--recovery SECONDS``: the nodes' ``recovery_window``; ``--cluster-queue N``: their
  broker queue (cross it with a small one); ``--batch-only``: skip the single publishes. In
  two-node mode each node's broker figures follow, and how long each took to exit after
  SIGTERM.

With ``--nodes 2``: two ``smartsocket serve`` nodes joined by Redis (``--cluster-url``, a
``--cluster-prefix`` of their own), the members split evenly over them (each joined through
its own node's API, then a warm-up publish until every member has one: both nodes subscribed),
every publish POSTed to the first node's API. The latencies are given at the first member of
each node (under load: the stamped publishes at both). No core pinning: the two nodes share
the machine with the bench process.

The members and the HTTP client share this process: under load they compete with each other
for one core. Until 2026-12-02 the members were ``websockets`` clients and each batch body was
built with ``json.dumps`` per request: the bench process then spent ~2.7x the server's CPU per
publish and the batch figure measured it (45,248/s; the same server: 111,216/s with the cheap
members). Now a member parses frames itself (counts, stamps, ``$ping``: bench/api_members.py),
a batch body is made once around its stamp (the same JSON, the first publish's data
``{"at": ...}``), and an answer equal to one already parsed as all accepted is not parsed again;
every check is the same (every member gets every accepted publish, latency samples,
refusals by code). Check the two processes' CPU when the figure matters: the bench process
should be the smaller one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bench.api_members import RawMember, connect
from bench.common import (
    LOADGEN_CORE,
    SERVER_CORE,
    pin_preexec,
    pin_prefix,
    pinning_available,
)

SECRET = "bench-api-secret-0123456789"
ROOM = "bench"


@contextlib.contextmanager
def server_process(extra: list[str] | None = None, pin: bool = True) -> Any:
    cmd = [sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0",
           "--api-secret", SECRET, "--max-write-buffer", str(512 << 20),
           "--rate-limit-messages", "0", "--log-level", "WARNING", *(extra or [])]
    core = SERVER_CORE if pin and pinning_available() else None
    proc = subprocess.Popen(
        pin_prefix(core) + cmd, stdout=subprocess.PIPE, preexec_fn=pin_preexec(core)
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
        yield line.rsplit(" ", 1)[1].strip().replace("ws://", "").rstrip("/")
    finally:
        proc.terminate()
        start = time.perf_counter()
        try:
            proc.wait(20)
            print(f"  node {proc.pid} exited {time.perf_counter() - start:.1f} s after SIGTERM")
        except subprocess.TimeoutExpired:  # seen after a cross-node batch flood: say so
            print(f"  a node did not stop within 20 s of SIGTERM: killed (pid {proc.pid})")
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def cluster(nodes: int, redis: str, options: list[str]) -> Any:
    """``nodes`` host:port addresses: one node alone, or nodes joined by Redis."""
    if nodes == 1:
        with server_process(options) as host:
            yield [host]
        return
    extra = ["--cluster-url", redis, "--cluster-prefix", f"benchapi{uuid.uuid4().hex[:8]}",
             *options]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(server_process(extra, pin=False)) for _ in range(nodes)]


async def post(http: aiohttp.ClientSession, base: str, op: str, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    async with http.post(f"{base}/smartsocket/api/{op}", data=json.dumps(body),
                         headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


@contextlib.asynccontextmanager
async def members(hosts: list[str], http: aiohttp.ClientSession, n: int,
                  ) -> AsyncIterator[list[RawMember]]:
    """``n`` members, member i on node ``i % len(hosts)``, joined through that node's API."""
    out: list[RawMember] = []
    try:
        for i in range(n):
            host = hosts[i % len(hosts)]
            member = await connect(host)
            out.append(member)
            await post(http, f"http://{host}", "join", {"sid": member.sid, "room": ROOM})
        yield out
    finally:
        await asyncio.gather(*(m.close() for m in out))


async def warm_up(http: aiohttp.ClientSession, base: str, group: list[RawMember]) -> None:
    """Publish ``w`` through ``base`` until every member got one: every node is subscribed."""
    deadline = time.perf_counter() + 30
    while not all(m.warm for m in group):
        assert time.perf_counter() < deadline, "a node never got the room's publishes"
        await post(http, base, "publish", {"room": ROOM, "event": "w", "data": None})
        await asyncio.sleep(0.05)


async def idle_latency(http: aiohttp.ClientSession, base: str, group: list[RawMember],
                       samples: int) -> list[float]:
    loop = asyncio.get_running_loop()
    for i in range(samples + 20):
        waiters = []
        for m in group:
            m.waiter = loop.create_future()
            waiters.append(m.waiter)
        await post(http, base, "publish", {
            "room": ROOM, "event": "t", "data": {"at": time.perf_counter(), "i": i}
        })
        await asyncio.wait_for(asyncio.gather(*waiters), 10)
    for m in group:
        m.waiter = None
    return [value for m in firsts(group) for value in m.latencies[20:]]


def firsts(group: list[RawMember]) -> list[RawMember]:
    """The first member of each node: where latencies are taken."""
    return list({m.host: m for m in reversed(group)}.values())[::-1]


class RawHttp(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client (one request in flight): aiohttp costs the shared
    process ~5x more per request than the server spends on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.done: asyncio.Future[bytes] | None = None
        self.closed = False  # the server said Connection: close (http_keepalive_requests)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                          else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = bytes(self.buffer[9:12])
        self.closed = b"connection: close" in head
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        if self.done is not None:
            self.done.set_result(status + b" " + body)

    async def post(self, host: str, op: str, body: bytes) -> bytes:
        """The answer: status, a space, the body."""
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"POST /smartsocket/api/%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (op.encode(), host.encode(), SECRET.encode(), len(body), body)
        )
        return await self.done


class Outcome:
    """Publishes accepted (answered OK) and refused (by error code) under load. A batch
    answer equal to one already parsed as all accepted is counted without parsing it again."""

    def __init__(self) -> None:
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.all_ok: bytes | None = None

    def count(self, answer: bytes, publishes: int) -> None:
        if answer == self.all_ok:
            self.accepted += publishes
            return
        status, _, body = answer.partition(b" ")
        if status != b"200":
            code = json.loads(body)["error"]["code"]
            self.refused[code] = self.refused.get(code, 0) + publishes
            return
        results = json.loads(body).get("results")
        if results is None:
            self.accepted += 1
            return
        before = self.accepted
        for item in results:
            if "result" in item:
                self.accepted += 1
            else:
                code = item["error"]["code"]
                self.refused[code] = self.refused.get(code, 0) + 1
        if self.accepted - before == publishes == len(results):
            self.all_ok = answer


def batch_body(batch: int) -> tuple[bytes, bytes]:
    """A batch of ``batch`` publishes around its first one's data (a ``{"at": ...}`` stamp):
    the bytes before and after it, made once (the same JSON the bench sent per batch)."""
    ops = [{"op": "publish", "room": ROOM, "event": "t", "data": i} for i in range(batch)]
    ops[0]["data"] = "@"
    head, _, tail = json.dumps({"operations": ops}).encode().partition(b'"@"')
    return head, tail


async def load(host: str, seconds: float, connections: int, batch: int) -> Outcome:
    """Publishes sent in ``seconds`` (``batch``: publishes per request, 0: single), and how
    many were accepted."""
    outcome = Outcome()
    until = time.perf_counter() + seconds
    loop = asyncio.get_running_loop()
    address, port = host.rsplit(":", 1)
    head, tail = batch_body(batch) if batch else (b"", b"")

    async def worker() -> None:
        _, client = await loop.create_connection(RawHttp, address, int(port))
        n = 0
        while time.perf_counter() < until:
            if client.closed:
                _, client = await loop.create_connection(RawHttp, address, int(port))
            if batch:
                stamp = b'{"at": %r}' % time.perf_counter()
                outcome.count(await client.post(host, "batch", head + stamp + tail), batch)
                n += batch
            else:
                data: Any = {"at": time.perf_counter()} if n % 100 == 0 else n
                body = {"room": ROOM, "event": "t", "data": data}
                outcome.count(await client.post(host, "publish", json.dumps(body).encode()), 1)
                n += 1
        assert client.transport is not None
        client.transport.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return outcome


async def drained(group: list[RawMember], expected: int) -> None:
    deadline = time.perf_counter() + 60
    while any(m.count < expected for m in group) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def node_options(args: argparse.Namespace) -> list[str]:
    options = []
    if args.recovery:
        options += ["--recovery-window", str(args.recovery), "--history-size",
                    str(args.history_size)]
    if args.cluster_queue:
        options += ["--cluster-queue", str(args.cluster_queue)]
    return options


async def cluster_figures(http: aiohttp.ClientSession, hosts: list[str]) -> str:
    """What each node counted: publishes refused or lost on the broker link, reconnects,
    and with recovery the $gap notices it sent."""
    parts = []
    for host in hosts:
        stats = (await post(http, f"http://{host}", "stats", {}))["result"]
        c = stats.get("cluster", {})
        r = stats.get("recovery") or {}
        parts.append(
            f"{host}: published {c.get('published')}, publishFailed {c.get('publishFailed')}, "
            f"publishOverflowed {c.get('publishOverflowed')}, reconnects {c.get('reconnects')}, "
            f"gaps {r.get('gaps', '-')}"
        )
    return "; ".join(parts)


async def main(args: argparse.Namespace) -> None:
    if pinning_available() and args.nodes == 1:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    with cluster(args.nodes, args.redis, node_options(args)) as hosts:
        host, base = hosts[0], f"http://{hosts[0]}"
        connector = aiohttp.TCPConnector(limit=args.connections)
        async with aiohttp.ClientSession(connector=connector) as http, \
                members(hosts, http, args.members) as group:
            await warm_up(http, base, group)
            where = f"{args.members} members on {len(hosts)} node(s), publishing through the first"
            idle = await idle_latency(http, base, group, args.samples)
            print(f"idle latency ({args.samples} publishes, {where}): "
                  f"p50 {statistics.median(idle):.2f} ms, p99 {pct(idle, 0.99):.2f} ms")
            total = group[0].count
            modes = (("single", 0), (f"batch of {args.batch}", args.batch))
            for label, batch in modes if not args.batch_only else modes[1:]:
                for m in group:
                    m.latencies.clear()
                start = time.perf_counter()
                outcome = await load(host, args.seconds, args.connections, batch)
                elapsed = time.perf_counter() - start
                total += outcome.accepted
                await drained(group, total)
                lat = [value for m in firsts(group) for value in m.latencies]
                delivered = min(m.count for m in group)
                refused = f", refused {outcome.refused}" if outcome.refused else ""
                print(f"{label}: {outcome.accepted / elapsed:,.0f} publishes/s accepted over "
                      f"{elapsed:.1f} s ({args.connections} connections{refused}); delivery "
                      f"latency under load p50 {statistics.median(lat or [math.nan]):.1f} ms, "
                      f"p99 {pct(lat, 0.99):.1f} ms ({len(lat)} samples); every member got "
                      f"{delivered:,} of {total:,} accepted")
                if delivered < total or any(m.other.get("$gap") for m in group):
                    print("  short: " + ", ".join(f"{m.host} got {m.count:,} {m.other}"
                                                for m in group))
            if args.nodes > 1:
                print("  " + await cluster_figures(http, hosts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 2))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--recovery", type=float, default=0.0,
                        help="the nodes' recovery_window (0: recovery off)")
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument("--cluster-queue", type=int, default=0,
                        help="the nodes' cluster_queue (0: the default)")
    parser.add_argument("--batch-only", action="store_true", help="skip the single publishes")
    asyncio.run(main(parser.parse_args()))
