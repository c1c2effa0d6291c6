"""Helpers of the cluster tests: node processes, throwaway brokers, free ports.

The shared brokers (Redis on 6379, NATS on 4222) are started by CI (scripts/services): a test
that finds one down fails instead of skipping. Each test cluster uses its own channel prefix,
so runs and other engineers' tests never hear each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import redis

from smartsocket import Client, SmartSocket, Socket

ROOT = Path(__file__).resolve().parent.parent
BROKERS = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}
HEARTBEAT, NODE_TIMEOUT = 0.2, 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def require_broker(url: str) -> None:
    port = int(url.rsplit(":", 1)[1].split("/")[0].split("?")[0])
    assert answers(port), f"{url} does not answer: CI starts it with scripts/services"


def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


def read_line(stream: IO[bytes], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode() if ready else ""


class Node:
    """``python -m smartsocket serve --app tests.cluster_app:create`` in its own process."""

    def __init__(self, url: str, cluster_prefix: str, log: Path, *extra: str) -> None:
        self.log = log
        with log.open("wb") as stderr:  # the child keeps its own descriptor
            self.proc = self._spawn(url, cluster_prefix, stderr, extra)
        self.url = ""

    @staticmethod
    def _spawn(
        url: str, cluster_prefix: str, stderr: IO[bytes], extra: tuple[str, ...]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "smartsocket", "serve", "--app", "tests.cluster_app:create",
             "--host", "127.0.0.1", "--port", "0", "--cluster-url", url,
             "--cluster-prefix", cluster_prefix, "--cluster-heartbeat", str(HEARTBEAT),
             "--node-timeout", str(NODE_TIMEOUT), "--presence-rooms", "p-*", *extra],
            stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout, timeout)
        assert "listening on" in line, f"node did not start: {line!r}\n{self.log.read_text()}"
        self.url = line.rsplit(" ", 1)[1].strip()
        return self.url

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://").rstrip("/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def node_processes(
    url: str, count: int, logs: Path, cluster_prefix: str | None = None, *extra: str
) -> Iterator[list[Node]]:
    """``count`` nodes of one cluster (``extra``: more ``smartsocket serve`` flags)."""
    require_broker(url)
    name = cluster_prefix or prefix()
    nodes = [Node(url, name, logs / f"{name}-{i}.log", *extra) for i in range(count)]
    try:
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.asynccontextmanager
async def clients(*nodes: Node) -> AsyncIterator[list[Client]]:
    """A client on each node (no reconnect), once every node hears the others."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for node in nodes:
            client = Client(node.url, reconnect=False)
            await client.connect()
            stack.push_async_callback(client.close)
            out.append(client)
        expected = min(len(set(nodes)), 3)
        for client in out:
            deadline = time.monotonic() + 5
            while len(await client.call("nodes")) < expected:
                assert time.monotonic() < deadline, "the nodes do not hear each other"
                await asyncio.sleep(0.02)
        yield out


class Broker:
    """A throwaway redis-server or nats-server on a free port, to kill and restart."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "redis":
            return [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--daemonize", "no"]
        return [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not answers(self.port):
            assert time.monotonic() < deadline, f"{self.kind} did not start on {self.port}"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class ThrowawayRedis:
    """A redis-server on a free port with its own directory (dump.rdb there on SAVE only), to
    kill, restart, restore from a snapshot, pause (SIGSTOP) and resume (SIGCONT)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *options: str) -> None:
        self.proc = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--dbfilename", "dump.rdb", "--save", "",
             "--appendonly", "no", "--daemonize", "no", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with contextlib.closing(self.client()) as r:
            while True:
                try:
                    r.ping()  # answered once the dump is loaded
                    return
                except redis.exceptions.BusyLoadingError:
                    assert time.monotonic() < deadline, f"redis did not load on {self.port}"
                    time.sleep(0.02)

    def client(self) -> redis.Redis:
        deadline = time.monotonic() + 10
        while not answers(self.port):
            assert time.monotonic() < deadline, f"redis does not answer on {self.port}"
            time.sleep(0.02)
        return redis.Redis(port=self.port, socket_timeout=5)

    def snapshot(self, name: str) -> None:
        with contextlib.closing(self.client()) as r:
            r.save()
        shutil.copy(self.dir / "dump.rdb", self.dir / name)

    def restore(self, name: str) -> None:
        assert self.proc is None, "stop it first"
        shutil.copy(self.dir / name, self.dir / "dump.rdb")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class ThrowawayRedisCluster:
    """A 3-primary Redis Cluster of ``ThrowawayRedis`` nodes on free ports (never the shared
    one on 7101-7103), each its own process: a test may pause one shard's primary."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = [ThrowawayRedis(directory / f"n{i}") for i in range(size)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}?cluster=1"

    def start(self) -> None:
        for node in self.nodes:
            node.start("--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                       "--cluster-config-file", str(node.dir / "nodes.conf"),
                       "--cluster-node-timeout", "60000")  # a paused primary fails no one over
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + 30
        for node in self.nodes:
            with contextlib.closing(node.client()) as r:
                while r.cluster("info")["cluster_state"] != "ok":
                    assert time.monotonic() < deadline, f"cluster on {node.port} is not ok"
                    time.sleep(0.05)

    def owner(self, slot: int) -> ThrowawayRedis:
        """The node that serves ``slot``."""
        with contextlib.closing(self.nodes[0].client()) as r:
            slots = r.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            for start, end, primary, *_ in slots:
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise AssertionError(f"slot {slot} is not served")

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@contextlib.contextmanager
def paused(server: Broker | ThrowawayRedis) -> Iterator[None]:
    """SIGSTOP ``server`` (its TCP connections stay open, nothing answers); SIGCONT on leaving,
    whatever happens."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


def joining_app(**options: Any) -> SmartSocket:
    """``SmartSocket(**options)`` whose ``join`` event joins the room and answers True once the
    room's broker subscription is up (a broadcast from another node reaches the member)."""
    server = SmartSocket(**options)

    @server.on("join")
    async def join(socket: Socket, room: str) -> bool:
        socket.join(room)
        assert await server.room(room).subscribed()
        return True

    return server


def _binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(f"{name} is not installed (scripts/services installs it)")
