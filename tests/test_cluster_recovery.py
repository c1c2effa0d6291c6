"""Recovery in a cluster (protocol.md section 8, recovery/redis.py, cluster/roomlog.py): history
and sessions in Redis, so a client resumes on another node. Node processes on the real Redis
(6379) and on the throwaway Redis Cluster (scripts/redis-cluster, 7101-7103)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from clusters import node_processes
from smartsocket import Client, SmartSocket, Socket
from smartsocket.cluster import messages
from smartsocket.protocol.envelope import encode_event
from smartsocket.testing import connected, running, wait_for

pytestmark = pytest.mark.asyncio

REDIS = {
    "redis": "redis://127.0.0.1:6379/0",
    "redis-cluster": "redis://127.0.0.1:7101?cluster=1",
}
FAST = {"reconnect_delay": 0.05, "reconnect_delay_max": 0.1}


def nodes(url: str, logs: Path, count: int, *extra: str) -> Any:
    return node_processes(url, count, logs, None, "--recovery-window", "10", *extra)


@contextlib.asynccontextmanager
async def client(url: str, **options: Any) -> AsyncIterator[Client]:
    c = Client(url, **{**FAST, **options})
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


def cut(c: Client, to: str | None = None) -> None:
    """Drop the connection (no close frame); the client reconnects to ``to`` next."""
    if to is not None:
        c.url = to
    assert c._conn is not None
    c._conn.abort()


@pytest.fixture(params=sorted(REDIS))
def broker(request: pytest.FixtureRequest) -> str:
    return REDIS[request.param]


async def test_busy_room_resumes_on_another_node_exactly_once_in_order(
    broker: str, tmp_path: Path
) -> None:
    with nodes(broker, tmp_path, 2, "--history-size", "1000") as (a, b):
        async with client(a.url) as subject, client(b.url) as publisher:
            got: list[int] = []
            subject.on("said", got.append)
            sid = subject.sid
            await subject.call("join", {"room": "busy"})
            await publisher.call("join", {"room": "other"})

            async def publish() -> None:
                for n in range(400):  # broadcast from node B, logged by Redis
                    await publisher.call("say", {"room": "busy", "text": n})

            task = asyncio.ensure_future(publish())
            await wait_for(lambda: len(got) >= 100, timeout=20)
            cut(subject, to=b.url)  # the client comes back on the other node
            await wait_for(lambda: len(got) >= 250, timeout=20)
            cut(subject, to=a.url)  # and back again
            await asyncio.wait_for(task, 30)
            await wait_for(lambda: len(got) >= 400, timeout=20)
            await asyncio.sleep(0.1)
            assert got == list(range(400))
            assert subject.recovered and subject.sid == sid


async def test_direct_messages_reach_a_session_held_or_moved(
    broker: str, tmp_path: Path
) -> None:
    with nodes(broker, tmp_path, 2) as (a, b):
        async with client(a.url, reconnect_delay=0.5, reconnect_delay_max=0.5) as subject, \
                client(a.url) as on_a, client(b.url) as on_b:
            got: list[Any] = []
            subject.on("note", got.append)
            sid = subject.sid
            cut(subject, to=b.url)
            await wait_for(lambda: not subject.connected)
            await asyncio.sleep(0.1)  # held by node A now
            assert await on_a.call("send_to", {"sid": sid, "event": "note", "data": 1})
            assert await on_b.call("send_to", {"sid": sid, "event": "note", "data": 2})
            await wait_for(lambda: subject.connected, timeout=10)
            await wait_for(lambda: got == [1, 2], timeout=5)
            assert subject.recovered and subject.sid == sid
            # Resumed on B with A's id: sends through A are forwarded to B.
            assert await on_a.call("send_to", {"sid": sid, "event": "note", "data": 3})
            assert await on_b.call("send_to", {"sid": sid, "event": "note", "data": 4})
            await wait_for(lambda: sorted(got) == [1, 2, 3, 4], timeout=5)
            assert await on_a.call("join_remote", {"sid": sid, "room": "far"})
            records = await on_a.call("sockets", "far")
            assert [r[0] for r in records] == [sid]


async def test_a_node_shut_down_leaves_its_sessions_to_the_others(
    broker: str, tmp_path: Path
) -> None:
    with nodes(broker, tmp_path, 2) as (a, b):
        async with client(a.url, max_reconnect_attempts=None) as subject, \
                client(b.url) as publisher:
            got: list[int] = []
            subject.on("said", got.append)
            sid = subject.sid
            await subject.call("join", {"room": "r"})
            await publisher.call("join", {"room": "r2"})
            await publisher.call("say", {"room": "r", "text": 0})
            await wait_for(lambda: got == [0])
            subject.url = b.url
            a.stop()  # SIGTERM: a graceful shutdown (close 1001) holds sessions in Redis
            await wait_for(lambda: not subject.connected, timeout=10)
            for n in range(1, 6):
                await publisher.call("say", {"room": "r", "text": n})
            await wait_for(lambda: subject.connected, timeout=10)
            await wait_for(lambda: got == list(range(6)), timeout=5)
            assert subject.recovered and subject.sid == sid


async def test_trimmed_history_is_not_recovered(broker: str, tmp_path: Path) -> None:
    with nodes(broker, tmp_path, 2, "--history-size", "3") as (a, b):
        async with client(a.url, reconnect_delay=0.5, reconnect_delay_max=0.5) as subject, \
                client(b.url) as publisher:
            sid = subject.sid
            await subject.call("join", {"room": "r"})
            cut(subject, to=b.url)
            await wait_for(lambda: not subject.connected)
            for n in range(6):  # more than history_size
                await publisher.call("say", {"room": "r", "text": n})
            await wait_for(lambda: subject.connected, timeout=10)
            assert not subject.recovered and subject.sid != sid


async def test_finished_call_is_answered_from_the_record_on_another_node(
    broker: str, tmp_path: Path
) -> None:
    with nodes(broker, tmp_path, 2) as (a, b):
        async with client(a.url, reconnect_delay=0.6, reconnect_delay_max=0.6) as subject:
            call = asyncio.ensure_future(subject.call("slow_count", 0.2, timeout=10))
            await asyncio.sleep(0.05)  # running on A
            cut(subject, to=b.url)  # A finishes it while the session is held: recorded
            result = await asyncio.wait_for(call, 10)
            assert subject.recovered
            assert result == 1  # B answered from the record instead of running it again
            assert await subject.call("slow_count", 0) == 1  # B's own count: it never ran there


async def test_a_wrong_token_leaves_the_held_session_alone(broker: str, tmp_path: Path) -> None:
    import json

    import websockets

    with nodes(broker, tmp_path, 2) as (a, b):
        async with client(a.url, reconnect_delay=1.0, reconnect_delay_max=1.0) as subject:
            sid = subject.sid
            cut(subject, to=b.url)
            await wait_for(lambda: not subject.connected)
            await asyncio.sleep(0.1)
            async with websockets.connect(b.url + "?resume=1") as forger:
                await forger.send(json.dumps(
                    ["$resume", {"sid": sid, "token": "stolen?", "offsets": {}, "seq": 0}]
                ))
                welcome = json.loads(await asyncio.wait_for(forger.recv(), 5))
                assert welcome[0] == "$welcome" and welcome[1]["recovered"] is False
            await wait_for(lambda: subject.connected, timeout=10)
            assert subject.recovered and subject.sid == sid


async def test_scripts_flushed_from_redis_are_sent_again(broker: str, tmp_path: Path) -> None:
    import redis

    with nodes(broker, tmp_path, 2) as (a, b):
        async with client(a.url) as subject, client(b.url) as publisher:
            got: list[int] = []
            subject.on("said", got.append)
            await subject.call("join", {"room": "r"})
            await publisher.call("join", {"room": "r2"})
            for port in (7101, 7102, 7103) if "cluster=1" in broker else (6379,):
                redis.Redis(port=port).script_flush()  # as after a Redis restart
            for n in range(3):
                await publisher.call("say", {"room": "r", "text": n})
            await wait_for(lambda: got == [0, 1, 2], timeout=5)


async def test_a_room_joined_again_gets_no_gap_for_what_its_old_subscription_left() -> None:
    """A node that unsubscribed from a room may still get what Redis had queued for that
    subscription. When a member joins again, the hole after such a message is not one of the
    new subscription: no $gap (it would reset the client's dedupe state for the room, and a
    resume replaying the history then delivered messages twice)."""
    server = SmartSocket(
        cluster_url=REDIS["redis"], cluster_prefix="t" + uuid.uuid4().hex[:10],
        recovery_window=10,
    )

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        socket.join(room)
        await server.room(room).subscribed()

    @server.on("leave")
    def leave(socket: Socket, room: str) -> None:
        socket.leave(room)

    probe = redis.asyncio.Redis.from_url(REDIS["redis"])
    async with running(server), connected(server) as c:
        node = server._cluster
        assert node.sync is not None
        channel = node.room_channel("r")
        got: list[int] = []
        gaps: list[Any] = []
        c.on("said", got.append)
        c.on("$gap", gaps.append)
        await c.call("join", "r")
        server.room("r").broadcast("said", 1)
        await wait_for(lambda: got == [1])
        epoch, offset = node.sync.positions["r"]
        await c.call("leave", "r")

        async def unsubscribed() -> bool:
            return dict(await probe.pubsub_numsub(channel)).get(channel.encode()) == 0

        for _ in range(1000):  # Redis took the UNSUBSCRIBE: nothing more reaches the node
            if await unsubscribed():
                break
            await asyncio.sleep(0.01)
        assert await unsubscribed()
        server.room("r").broadcast("said", 2)  # logged at offset + 1, heard by no node
        server.room("r").broadcast("said", 3)
        # What the old subscription had queued arrives now: the copy of 2.
        copy = messages.Broadcast("r", encode_event("said", 2), False)
        body = messages.encode(node.node_id, copy)
        node._receive(channel, b"P%s %d %s" % (epoch.encode(), offset + 1, body))
        await c.call("join", "r")
        server.room("r").broadcast("said", 4)  # offset + 3: the new subscription's first
        await wait_for(lambda: got[-1:] == [4])
        assert gaps == []
        assert got == [1, 4]
    await probe.aclose()
