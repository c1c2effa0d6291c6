"""Broker faults, against a throwaway redis-server / nats-server on a free port (the shared
brokers are never touched): killed mid-traffic and restarted on the same port, the nodes keep
delivering locally, report themselves degraded, count what they could not publish, reconnect
and resume cross-node delivery without a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from clusters import Broker
from smartsocket import SmartSocket, Socket
from smartsocket.testing import Recorder, connected, running, wait_for


@pytest.fixture(params=["redis", "nats"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    broker = Broker(request.param)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def node(url: str, prefix: str) -> SmartSocket:
    server = SmartSocket(
        cluster_url=url, cluster_prefix=prefix, cluster_heartbeat=0.1, node_timeout=0.6,
        presence_rooms="p",
    )

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        socket.join(room)
        await server.room(room).subscribed()  # broadcasts from other nodes reach it now

    return server


def health(server: SmartSocket) -> tuple[int, dict[str, Any]]:
    url = server.url.replace("ws://", "http://") + "smartsocket/health"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.load(response)


async def test_broker_restart_mid_traffic(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "smartsocket.cluster")
    a, b = node(broker.url, "faults"), node(broker.url, "faults")
    async with (
        running(a), running(b),
        connected(a) as ca, connected(a) as ca2, connected(b) as cb,
    ):
        await wait_for(lambda: len(a.cluster_nodes()) == len(b.cluster_nodes()) == 2)
        for client in (ca, ca2, cb):
            await client.call("join", "r")
            await client.call("join", "p")
        local, remote = Recorder(ca2, "tick"), Recorder(cb, "tick")
        for i in range(20):  # traffic before the fault
            a.room("r").broadcast("tick", i)
        for i in range(20):
            assert await remote.next("tick") == i and await local.next("tick") == i

        broker.kill()
        await wait_for(lambda: a.degraded and b.degraded)
        status, body = await asyncio.to_thread(health, a)
        assert (status, body["status"], body["cluster"]["status"]) == (200, "degraded", "degraded")
        sent_while_down = 25
        for i in range(sent_while_down):  # local delivery goes on
            assert a.room("r").broadcast("tick", 100 + i) == 2
        for i in range(sent_while_down):
            assert await local.next("tick") == 100 + i
        stats = a.stats()
        assert stats["cluster"]["status"] == "degraded"
        assert stats["raw"]["clusterPublishFailed"] >= sent_while_down
        assert "lost the cluster broker" in caplog.text
        # past node_timeout each node drops the other: waited for, not slept for (a stalled
        # loop runs its liveness check late, however long the sleep)
        await wait_for(lambda: a.cluster_nodes() == [a.node_id], timeout=10)
        assert await a.socket_count() == 2

        broker.start()  # the same port: the nodes reconnect by themselves
        await wait_for(lambda: not a.degraded and not b.degraded, timeout=10)
        await wait_for(lambda: len(a.cluster_nodes()) == len(b.cluster_nodes()) == 2)
        status, body = await asyncio.to_thread(health, a)
        assert (status, body["status"]) == (200, "ok")
        # the room channels were resubscribed: cross-node delivery resumes
        a.room("r").broadcast("tick", "back")
        assert await remote.next("tick") == "back" and await local.next("tick") == "back"
        b.room("r").broadcast("tick", "and back")
        assert await local.next("tick") == "and back"
        assert await remote.next("tick") == "and back"
        await asyncio.sleep(0.05)
        assert remote.pending("tick") == 0  # what failed while down is never replayed
        assert await a.socket_count() == 3
        assert sorted(m.sid for m in await a.room("p").presence()) == sorted(
            [ca.sid, ca2.sid, cb.sid]
        )
        stats = a.stats()
        assert stats["cluster"]["reconnects"] >= 1
        assert stats["raw"]["clusterPublishFailed"] >= sent_while_down
        assert "reconnected to the cluster broker" in caplog.text


async def test_a_node_starts_while_the_broker_is_down(broker: Broker) -> None:
    broker.kill()
    server = node(broker.url, "late")
    async with running(server), connected(server) as client:
        assert server.degraded  # started anyway, serving its own clients
        rec = Recorder(client, "m")
        await client.call("join", "r")
        assert server.room("r").broadcast("m", 1) == 1
        assert await rec.next("m") == 1
        broker.start()
        await wait_for(lambda: not server.degraded, timeout=10)
        assert server.room("r").broadcast("m", 2) == 1
        assert await rec.next("m") == 2


async def test_channels_wanted_while_the_link_connects_are_subscribed(broker: Broker) -> None:
    """A room joined while the adapter is (re)connecting: not in the connect's snapshot of the
    channels, and not queued either (the link was down); it must be subscribed once up."""
    from smartsocket.cluster import create_adapter

    adapter = create_adapter(broker.url)
    real_connect = adapter._connect  # type: ignore[attr-defined]
    connecting = asyncio.Event()

    async def slow_connect() -> None:
        await real_connect()  # subscribed to what was wanted when it started
        connecting.set()
        await asyncio.sleep(0.2)  # the link is up, not yet reported up

    adapter._connect = slow_connect  # type: ignore[attr-defined]
    received: list[tuple[str, bytes]] = []
    adapter.subscribe("t.early")
    start = asyncio.ensure_future(adapter.start(lambda c, d: received.append((c, d)),
                                                lambda up: None))
    await connecting.wait()
    late = adapter.subscribe("t.late")  # during the connect
    adapter.unsubscribe("t.early")  # and one given up during it
    await start
    await asyncio.wait_for(late, 5)
    await wait_for(lambda: adapter.channels == {"t.late"})
    sender = create_adapter(broker.url)  # (NATS does not echo a connection's own messages)
    await sender.start(lambda c, d: None, lambda up: None)
    try:
        assert sender.publish("t.late", b"x") and sender.publish("t.early", b"y")
        await wait_for(lambda: received == [("t.late", b"x")])
        await asyncio.sleep(0.1)
        assert received == [("t.late", b"x")]  # unsubscribed: nothing on t.early
    finally:
        await sender.close()
        await adapter.close()


async def test_a_silent_redis_subscription_that_answers_its_ping_keeps_the_link() -> None:
    """The Redis adapter's watchdog (the same as the cluster adapter's per shard, see
    test_cluster_redis_sharded.py): its subscription silent (nothing published, as with a
    ``cluster_heartbeat`` longer than the watchdog's period), a ping answered a millisecond
    after it must count however late the next round runs (here the loop is blocked on
    purpose); before, the link went down at the first round after every ping."""
    from smartsocket.cluster.brokers.redis import RedisAdapter

    broker = Broker("redis")
    broker.start()
    idle = 1.0
    states: list[bool] = []
    pongs = 0
    adapter = RedisAdapter(broker.url, idle_timeout=idle)
    handle = adapter._handle

    def spy(message: dict[str, Any]) -> None:
        nonlocal pongs
        if message["type"] == "pong":
            pongs += 1
            if pongs == 1:  # the loop is busy: the next round runs >= idle after the answer
                time.sleep(idle)
        handle(message)

    adapter._handle = spy  # type: ignore[method-assign]
    adapter.subscribe("t.silent")
    await adapter.start(lambda c, d: None, states.append)
    try:
        assert states == [True]
        await wait_for(lambda: pongs >= 1, timeout=4 * idle + 5)
        # (the round after the answer resets the probe; on the old code it raised instead)
        await wait_for(lambda: pongs >= 2 or states != [True], timeout=2 * idle + 5)
        assert states == [True] and adapter.reconnects == 0, adapter.last_error
    finally:
        await adapter.close()
        broker.kill()


async def test_a_broker_that_stays_down_is_reported_once_not_every_retry(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """One WARNING naming the cause, then the same failure at DEBUG only (NATS logged every
    retry: its error callback overwrote the error the repeat check compares)."""
    caplog.set_level(logging.DEBUG, "smartsocket.cluster")
    broker.kill()
    server = node(broker.url, "quiet")

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot connect" in r.getMessage()]

    async with running(server):
        await wait_for(lambda: len(failures()) >= 4, timeout=20)  # backoff 50 ms doubling
    warnings = [r for r in failures() if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in failures()]
    assert "no servers available" not in warnings[0].getMessage()  # the cause: refused


async def test_a_cancel_swallowed_by_the_broker_client_still_ends_the_link_loops() -> None:
    """redis-py (8.1) returns a command's reply when a cancel lands as the reply arrives, and
    the task runs on. The adapter's loops check after each call (``honour_cancel``): a node's
    close waited forever for a broker writer that had eaten its cancel."""
    from smartsocket.cluster.brokers.base import honour_cancel

    async def swallowing_call() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "reply"
        return "late"

    async def link_loop() -> None:
        while True:
            await swallowing_call()
            honour_cancel()

    task = asyncio.ensure_future(link_loop())
    await asyncio.sleep(0)  # in the call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
