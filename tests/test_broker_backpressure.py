"""A burst faster than the broker link takes it is never lost silently: two nodes on the real
Redis, node A's outbound queue made small. A broadcast while the queue is full is refused as a
whole (``overloaded``: delivered nowhere, so no node has it and another not), and the HTTP
API's batches wait for the queue to drain (backpressure) instead of losing publishes."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from clusters import BROKERS, joining_app, require_broker
from smartsocket import Client, SmartSocket
from smartsocket.cluster.brokers import BrokerAdapter
from smartsocket.cluster.brokers.base import URGENT_ROOM
from smartsocket.protocol.codes import ErrorCode
from smartsocket.security import LimitExceeded
from smartsocket.testing import Recorder, running, wait_for

SECRET = "backpressure-secret-0123"
QUEUE = 20  # node A's outbound queue, in messages


@contextlib.asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[SmartSocket, SmartSocket]]:
    url = BROKERS["redis"]
    require_broker(url)
    options = {
        "cluster_url": url, "cluster_prefix": "bp" + uuid.uuid4().hex[:10],
        "cluster_heartbeat": 0.05, "node_timeout": 0.4, "api_secret": SECRET,
    }
    async with running(joining_app(**options)) as a, running(joining_app(**options)) as b:
        await wait_for(lambda: len(a.cluster_nodes()) == len(b.cluster_nodes()) == 2, 10)
        adapter = a._cluster.adapter
        assert isinstance(adapter, BrokerAdapter)
        adapter.max_queue = QUEUE
        yield a, b


@contextlib.asynccontextmanager
async def member(server: SmartSocket, room: str) -> AsyncIterator[Recorder]:
    client = Client(server.url, reconnect=False)
    await client.connect()
    try:
        rec = Recorder(client, "n")
        await client.call("join", room)
        yield rec
    finally:
        await client.close()


async def test_a_broadcast_into_a_full_queue_is_refused_everywhere_not_lost() -> None:
    async with two_nodes() as (a, b), member(a, "r") as here, member(b, "r") as there:
        sent = refused = 0
        for n in range(100):  # one synchronous burst: the link's writer cannot run meanwhile
            try:
                a.room("r").broadcast("n", n)
                sent += 1
            except LimitExceeded as exc:
                assert exc.code == ErrorCode.OVERLOADED and exc.retry_after
                refused += 1
        assert (sent, refused) == (QUEUE, 100 - QUEUE)
        # what was accepted reaches both nodes, in order; what was refused reaches neither
        for rec in (here, there):
            assert [await rec.next("n") for _ in range(QUEUE)] == list(range(QUEUE))
        await wait_for(lambda: not a._cluster.congested)
        a.room("r").broadcast("n", "after")  # the link took the burst: broadcasts go again
        for rec in (here, there):
            assert await rec.next("n") == "after"
            assert rec.pending("n") == 0


async def test_api_batches_wait_for_the_broker_instead_of_losing_publishes() -> None:
    total = 10 * QUEUE
    async with (
        two_nodes() as (a, b), member(a, "r") as here, member(b, "r") as there,
        aiohttp.ClientSession() as http,
    ):
        body = {"operations": [
            {"op": "publish", "room": "r", "event": "n", "data": n} for n in range(total)
        ]}
        async with http.post(
            f"http://127.0.0.1:{a.port}/smartsocket/api/batch", data=json.dumps(body),
            headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
        ) as response:
            assert response.status == 200
            results = (await response.json())["results"]
        assert results == [{"result": {}}] * total
        for rec in (here, there):
            assert [await rec.next("n") for _ in range(total)] == list(range(total))


@pytest.mark.parametrize("timeout", [0.0, 5.0])
async def test_wait_for_broker_is_immediate_when_there_is_room(timeout: float) -> None:
    async with running() as alone:  # one node: nothing to wait for
        assert await alone.wait_for_broker(timeout)
    async with two_nodes() as (a, _):
        assert await a.wait_for_broker(timeout)


async def test_heartbeats_still_go_out_while_the_queue_is_full() -> None:
    """A burst of broadcasts must not make the other nodes drop this one as silent: control
    messages take a little room past the full queue (URGENT_ROOM), broadcasts do not."""
    async with two_nodes() as (a, _):
        node = a._cluster
        while True:  # one synchronous burst: the link's writer cannot run meanwhile
            try:
                a.room("r").broadcast("n", 0)
            except LimitExceeded:
                break
        assert node.congested
        overflowed = node.overflowed
        assert node.publish(node.all_channel, node.liveness.heartbeat())
        assert node.overflowed == overflowed
        with pytest.raises(LimitExceeded):
            a.room("r").broadcast("n", 1)
        # the urgent room is bounded too: past it, even a heartbeat is refused (and counted)
        for _ in range(URGENT_ROOM):
            node.publish(node.all_channel, node.liveness.heartbeat())
        assert not node.publish(node.all_channel, node.liveness.heartbeat())
        assert node.overflowed > overflowed


async def test_a_burst_in_the_queue_goes_out_as_the_same_messages_in_order() -> None:
    """A node's queued burst goes to Redis in runs (PUBLISH_MANY, brokers/runs.py): an
    independent redis-py subscriber sees every message, byte for byte (any byte value, any
    size: the MessagePack string headers of 1, 2 and 4 bytes), on its channel, in order."""
    import redis.asyncio

    from smartsocket.cluster.brokers.redis import RedisAdapter

    url = BROKERS["redis"]
    require_broker(url)
    name = "bp" + uuid.uuid4().hex[:10]
    channels = [f"{name}.a", f"{name}.b"]
    sizes = [0, 1, 30, 31, 254, 255, 65534, 70_000]  # + the number: the header's limits
    sent = [
        (channels[(n // 7) % 2], bytes([n % 256]) * sizes[n % 6] + b"%d" % n)
        for n in range(1300)
    ]
    sent[100:102] = [(channels[0], b"\xff" * sizes[6] + b"a"), (channels[1], b"\x00" * sizes[7])]
    subscriber = redis.asyncio.Redis.from_url(url)
    pubsub = subscriber.pubsub()
    await pubsub.subscribe(*channels)
    for _ in channels:  # confirmed: Redis sends it what is published from now on
        message = await pubsub.get_message(timeout=10)
        assert message is not None and message["type"] == "subscribe"
    adapter = RedisAdapter(url)
    await adapter.start(lambda channel, data: None, lambda connected: None)
    try:
        assert adapter.connected
        for channel, data in sent:  # one synchronous burst: the writer takes it in batches
            assert adapter.publish(channel, data)
        seen: list[tuple[str, bytes]] = []
        while len(seen) < len(sent):
            message = await pubsub.get_message(timeout=10)
            assert message is not None, len(seen)
            if message["type"] == "message":
                seen.append((message["channel"].decode(), message["data"]))
        assert seen == sent
        assert adapter.lost == 0
    finally:
        await adapter.close()
        await pubsub.aclose()
        await subscriber.aclose()



def test_a_run_ends_at_its_message_or_byte_limit() -> None:
    """PUBLISH_MANY runs hold at most ``messages`` messages and end once they hold ``size``
    bytes; a script call ends a run; a run of one stays a plain message."""
    import msgspec

    from smartsocket.cluster.brokers.runs import PUBLISH_MANY, RUN, RUN_BYTES, pack_runs
    from smartsocket.cluster.brokers.scripts import ScriptCall

    logged = ScriptCall(PUBLISH_MANY, [], [b""])  # stands in for a logged message's call

    def runs(packed: list[Any]) -> list[Any]:
        """Each item as the messages it carries, or the stand-in call itself."""
        out: list[Any] = []
        for _, data in packed:
            if type(data) is bytes:
                out.append([data.decode()])
            elif data is logged:
                out.append(data)
            else:
                assert data.script is PUBLISH_MANY
                out.append(msgspec.msgpack.decode(data.args[0])[1::2])
        return out

    small = [("c", b"%d" % n) for n in range(10)]
    assert runs(pack_runs(small, messages=4)) == [
        ["0", "1", "2", "3"], ["4", "5", "6", "7"], ["8", "9"],
    ]
    assert runs(pack_runs(small[:9], messages=4)) == [
        ["0", "1", "2", "3"], ["4", "5", "6", "7"], ["8"],
    ]
    big = [("c", bytes([65 + n]) * 400) for n in range(5)]
    assert [len(run) for run in runs(pack_runs(big, size=1000))] == [3, 2]  # 1,200 >= 1,000
    assert [len(run) for run in runs(pack_runs(big, size=1200))] == [3, 2]
    assert [len(run) for run in runs(pack_runs(big, size=1201))] == [4, 1]
    assert runs(pack_runs([small[0], small[1], ("c", logged), small[2]])) == [
        ["0", "1"], logged, ["2"],
    ]
    assert pack_runs(small[:1]) == small[:1]
    assert (RUN, RUN_BYTES) == (256, 1 << 20)  # the defaults RedisAdapter._send uses
