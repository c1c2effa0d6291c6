"""A broker that stops answering with its TCP connections open (a paused server, a network
black hole: the kernel takes the bytes, nothing answers, nothing ever fails) must be found
dead within the liveness period's bound (``cluster_link_timeout``: docs/cluster.md, "Broker
faults"), the link reported down, what was queued or in flight counted lost, and the link
back once the broker answers again. Throwaway servers on free ports, paused with SIGSTOP
(the shared brokers are never touched). The bounds are checked in watchdog rounds, not in
seconds, so a loaded machine's late timers cannot fail them; the waits' timeouts are only
generous upper bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from clusters import Broker, ThrowawayRedis, ThrowawayRedisCluster, paused, prefix
from smartsocket.cluster.brokers.base import BrokerAdapter
from smartsocket.cluster.brokers.nats import NatsAdapter
from smartsocket.cluster.brokers.redis import RedisAdapter
from smartsocket.cluster.brokers.redis_cluster import RedisClusterAdapter, channel_slot
from smartsocket.testing import wait_for

pytestmark = pytest.mark.asyncio

IDLE = 0.5  # the adapters' liveness period here (5 s by default)
WAIT = 30.0  # a generous upper bound on any wait (a loaded machine runs timers late)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayRedisCluster]:
    cluster = ThrowawayRedisCluster(tmp_path_factory.mktemp("rc"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


class Link:
    """An adapter started with recorders of its state changes and of what it receives."""

    def __init__(self, adapter: BrokerAdapter) -> None:
        self.adapter = adapter
        self.states: list[bool] = []
        self.got: list[bytes] = []

    async def start(self, *channels: str) -> None:
        for channel in channels:
            self.adapter.subscribe(channel)
        await self.adapter.start(lambda _, data: self.got.append(data), self.states.append)
        assert self.states == [True], self.adapter.last_error

    async def until(self, check: Callable[[], bool]) -> None:
        await wait_for(check, timeout=WAIT)

    async def works(self, channel: str, data: bytes) -> None:
        """A message published now comes back (the link is up and subscribed)."""
        await wait_for(lambda: self.adapter.publish(channel, data), timeout=WAIT)
        await self.until(lambda: data in self.got)


async def test_a_paused_redis_is_found_dead_within_two_rounds_and_the_link_comes_back(
    redis_server: ThrowawayRedis,
) -> None:
    """The watchdog pings every round and gives up at the first round that heard nothing
    since the last one: once the server stops, at most one more ping goes out (a round that
    still read the answer to the ping before), so the link is down one to two periods after
    the server last answered. (Nothing is published meanwhile: a publish's own bound, two
    periods, could end it first; see the next test.)"""
    link = Link(RedisAdapter(redis_server.url, idle_timeout=IDLE))
    channel = f"{prefix()}.live"
    await link.start(channel)
    adapter = link.adapter
    assert isinstance(adapter, RedisAdapter)
    try:
        await link.works(channel, b"before")
        await link.until(lambda: adapter.pings >= 1)  # the watchdog runs
        with paused(redis_server):
            pings = adapter.pings
            await link.until(lambda: link.states != [True])
            assert link.states == [True, False]
            assert adapter.pings - pings <= 1, "more than two rounds to find a paused server"
            assert "answered nothing for a whole round" in (adapter.last_error or "")
            assert not adapter.publish(channel, b"while down")  # refused, not queued
        await link.until(lambda: link.states == [True, False, True])
        await link.works(channel, b"after")
        assert b"while down" not in link.got
    finally:
        await adapter.close()


async def test_what_waits_on_a_paused_redis_fails_within_two_periods_and_is_counted(
    redis_server: ThrowawayRedis,
) -> None:
    """Publishes queued or in flight when the link goes down are counted lost, never dropped
    unsaid; ``execute`` (catch-up reads, scripts) and ``send_now`` (the emitter) wait for
    Redis's answer: not forever. Each gives up after two periods (TimeoutError), or sooner
    when the watchdog takes the link down (its connections closed under it)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    failures = (TimeoutError, ConnectionError, RedisConnectionError)
    link = Link(RedisAdapter(redis_server.url, idle_timeout=IDLE))
    await link.start()
    adapter = link.adapter
    try:
        with paused(redis_server):
            for i in range(50):  # not a channel we hear: Redis may run them once it resumes
                assert adapter.publish(f"{prefix()}.elsewhere", b"%d" % i)
            with pytest.raises(failures):
                await asyncio.wait_for(adapter.execute("k", "GET", "k"), WAIT)
            with pytest.raises(failures):
                await asyncio.wait_for(adapter.send_now([(f"{prefix()}.x", b"x")]), WAIT)
            await link.until(lambda: link.states == [True, False])
            assert adapter.lost == 50  # queued or in flight when the link went down
        await link.until(lambda: link.states == [True, False, True])
        assert await adapter.execute("k", "PING") in (True, b"PONG", "PONG")
    finally:
        await adapter.close()


