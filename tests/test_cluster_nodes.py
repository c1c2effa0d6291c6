"""Every cross-node operation with 3 nodes in separate processes, over the real Redis and NATS
(127.0.0.1:6379 and :4222, started by CI), clients connected to different nodes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import pytest

from clusters import (
    BROKERS,
    NODE_TIMEOUT,
    ROOT,
    Node,
    clients,
    node_processes,
    prefix,
    read_line,
    require_broker,
)
from smartsocket import AckError, Client
from smartsocket.testing import Recorder


@pytest.fixture(scope="module", params=sorted(BROKERS))
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Node]]:
    """Three nodes on one broker, shared by the tests of this module (each uses its own
    rooms and clients)."""
    with node_processes(BROKERS[request.param], 3, tmp_path_factory.mktemp("nodes")) as nodes:
        yield nodes


async def wait_until(client: Client, event: str, data: Any, check: Any,
                     timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await client.call(event, data)
        if check(value):
            return value
        assert time.monotonic() < deadline, f"{event}: last answer {value!r}"
        await asyncio.sleep(0.02)


def room() -> str:
    return "r-" + uuid.uuid4().hex[:8]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


async def test_room_and_server_broadcasts_across_nodes(cluster: list[Node]) -> None:
    async with clients(*cluster) as (c0, c1, c2):
        name = room()
        recs = [Recorder(c, "said", "shouted") for c in (c0, c1, c2)]
        for client in (c0, c1, c2):
            await client.call("join", {"room": name})
        await wait_until(c0, "count", name, lambda n: n == 3)
        assert await c0.call("say", {"room": name, "text": "hi", "not_me": True}) == 0
        assert await recs[1].next("said") == "hi" and await recs[2].next("said") == "hi"
        big = "compressed once at the origin " * 100  # over the compression threshold
        await c1.call("say", {"room": name, "text": big, "exclude": c2.sid})
        assert await recs[0].next("said") == big and await recs[1].next("said") == big
        await c2.call("say", {"room": name, "text": "after"})
        assert await recs[2].next("said") == "after"  # c2 never got the excluded one
        assert await recs[0].next("said") == "after"
        await c0.call("shout", "everyone")
        assert await recs[1].next("shouted") == "everyone"
        assert await recs[2].next("shouted") == "everyone"
        await asyncio.sleep(0.05)
        assert recs[0].pending("shouted") == 0


async def test_operations_on_sockets_of_other_nodes(cluster: list[Node]) -> None:
    async with clients(*cluster) as (c0, c1, c2):
        rec = Recorder(c2, "direct", "said", "disconnect")
        c2.on("question", lambda data: {"answer": data["n"] * 2})
        assert await c0.call("send_to", {"sid": c2.sid, "event": "direct", "data": [1, 2]})
        assert await rec.next("direct") == [1, 2]
        assert await c0.call(
            "call_to", {"sid": c2.sid, "event": "question", "data": {"n": 21}}
        ) == {"answer": 42}
        with pytest.raises(AckError) as info:  # the remote client's ack error comes back
            await c0.call("call_to", {"sid": c2.sid, "event": "nobody-handles-this"})
        assert info.value.code == "unknown_event"
        name = room()
        assert await c0.call("join_remote", {"sid": c2.sid, "room": name}) is True
        await c1.call("join", {"room": name})
        await c1.call("say", {"room": name, "text": "to the remote joiner", "not_me": True})
        assert await rec.next("said") == "to the remote joiner"
        records = await c1.call("sockets", name)
        assert sorted(r[0] for r in records) == sorted([c1.sid, c2.sid])
        node2 = await c2.call("node")
        assert [r[1] for r in records if r[0] == c2.sid] == [node2]
        assert await c0.call("leave_remote", {"sid": c2.sid, "room": name}) is True
        assert await c0.call("count", name) == 1
        ghost = f"{node2}.nobody"
        assert await c0.call("join_remote", {"sid": ghost, "room": name}) is False
        assert await c0.call("kick", c2.sid) is True
        assert (await rec.next("disconnect")).code == 4000


async def test_fetch_sockets_presence_and_server_events(cluster: list[Node]) -> None:
    async with clients(*cluster) as (c0, c1, c2):
        ids = [await c.call("node") for c in (c0, c1, c2)]
        records = await c0.call("sockets", None)
        mine = {r[0]: r[1] for r in records if r[0] in (c0.sid, c1.sid, c2.sid)}
        assert mine == {c0.sid: ids[0], c1.sid: ids[1], c2.sid: ids[2]}
        assert await c1.call("count", None) >= 3
        # presence rooms (p-*): $presence to members on every node
        name = "p-" + uuid.uuid4().hex[:8]
        r0 = Recorder(c0, "$presence")
        await c0.call("join", {"room": name, "presence": {"name": "ann"}})
        assert (await r0.next("$presence"))["joined"]["sid"] == c0.sid
        await c1.call("join", {"room": name, "presence": {"name": "bob"}})
        assert await r0.next("$presence") == {
            "room": name, "joined": {"sid": c1.sid, "info": {"name": "bob"}}
        }
        who = await c2.call("who", name)  # c2 is no member: its node asks the others
        assert who == sorted([[c0.sid, ids[0], {"name": "ann"}], [c1.sid, ids[1], {"name": "bob"}]])
        await c2.call("join", {"room": name, "presence": {"name": "cy"}})
        assert (await r0.next("$presence"))["joined"]["sid"] == c2.sid
        await wait_until(c2, "who", name, lambda members: len(members) == 3)
        await c1.call("status", {"name": "bob", "away": True})  # info changes: "updated"
        assert await r0.next("$presence") == {
            "room": name, "updated": {"sid": c1.sid, "info": {"name": "bob", "away": True}}
        }
        await wait_until(c0, "who", name,
                         lambda members: [c1.sid, ids[1], {"name": "bob", "away": True}] in members)
        await c1.call("leave", name)
        assert (await r0.next("$presence"))["left"]["sid"] == c1.sid
        # server-to-server events reach every other node, not the sender
        note = {"n": uuid.uuid4().hex}
        assert await c0.call("tell_servers", note) is True
        for client in (c1, c2):
            await wait_until(client, "notes", None, lambda notes: [ids[0], note] in notes)
        assert [ids[0], note] not in await c0.call("notes")


async def test_stats_per_node_and_for_the_cluster(cluster: list[Node]) -> None:
    async with clients(*cluster):
        node = cluster[0]
        stats = get_json(node.http + "/smartsocket/stats")
        assert stats["cluster"]["nodes"] == 3 and "members" not in stats["cluster"]
        assert stats["raw"]["clusterPublishFailed"] == 0
        assert stats["cluster"]["adapter"] in ("redis", "nats")
        deadline = time.monotonic() + 5
        while True:  # heartbeats carry each node's connection count
            whole = get_json(node.http + "/smartsocket/stats?cluster=1")["cluster"]
            if whole["totals"]["connections"] >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert len(whole["members"]) == 3 and whole["totals"]["connections"] >= 3
        health = get_json(node.http + "/smartsocket/health")
        assert health["status"] == "ok" and health["cluster"]["status"] == "ok"


@pytest.mark.parametrize("broker", sorted(BROKERS))
async def test_a_killed_node_leaves_counts_and_presence_in_bounded_time(
    broker: str, tmp_path: Path
) -> None:
    with node_processes(BROKERS[broker], 2, tmp_path) as (a, b):
        async with clients(a, b) as (ca, cb):
            name = "p-" + uuid.uuid4().hex[:8]
            ra = Recorder(ca, "$presence")
            await ca.call("join", {"room": name, "presence": {"n": "a"}})
            await cb.call("join", {"room": name, "presence": {"n": "b"}})
            await ra.next("$presence")
            assert (await ra.next("$presence"))["joined"]["sid"] == cb.sid
            assert await ca.call("count", name) == 2
            b_id = await cb.call("node")
            b.proc.send_signal(signal.SIGKILL)
            left = await ra.next("$presence", timeout=30)
            assert left == {"room": name, "left": {"sid": cb.sid, "info": {"n": "b"}}}
            # Dropped by A's liveness check (bounded by --node-timeout), after that much
            # silence and not before; not by some slower path (a key expiring).
            said = f"node {b_id} silent for "
            lines = [x for x in a.log.read_text().splitlines() if said in x]
            assert lines, "node A did not drop B for its silence"
            silent = float(lines[0].split(said)[1].split(" s:")[0])
            assert silent >= NODE_TIMEOUT
            assert await ca.call("count", name) == 1
            assert await ca.call("nodes") == [await ca.call("node")]
            assert await ca.call("who", name) == [[ca.sid, await ca.call("node"), {"n": "a"}]]


def start_workers(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "smartsocket", "serve", "--workers", "2", "--host",
             "127.0.0.1", "--port", "0", "--app", "tests.cluster_app:create", "--cluster-url",
             url, "--cluster-prefix", prefix(), "--cluster-heartbeat", "0.2",
             "--node-timeout", "1"],
            stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT,
        )


async def test_workers_share_one_port_and_a_crashed_worker_comes_back(tmp_path: Path) -> None:
    url = BROKERS["redis"]
    require_broker(url)
    proc = start_workers(url, tmp_path / "workers.log")
    try:
        assert proc.stdout is not None
        line = read_line(proc.stdout, 30)
        assert "2 workers" in line and "listening on" in line, line
        ws_url = line.rsplit(" ", 1)[1].strip()
        stats_url = ws_url.replace("ws://", "http://") + "smartsocket/stats"
        async with AsyncExitStack() as stack:
            by_node: dict[str, list[Client]] = {}
            for _ in range(40):  # the kernel spreads connections over the two workers
                client = Client(ws_url, reconnect=False)
                await client.connect()
                stack.push_async_callback(client.close)
                by_node.setdefault(await client.call("node"), []).append(client)
                if len(by_node) == 2:
                    break
            assert len(by_node) == 2, "every connection reached the same worker"
            (_n1, (x, *_)), (_n2, (y, *_)) = by_node.items()
            await wait_until(x, "nodes", None, lambda ids: len(ids) == 2)
            name = room()
            rec = Recorder(y, "said")
            await x.call("join", {"room": name})
            await y.call("join", {"room": name})
            await x.call("say", {"room": name, "text": "across workers", "not_me": True})
            assert await rec.next("said") == "across workers"
            pid = get_json(stats_url)["process"]["pid"]
            assert pid != proc.pid
        # kill a worker: the parent starts another, and the port keeps answering
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        seen: set[int] = set()
        while time.monotonic() < deadline:
            with suppress(OSError):
                seen.add(get_json(stats_url)["process"]["pid"])
            if len(seen - {pid}) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(seen - {pid}) == 2, f"workers seen: {seen}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
