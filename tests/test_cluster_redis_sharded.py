"""Nodes over a real Redis Cluster with sharded pub/sub (``redis://...?cluster=1``): 3 node
processes on the throwaway 3-primary cluster of scripts/redis-cluster (127.0.0.1:7101-7103,
started here when it is not answering; the test that moves a slot has a throwaway cluster of
its own). What the shards hold is checked with redis-cli."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clusters import ROOT, Node, ThrowawayRedisCluster, clients, node_processes, prefix
from smartsocket.cluster import create_adapter
from smartsocket.cluster.brokers.redis_cluster import (
    RedisClusterAdapter,
    channel_slot,
    is_cluster_url,
    parse_url,
    slot_owners,
)
from smartsocket.testing import Recorder

PORTS = (7101, 7102, 7103)
URL = f"redis://127.0.0.1:{PORTS[0]},127.0.0.1:{PORTS[1]}?cluster=1"


def cli(port: int, *args: str) -> list[str]:
    done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=10, check=True)
    return done.stdout.split()


def keyslot(channel: str, ports: tuple[int, ...] = PORTS) -> int:
    return int(cli(ports[0], "CLUSTER", "KEYSLOT", channel)[0])


def primaries(ports: tuple[int, ...] = PORTS) -> list[list[str]]:
    """The CLUSTER NODES lines of the primaries, split into fields (``ports``: a cluster's)."""
    done = subprocess.run(["redis-cli", "-p", str(ports[0]), "CLUSTER", "NODES"],
                          capture_output=True, text=True, timeout=10, check=True)
    lines = [line.split() for line in done.stdout.splitlines()]
    return [fields for fields in lines if "master" in fields[2]]


def port_of(fields: list[str]) -> int:
    return int(fields[1].split(":")[1].split("@")[0])


def owner(slot: int, ports: tuple[int, ...] = PORTS) -> int:
    """The port of the primary serving ``slot``."""
    for fields in primaries(ports):
        for spec in fields[8:]:
            if spec.startswith("["):
                continue  # a slot being migrated
            start, _, end = spec.partition("-")
            if int(start) <= slot <= int(end or start):
                return port_of(fields)
    raise AssertionError(f"no primary serves slot {slot}")


def node_ids(ports: tuple[int, ...] = PORTS) -> dict[int, str]:
    return {port_of(fields): fields[0] for fields in primaries(ports)}


def move_slot(slot: int, port: int, ports: tuple[int, ...]) -> None:
    """Assign ``slot`` (which holds no keys) to the primary on ``port`` of the cluster on
    ``ports`` (never the shared one: other test files may be using it at the same time)."""
    target = node_ids(ports)[port]
    for each in (port, *(p for p in ports if p != port)):  # the new owner first
        cli(each, "CLUSTER", "SETSLOT", str(slot), "NODE", target)


def numsub(port: int, channel: str) -> int:
    """Subscribers of shard channel ``channel`` on the primary on ``port``."""
    reply = cli(port, "PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


def shard_channels(port: int, pattern: str) -> list[str]:
    return cli(port, "PUBSUB", "SHARDCHANNELS", pattern)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    """Until ``check()``; ``timeout`` only bounds a failure (it is no speed requirement: three
    node processes on a loaded 2-core machine took over 5 s to resubscribe after a slot move)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[None]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed: no Redis Cluster to test sharded pub/sub")
    script = str(ROOT / "scripts" / "redis-cluster")
    pid = str(os.getpid())
    subprocess.run([script, "acquire", pid], check=True, timeout=60, capture_output=True)
    yield
    # Stops the cluster only if it was started for the tests and no other run uses it.
    subprocess.run([script, "release", pid], check=True, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def cluster(
    redis_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[Node]]]:
    """Three nodes on the Redis Cluster, shared by this module's tests (each uses its own rooms
    and clients); yields (cluster_prefix, nodes)."""
    name = prefix()
    with node_processes(URL, 3, tmp_path_factory.mktemp("sharded"), name) as nodes:
        yield name, nodes


@pytest.fixture
def own_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, list[Node], tuple[int, ...]]]:
    """Three nodes on a throwaway Redis Cluster of this test's own: its slots may move while
    other test files use the shared one. Yields (cluster_prefix, nodes, the cluster's ports)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed: no Redis Cluster to test sharded pub/sub")
    redis = ThrowawayRedisCluster(tmp_path_factory.mktemp("own-cluster"))
    redis.start()
    try:
        ports = tuple(node.port for node in redis.nodes)
        name = prefix()
        url = f"redis://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}?cluster=1"
        with node_processes(url, 3, tmp_path_factory.mktemp("moving"), name) as nodes:
            yield name, nodes, ports
    finally:
        redis.kill()


def rooms_by_shard(cluster_prefix: str) -> dict[int, str]:
    """A room per shard: room name by the port of the primary owning its channel."""
    rooms: dict[int, str] = {}
    while len(rooms) < len(PORTS):
        name = "r-" + uuid.uuid4().hex[:8]
        slot = keyslot(f"{cluster_prefix}.room.{name}")
        rooms.setdefault(owner(slot), name)
    return rooms


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_cluster_url_and_slot_map() -> None:
    assert is_cluster_url("redis://h:7000?cluster=1") and is_cluster_url("rediss://h?cluster=yes")
    assert not is_cluster_url("redis://h:7000") and not is_cluster_url("redis://h?cluster=0")
    assert parse_url("redis://u:pw@a:7000,b,[::1]:7001/0?cluster=1&socket_timeout=3") == (
        ["a:7000", "b:6379", "[::1]:7001"], "redis", "u:pw@", "?socket_timeout=3"
    )
    assert isinstance(create_adapter("redis://127.0.0.1:7101?cluster=true"), RedisClusterAdapter)
    with pytest.raises(ValueError, match="database 0"):
        parse_url("redis://a:7000/2?cluster=1")
    # CLUSTER SHARDS as a raw (unparsed) reply: the primary serves, the replica does not
    raw = [[b"slots", [0, 99, 200, 16383], b"nodes", [
        [b"id", b"r", b"port", 7002, b"ip", b"10.0.0.2", b"endpoint", b"10.0.0.2",
         b"role", b"replica", b"health", b"online"],
        [b"id", b"p", b"port", 7001, b"ip", b"10.0.0.1", b"endpoint", b"?",
         b"role", b"master", b"health", b"online"],
    ]]]
    owners = slot_owners(raw, False, "seed:7000")
    assert owners[0] == owners[16383] == "10.0.0.1:7001" and owners[100] == ""


async def test_room_broadcasts_on_every_shard(cluster: tuple[str, list[Node]]) -> None:
    name, nodes = cluster
    rooms = rooms_by_shard(name)
    async with clients(*nodes) as (c0, c1, c2):
        recs = [Recorder(c, "said") for c in (c0, c1, c2)]
        for port, room in rooms.items():
            channel = f"{name}.room.{room}"
            assert keyslot(channel) == channel_slot(channel)  # the adapter hashes like Redis
            for client in (c0, c1, c2):
                await client.call("join", {"room": room})  # acks once the shard confirmed
            # subscribed on the owning shard only, once per node with members
            assert shard_channels(port, channel) == [channel]
            assert numsub(port, channel) == 3
            for other in PORTS:
                if other != port:
                    assert shard_channels(other, channel) == []
            assert await c0.call("say", {"room": room, "text": room, "not_me": True}) == 0
            assert await recs[1].next("said") == room and await recs[2].next("said") == room
            await c2.call("say", {"room": room, "text": "back", "exclude": c1.sid})
            assert await recs[0].next("said") == "back" and await recs[2].next("said") == "back"
        await asyncio.sleep(0.05)
        assert [rec.pending("said") for rec in recs] == [0, 0, 0]
        # a node subscribes only while it has local members
        port, room = next(iter(rooms.items()))
        channel = f"{name}.room.{room}"
        await c1.call("leave", room)
        await eventually(lambda: numsub(port, channel) == 2, "node 1 still subscribed")
        await c0.call("leave", room)
        await c2.call("leave", room)
        await eventually(lambda: shard_channels(port, channel) == [], "still subscribed")
        await c0.call("join", {"room": room})
        assert numsub(port, channel) == 1


async def test_server_broadcast_and_remote_sockets(cluster: tuple[str, list[Node]]) -> None:
    name, nodes = cluster
    async with clients(*nodes) as (c0, c1, c2):
        # Counted from here: a node whose first connect took over 5 s (a loaded machine) runs
        # its heartbeat before its link is up, and that refused heartbeat counts as failed.
        failed = get_json(nodes[0].http + "/smartsocket/stats")["cluster"]["publishFailed"]
        ids = [await c.call("node") for c in (c0, c1, c2)]
        # the node-wide channels are shard channels too: one shard each
        everyone = f"{name}.all"
        assert numsub(owner(keyslot(everyone)), everyone) == 3
        for node_id in ids:
            inbox = f"{name}.node.{node_id}"
            assert numsub(owner(keyslot(inbox)), inbox) == 1
        recs = [Recorder(c, "shouted", "direct") for c in (c0, c1, c2)]
        await c0.call("shout", "everyone")
        assert await recs[1].next("shouted") == "everyone"
        assert await recs[2].next("shouted") == "everyone"
        assert await c0.call("send_to", {"sid": c2.sid, "event": "direct", "data": [1, 2]})
        assert await recs[2].next("direct") == [1, 2]
        c1.on("question", lambda data: data["n"] * 2)
        assert await c2.call("call_to", {"sid": c1.sid, "event": "question",
                                         "data": {"n": 21}}) == 42
        records = await c0.call("sockets", None)
        mine = {r[0]: r[1] for r in records if r[0] in (c0.sid, c1.sid, c2.sid)}
        assert mine == {c0.sid: ids[0], c1.sid: ids[1], c2.sid: ids[2]}
        stats = get_json(nodes[0].http + "/smartsocket/stats")["cluster"]
        assert stats["adapter"] == "redis-cluster" and stats["status"] == "ok"
        assert stats["nodes"] == 3 and stats["publishFailed"] == failed


async def test_presence_across_nodes(cluster: tuple[str, list[Node]]) -> None:
    _, nodes = cluster
    async with clients(*nodes) as (c0, c1, c2):
        room = "p-" + uuid.uuid4().hex[:8]
        r0 = Recorder(c0, "$presence")
        await c0.call("join", {"room": room, "presence": {"name": "ann"}})
        assert (await r0.next("$presence"))["joined"]["sid"] == c0.sid
        await c1.call("join", {"room": room, "presence": {"name": "bob"}})
        assert await r0.next("$presence") == {
            "room": room, "joined": {"sid": c1.sid, "info": {"name": "bob"}}
        }
        who = await c2.call("who", room)  # not a member: its node asks the others
        assert sorted(m[0] for m in who) == sorted([c0.sid, c1.sid])
        await c1.call("leave", room)
        assert (await r0.next("$presence"))["left"]["sid"] == c1.sid


async def test_a_room_follows_its_slot_to_another_shard(
    own_cluster: tuple[str, list[Node], tuple[int, ...]],
) -> None:
    name, nodes, ports = own_cluster
    room = "r-" + uuid.uuid4().hex[:8]
    channel = f"{name}.room.{room}"
    slot = keyslot(channel, ports)
    home = owner(slot, ports)
    target = next(p for p in ports if p != home)
    async with clients(*nodes) as (c0, c1, _):
        rec = Recorder(c1, "said")
        await c0.call("join", {"room": room})
        await c1.call("join", {"room": room})
        assert numsub(home, channel) == 2
        # What the move costs, counted from here: a heartbeat refused before a slow first
        # connect was up (see test_server_broadcast_and_remote_sockets) is not the move's.
        before = [get_json(node.http + "/smartsocket/stats")["cluster"] for node in nodes]
        try:
            move_slot(slot, target, ports)
            # Redis unsubscribed the nodes on the old owner; they subscribe on the new one
            await eventually(lambda: numsub(target, channel) == 2, "not resubscribed")
            assert shard_channels(home, channel) == []
            # the publishing node learns the move from a MOVED answer and sends again
            await c0.call("say", {"room": room, "text": "moved", "not_me": True})
            assert await rec.next("said") == "moved"
        finally:
            move_slot(slot, home, ports)
        await eventually(lambda: numsub(home, channel) == 2, "not back on the old owner")
        await c0.call("say", {"room": room, "text": "home", "not_me": True})
        assert await rec.next("said") == "home"
        for node, then in zip(nodes, before, strict=True):  # handled without dropping the link
            stats = get_json(node.http + "/smartsocket/stats")["cluster"]
            assert stats["reconnects"] == then["reconnects"] == 0
            assert stats["publishFailed"] == then["publishFailed"]


async def test_a_broken_shard_connection_reconnects_and_resubscribes(redis_cluster: None) -> None:
    """In-process adapters: Redis closes one shard's subscribed connection; the link goes down,
    comes back (re-reading the slot map) and the channel works again."""
    states: list[bool] = []
    got: list[bytes] = []
    channel = f"{prefix()}.room.x"
    a = RedisClusterAdapter(URL)
    b = RedisClusterAdapter(URL)
    a.subscribe(channel)
    await a.start(lambda _, data: got.append(data), states.append)
    await b.start(lambda _, data: None, lambda _: None)
    try:
        assert states == [True]
        home = owner(keyslot(channel))
        assert a.subscriptions()[f"127.0.0.1:{home}"] == {channel}
        shard = a._shards[f"127.0.0.1:{home}"]
        host, port = shard.pubsub.connection._writer.get_extra_info("sockname")[:2]
        cli(home, "CLIENT", "KILL", "ADDR", f"{host}:{port}")
        await eventually(lambda: states == [True, False, True], f"states {states}")
        assert a.reconnects == 1 and numsub(home, channel) == 1
        assert b.publish(channel, b"after")
        await eventually(lambda: got == [b"after"], f"got {got}")
    finally:
        await a.close()
        await b.close()


async def test_a_silent_shard_that_answers_its_ping_keeps_the_link(redis_cluster: None) -> None:
    """A node's channels on a shard can be silent for long (its inbox): the watchdog pings that
    subscription every round, and the answer, read a millisecond later, must count
    however late the next round runs (a busy event loop runs its timers late; here the loop is
    blocked on purpose). Before, a round compared the time of the last read with its own: the
    answer was older than the period at every round after a ping, the link went down every
    10 s, and what was queued or in flight then was lost (bench cluster-fanout, "not
    drained")."""
    idle = 1.0
    states: list[bool] = []
    pongs: list[str] = []
    channel = f"{prefix()}.node.silent"
    a = RedisClusterAdapter(URL, idle_timeout=idle)
    handle = a._handle

    def spy(shard: Any, message: dict[str, Any]) -> None:
        if message["type"] == "pong":
            pongs.append(shard.addr)
            if len(pongs) == 1:  # the loop is busy: the next round runs >= idle after the answer
                time.sleep(idle)
        handle(shard, message)

    a._handle = spy  # type: ignore[method-assign]
    a.subscribe(channel)
    await a.start(lambda _, data: None, states.append)
    try:
        assert states == [True]
        shard = a._shards[f"127.0.0.1:{owner(keyslot(channel))}"]
        await eventually(lambda: pongs, "the silent shard was never pinged", timeout=4 * idle + 5)
        # the round after the (late) answer pings again; on the old code it raised instead
        await eventually(lambda: a.pings[shard.addr] >= 2 or states != [True],
                         "no round after the ping", timeout=idle + 5)
        assert states == [True] and a.reconnects == 0, a.last_error
    finally:
        await a.close()