async def test_a_paused_nats_server_is_found_dead_and_the_link_comes_back() -> None:
    """nats-py pings every period (``idle_timeout``) and, with one ping outstanding at most,
    calls the link stale at the next: one to two periods after the server last answered
    (before: a fixed 2 s interval and two outstanding, whatever the configured period). The
    adapter does not hear its own messages (no_echo): a second one sends."""
    server = Broker("nats")
    server.start()
    link = Link(NatsAdapter(server.url, idle_timeout=IDLE))
    sender = Link(NatsAdapter(server.url, idle_timeout=IDLE))
    channel = f"{prefix()}.live"

    async def works(data: bytes) -> None:
        await wait_for(lambda: sender.adapter.publish(channel, data), timeout=WAIT)
        await link.until(lambda: data in link.got)

    try:
        await link.start(channel)
        await sender.start()
        await works(b"before")
        with paused(server):
            await link.until(lambda: link.states != [True] and sender.states != [True])
            assert link.states == sender.states == [True, False]
            assert "stale" in (link.adapter.last_error or "").lower(), link.adapter.last_error
            assert not sender.adapter.publish(channel, b"while down")
        await link.until(lambda: link.states == sender.states == [True, False, True])
        await works(b"after")
    finally:
        await link.adapter.close()
        await sender.adapter.close()
        server.kill()


def on_shard(cluster: ThrowawayRedisCluster, node: ThrowawayRedis, label: str) -> str:
    """A fresh channel whose slot ``node`` serves."""
    for i in range(10_000):
        channel = f"{prefix()}.{label}{i}"
        if cluster.owner(channel_slot(channel)) is node:
            return channel
    raise AssertionError("no channel found on that shard")


async def test_a_paused_shard_primary_with_our_channels_is_found_by_the_watchdog(
    redis_cluster: ThrowawayRedisCluster,
) -> None:
    """A shard's subscription goes silent when its primary is paused: the round after the
    next takes the whole link down (degraded), and it comes back with the primary."""
    stopped, other = redis_cluster.nodes[0], redis_cluster.nodes[1]
    here, there = on_shard(redis_cluster, stopped, "a"), on_shard(redis_cluster, other, "b")
    adapter = RedisClusterAdapter(redis_cluster.url, idle_timeout=IDLE)
    link = Link(adapter)
    await link.start(here, there)
    try:
        await link.works(here, b"before")
        shard = adapter.subscriptions()
        assert set(shard) == {f"127.0.0.1:{stopped.port}", f"127.0.0.1:{other.port}"}
        watched = f"127.0.0.1:{stopped.port}"
        await link.until(lambda: adapter.pings.get(watched, 0) >= 1)
        with paused(stopped):
            pings = adapter.pings[watched]
            await link.until(lambda: link.states != [True])
            assert link.states == [True, False]
            assert watched in (adapter.last_error or ""), adapter.last_error
            assert "answered nothing for a whole round" in (adapter.last_error or "")
            assert adapter.pings[watched] - pings <= 1, "more than two rounds to find it"
        await link.until(lambda: link.states == [True, False, True])
        await link.works(here, b"after")
        await link.works(there, b"there")
    finally:
        await adapter.close()


async def test_a_publish_to_a_paused_shard_we_do_not_read_fails_within_two_periods(
    redis_cluster: ThrowawayRedisCluster,
) -> None:
    """No subscription of this node on that shard, so no watchdog hears it stop: the writer,
    blocked on the publish, gives up after two periods, the link goes down (degraded) and the
    publish is counted lost. Before, it waited forever: every later publish queued behind it,
    and the node never said it was cut off."""
    stopped, other = redis_cluster.nodes[2], redis_cluster.nodes[1]
    here, there = on_shard(redis_cluster, other, "a"), on_shard(redis_cluster, stopped, "b")
    adapter = RedisClusterAdapter(redis_cluster.url, idle_timeout=IDLE)
    link = Link(adapter)
    await link.start(here)
    try:
        await link.works(here, b"before")
        with paused(stopped):
            assert adapter.publish(there, b"to the paused shard")
            await link.until(lambda: link.states != [True])
            assert link.states == [True, False]
            assert "did not answer" in (adapter.last_error or ""), adapter.last_error
            assert adapter.lost == 1
            assert not adapter.publish(here, b"while down")
        await link.until(lambda: link.states == [True, False, True])
        await link.works(here, b"after")
        assert b"while down" not in link.got
    finally:
        await adapter.close()
