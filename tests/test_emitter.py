"""The emitter (smartsocket/emitter/): a separate Python process publishes to a running
cluster through its broker (the real Redis, NATS and the throwaway Redis Cluster of
scripts/redis-cluster); clients on two nodes receive it; with recovery on, a client cut during
the emits gets them on resume."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusters import BROKERS, ROOT, clients, free_port, node_processes, prefix, read_line
from smartsocket import AsyncEmitter, Client, Config, Emitter, EmitterError
from smartsocket.emitter import EmitterCore
from smartsocket.testing import Recorder, wait_for

CLUSTER_URL = "redis://127.0.0.1:7101,127.0.0.1:7102?cluster=1"


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[None]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed: no Redis Cluster")
    script = str(ROOT / "scripts" / "redis-cluster")
    pid = str(os.getpid())
    subprocess.run([script, "acquire", pid], check=True, timeout=60, capture_output=True)
    yield
    subprocess.run([script, "release", pid], check=True, timeout=60, capture_output=True)


def broker_url(name: str, request: pytest.FixtureRequest) -> str:
    if name == "redis-cluster":
        request.getfixturevalue("redis_cluster")
        return CLUSTER_URL
    return BROKERS[name]


class Peer:
    """``tests/emitter_peer.py`` in its own process: one call per line, answered in order."""

    def __init__(self, mode: str, url: str, **options: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "emitter_peer.py"), mode, url,
             json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )

    async def call(self, method: str, *args: Any, **kwargs: Any) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([method, args, kwargs]).encode() + b"\n")
        self.proc.stdin.flush()
        stdout = self.proc.stdout
        line = await asyncio.get_running_loop().run_in_executor(None, read_line, stdout, 30.0)
        return line.strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@contextlib.asynccontextmanager
async def peer(mode: str, url: str, **options: Any) -> AsyncIterator[Peer]:
    process = Peer(mode, url, **options)
    try:
        yield process
    finally:
        await asyncio.get_running_loop().run_in_executor(None, process.close)


# the core: names, ids and codes are checked in the caller, before anything is sent


def test_the_core_checks_what_it_is_given() -> None:
    core = EmitterCore(max_name_length=8)
    with pytest.raises(ValueError, match="reserved"):
        core.publish("room", "$welcome", None, None)
    with pytest.raises(ValueError, match="room name"):
        core.publish("bad\u202eroom", "e", None, None)
    with pytest.raises(ValueError, match="longer than 8"):
        core.publish("room", "event-too-long", None, None)
    with pytest.raises(ValueError, match="longer than 8"):
        core.join("n.s", "room-too-long")
    with pytest.raises(ValueError, match="not a cluster socket id"):
        core.send("no-node-part", "e", None)
    with pytest.raises(ValueError, match="close code"):
        core.disconnect("n.s", 1006, "")
    channel, _ = core.send("node1.abc", "e", 1)
    assert channel == "smartsocket.node.node1"
    assert core.publish("a b", "e", 1, None)[0] == "smartsocket.room.~YSBi"  # as nodes name it


def test_options_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="network broker"):
        AsyncEmitter("memory://x")
    with pytest.raises(ValueError, match="needs Redis"):
        Emitter("nats://127.0.0.1:4222", recovery_window=10)
    with pytest.raises(ValueError, match="no cluster_url"):
        Emitter.from_config(Config())
    emitter = AsyncEmitter.from_config(
        Config(cluster_url="redis://127.0.0.1:6379", cluster_prefix="x", recovery_window=5)
    )
    assert emitter._core.prefix == "x" and emitter._core.recovery


async def test_an_unreachable_broker_is_an_error_not_a_hang() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    emitter = AsyncEmitter(url, timeout=0.3)
    with pytest.raises(EmitterError, match="unreachable"):
        await emitter.publish("room", "e", 1)
    await emitter.close()
    with pytest.raises(EmitterError, match="closed"):
        await emitter.publish("room", "e", 1)
    sync = Emitter(url, timeout=0.3)
    with pytest.raises(EmitterError, match="unreachable"):
        sync.send("n.s", "e", 1)
    sync.close()


# a separate process publishes; clients on two nodes receive


@pytest.mark.parametrize(("broker", "mode"), [
    ("redis", "sync"), ("redis", "async"), ("nats", "async"), ("nats", "sync"),
    ("redis-cluster", "sync"),
])
async def test_every_operation_reaches_sockets_on_both_nodes(
    broker: str, mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = broker_url(broker, request)
    with node_processes(url, 2, tmp_path) as nodes:
        prefix = nodes[0].proc.args[nodes[0].proc.args.index("--cluster-prefix") + 1]  # type: ignore[union-attr]
        async with clients(*nodes) as (c0, c1), peer(mode, url, prefix=prefix) as emitter:
            recs = [Recorder(c, "news", "direct", "disconnect") for c in (c0, c1)]
            for client in (c0, c1):
                await client.call("join", {"room": "news"})
            assert await emitter.call("publish", "news", "news", {"n": 1}) == "ok"
            assert [await rec.next("news") for rec in recs] == [{"n": 1}, {"n": 1}]
            # exclusion, bytes (a binary frame), a broadcast to everyone
            assert await emitter.call("publish", "news", "news", 2, exclude=[c0.sid]) == "ok"
            assert await recs[1].next("news") == 2
            assert await emitter.call("broadcast", "direct", "all") == "ok"
            assert [await rec.next("direct") for rec in recs] == ["all", "all"]
            # send to one socket on each node
            assert await emitter.call("send", c1.sid, "direct", "to c1") == "ok"
            assert await emitter.call("send", c0.sid, "direct", "to c0") == "ok"
            assert await recs[1].next("direct") == "to c1"
            assert await recs[0].next("direct") == "to c0"
            # join and leave a socket of the other node
            assert await emitter.call("join", c1.sid, "later") == "ok"
            await wait_for_records(c0, "later", [c1.sid])
            await c1.call("join", {"room": "later"})  # acks once the node hears the room
            assert await emitter.call("publish", "later", "news", "joined") == "ok"
            assert await recs[1].next("news") == "joined"
            assert await emitter.call("leave", c1.sid, "later") == "ok"
            await wait_for_records(c0, "later", [])
            # a batch: in order, one pipeline
            calls = [["publish", ["news", "news", n], {}] for n in range(20)]
            assert await emitter.call("batch", *calls) == "ok"
            for rec in recs:
                assert [await rec.next("news") for _ in range(20)] == list(range(20))
            # bad input: an error in the caller, nothing sent, the emitter still works
            assert (await emitter.call("publish", "news", "$gap", 1)).startswith(
                "error ValueError"
            )
            assert (await emitter.call("send", "nonode", "direct", 1)).startswith(
                "error ValueError"
            )
            assert await emitter.call("disconnect", c1.sid, 4321, "bye") == "ok"
            closed = await recs[1].next("disconnect")
            assert closed.code == 4321 and closed.reason == "bye"
            await asyncio.sleep(0.05)
            assert recs[0].pending("news") == recs[0].pending("direct") == 0


async def wait_for_records(client: Client, room: str, sids: list[str]) -> None:
    async def check() -> bool:
        return [r[0] for r in await client.call("sockets", room)] == sids

    for _ in range(250):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"room {room!r} never had {sids}")


# recovery: emitted room messages have positions in the room's history


@pytest.mark.parametrize("broker", ["redis", "redis-cluster"])
async def test_a_client_cut_during_the_emits_gets_them_on_resume(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = broker_url(broker, request)
    with node_processes(url, 2, tmp_path, None, "--recovery-window", "10") as (a, b):
        prefix = a.proc.args[a.proc.args.index("--cluster-prefix") + 1]  # type: ignore[union-attr]
        subject = Client(a.url, reconnect_delay=0.3, reconnect_delay_max=0.3)
        publisher = Client(b.url)
        await subject.connect()
        await publisher.connect()
        try:
            got: list[Any] = []
            subject.on("said", got.append)
            sid = subject.sid
            await subject.call("join", {"room": "busy"})
            async with peer("async", url, prefix=prefix, recovery_window=10) as emitter:
                calls = [["publish", ["busy", "said", n], {}] for n in range(50)]
                assert await emitter.call("batch", *calls) == "ok"
                await wait_for(lambda: len(got) == 50, timeout=10)
                assert subject._conn is not None
                subject.url = b.url  # it comes back on the other node
                subject._conn.abort()
                await wait_for(lambda: not subject.connected)
                for n in range(50, 100):
                    assert await emitter.call("publish", "busy", "said", n) == "ok"
                # a node's own broadcast after them: one history, one order
                await publisher.call("say", {"room": "busy", "text": "node"})
                await wait_for(lambda: subject.connected, timeout=10)
                await wait_for(lambda: len(got) >= 101, timeout=10)
                await asyncio.sleep(0.1)
            assert got == [*range(100), "node"]
            assert subject.recovered and subject.sid == sid
        finally:
            await subject.close()
            await publisher.close()


# lifecycle: close sends what was emitted before it; a forked child gets its own link


async def test_close_sends_what_was_emitted_before_it(tmp_path: Path) -> None:
    url = BROKERS["redis"]
    with node_processes(url, 1, tmp_path) as (node,):
        name = node.proc.args[node.proc.args.index("--cluster-prefix") + 1]  # type: ignore[union-attr]
        async with clients(node) as (client,):
            got: list[int] = []
            client.on("news", got.append)
            await client.call("join", {"room": "news"})
            emitter = AsyncEmitter(url, prefix=name)
            await emitter.connect()
            sends = [asyncio.ensure_future(emitter.publish("news", "news", n))
                     for n in range(3000)]
            await asyncio.sleep(0)  # the first pipelines are on their way
            await emitter.close()
            await asyncio.gather(*sends)  # every one went out: none failed, none hangs
            assert emitter.sent == 3000
            await wait_for(lambda: len(got) == 3000, timeout=10)
            assert got == list(range(3000))


@pytest.mark.parametrize("broker", ["up", "down"])
def test_a_script_that_never_closes_its_emitter_ends_quietly(broker: str) -> None:
    """README's emitter snippet has no close(): the interpreter's exit closes the emitter
    (its loop thread used to die mid-task: "Task was destroyed but it is pending!")."""
    url = BROKERS["redis"] if broker == "up" else f"redis://127.0.0.1:{free_port()}"
    script = (
        "from smartsocket import Emitter, EmitterError\n"
        f"emitter = Emitter({url!r}, prefix={prefix()!r}, timeout=1)\n"
        "try:\n"
        "    emitter.publish('orders:42', 'order.shipped', {'id': 42})\n"
        "    print('sent')\n"
        "except EmitterError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("sent\n" if broker == "up" else "refused\n")
    assert "Task was destroyed" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    if broker == "up":
        assert done.stderr == ""


def _publish_in_child(emitter: Emitter, sid: str) -> None:
    emitter.send(sid, "news", "from the child")
    emitter.close()


async def test_a_forked_child_makes_its_own_connection(tmp_path: Path) -> None:
    import multiprocessing

    url = BROKERS["redis"]
    with node_processes(url, 1, tmp_path) as (node,):
        name = node.proc.args[node.proc.args.index("--cluster-prefix") + 1]  # type: ignore[union-attr]
        async with clients(node) as (client,):
            rec = Recorder(client, "news")
            emitter = Emitter(url, prefix=name)
            try:
                await asyncio.to_thread(emitter.send, client.sid, "news", "from the parent")
                assert await rec.next("news") == "from the parent"
                child = multiprocessing.get_context("fork").Process(
                    target=_publish_in_child, args=(emitter, client.sid)
                )
                child.start()
                await asyncio.to_thread(child.join, 30)
                assert child.exitcode == 0
                assert await rec.next("news") == "from the child"
                await asyncio.to_thread(emitter.send, client.sid, "news", "parent again")
                assert await rec.next("news") == "parent again"
            finally:
                await asyncio.to_thread(emitter.close)


async def test_runs_of_messages_keep_their_order_around_logged_ones() -> None:
    """Plain Redis: runs of plain messages go as PUBLISH_MANY calls, logged room messages as
    LOG calls, in one pipeline; a subscriber (redis-py, independent of the emitter) sees every
    message in the order emitted."""
    import msgspec
    import redis.asyncio

    from smartsocket.cluster import messages
    from smartsocket.cluster.brokers.runs import pack_runs
    from smartsocket.cluster.brokers.scripts import ScriptCall
    from smartsocket.cluster.roomlog import parse_logged

    name = prefix()
    core = EmitterCore(prefix=name, recovery_window=5)
    items = [core.send("n1.s", "e", n) for n in range(300)]
    items.append(core.publish("room", "e", 300, None))
    items += [core.send("n1.s", "e", n) for n in range(301, 601)]
    packed = pack_runs(items)
    assert [type(item[1]) for item in packed] == [ScriptCall] * 5  # 256+44, the LOG, 256+44
    assert pack_runs(items[:1]) == items[:1]

    subscriber = redis.asyncio.Redis.from_url(BROKERS["redis"])
    pubsub = subscriber.pubsub()
    await pubsub.subscribe(f"{name}.node.n1", f"{name}.room.room")
    async with AsyncEmitter(BROKERS["redis"], prefix=name, recovery_window=5) as emitter:
        await emitter.send_items(items)
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(seen) < 601:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(seen)} messages"
        message = await pubsub.get_message(timeout=1)
        if message is None or message["type"] != "message":
            continue  # the subscribe confirmations
        data = message["data"]
        if data[:1] == b"P":
            data = parse_logged(data)[2]
        body = messages.decode_body(messages.decode_envelope(data))
        payload = body.payload  # type: ignore[union-attr]
        seen.append(msgspec.json.decode(payload)[1])
    await pubsub.aclose()
    await subscriber.aclose()
    assert seen == list(range(601))


async def test_a_publish_takes_the_rooms_policy_history() -> None:
    """The emitter has no room policies: a room whose policy sets history is given its
    ``history_size`` / ``history_ttl`` per call; the room log keeps and expires it so
    (checked on the stream and the TTL Redis was given, no waiting)."""
    import redis.asyncio

    from smartsocket.cluster.roomlog import RoomLogs

    name = prefix()
    probe = redis.asyncio.Redis.from_url(BROKERS["redis"])
    try:
        async with AsyncEmitter(BROKERS["redis"], prefix=name, recovery_window=10,
                                history_size=3, history_ttl=1000) as emitter:
            for n in range(4):
                await emitter.publish("p:a", "e", n, history_size=2, history_ttl=1)
                await emitter.publish("live:a", "e", n, history_size=0)
                await emitter.publish("r", "e", n)
            with pytest.raises(ValueError, match="history_size"):
                await emitter.publish("r", "e", 0, history_size=-1)
            core = emitter._core

        def keys(room: str) -> list[str]:
            return RoomLogs.room_keys(core.room_channel(room))

        assert await probe.xlen(keys("p:a")[1]) == 2
        assert await probe.xlen(keys("r")[1]) == 3
        assert await probe.exists(keys("live:a")[1]) == 0
        assert int(await probe.hget(keys("live:a")[0], "n")) == 4
        for key in keys("p:a"):
            assert 0 < await probe.pttl(key) <= (10 + 1) * 1000
        for key in keys("r"):
            assert (10 + 1) * 1000 < await probe.pttl(key) <= (10 + 1000) * 1000
    finally:
        left = [key async for key in probe.scan_iter(match="{" + name + "*")]
        if left:
            await probe.delete(*left)
        await probe.aclose()
