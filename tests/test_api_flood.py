"""An HTTP API batch flood across two nodes never loses a publish silently (bench/RESULTS.md,
"cross-node loss under an API batch flood"): every publish the API accepted reaches the member
on the other node (or that member gets ``$gap``), and what it could not deliver is refused with
``overloaded`` in the batch's results. Two in-process nodes on a throwaway redis-server (its own
port: the shared Redis is never paused), node A's broker queue made small (``cluster_queue``):
Redis is paused with SIGSTOP while the batch runs, so the queue cannot drain and the limit is
crossed whatever the machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
import pytest

from clusters import ThrowawayRedis, joining_app, paused
from smartsocket import Client, SmartSocket
from smartsocket.testing import running, wait_for

pytestmark = pytest.mark.asyncio

SECRET = "flood-secret-0123456789"
QUEUE = 16  # node A's outbound broker queue, in messages
TOTAL = 400  # publishes in the batch: far more than the queue and one writer batch


class Member:
    """A client in room ``r`` on one node: the ``n`` events and ``$gap`` notices it got."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.got: list[int] = []
        self.gaps = 0
        client.on("n", self.got.append)
        client.on("$gap", self._gap)

    def _gap(self, data: Any) -> None:
        self.gaps += 1


def has_all(m: Member, count: int) -> bool:
    return len(m.got) >= count or m.gaps > 0


def got_last(m: Member) -> bool:
    return m.got[-1:] == [-1]


@contextlib.asynccontextmanager
async def member(server: SmartSocket) -> AsyncIterator[Member]:
    client = Client(server.url, reconnect=False)
    await client.connect()
    try:
        await client.call("join", "r")
        yield Member(client)
    finally:
        await client.close()


async def batch(port: int, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(
        f"http://127.0.0.1:{port}/smartsocket/api/batch", data=json.dumps(body),
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 200, await response.text()
        results: list[dict[str, Any]] = (await response.json())["results"]
        return results


@pytest.mark.parametrize("recovery", [0.0, 30.0], ids=["plain", "recovery"])
async def test_a_batch_flood_reaches_the_other_node_or_is_refused(
    redis_server: ThrowawayRedis, recovery: float
) -> None:
    options = {
        "cluster_url": redis_server.url, "cluster_prefix": "fl" + uuid.uuid4().hex[:10],
        "cluster_heartbeat": 0.1, "node_timeout": 30.0, "api_secret": SECRET,
        "recovery_window": recovery, "history_size": TOTAL,
    }
    # message_timeout: what a batch waits in all for the congested link before refusing
    async with (
        running(joining_app(**options, cluster_queue=QUEUE, message_timeout=0.3)) as a,
        running(joining_app(**options)) as b,
    ):
        await wait_for(lambda: len(a.cluster_nodes()) == len(b.cluster_nodes()) == 2, 10)
        async with member(a) as here, member(b) as there:
            body = {"operations": [
                {"op": "publish", "room": "r", "event": "n", "data": n} for n in range(TOTAL)
            ]}
            with paused(redis_server):  # the queue cannot drain now
                results = await batch(a.port, body)
            accepted = [n for n, item in enumerate(results) if "result" in item]
            refused = [item["error"]["code"] for item in results if "error" in item]
            assert refused and set(refused) == {"overloaded"}  # the limit was crossed
            assert accepted == list(range(len(accepted)))  # refused from the first on
            # Every accepted publish reaches both members, in order, or the member is told.
            for m in (here, there):
                await wait_for(partial(has_all, m, len(accepted)), 30)
            # What was refused reaches nobody: a last publish, once through, closes the count.
            await batch(a.port, {"operations": [
                {"op": "publish", "room": "r", "event": "n", "data": -1}
            ]})
            for m in (here, there):
                await wait_for(partial(has_all, m, len(accepted) + 1), 30)
                await wait_for(partial(got_last, m), 30)
                assert m.gaps or m.got == [*accepted, -1], (len(m.got), len(accepted))


async def test_concurrent_batches_wait_for_the_link_instead_of_being_refused(
    redis_server: ThrowawayRedis,
) -> None:
    """Backpressure with several batches at once: a batch woken when the queue drained may
    find it full again (another batch filled it first); it waits again, within its
    ``message_timeout``, instead of refusing (the bench saw 36-50 refusals per run)."""
    options = {
        "cluster_url": redis_server.url, "cluster_prefix": "fl" + uuid.uuid4().hex[:10],
        "cluster_heartbeat": 0.1, "node_timeout": 30.0, "api_secret": SECRET,
    }
    async with (
        running(joining_app(**options, cluster_queue=QUEUE, message_timeout=60.0)) as a,
        running(joining_app(**options)) as b,
    ):
        await wait_for(lambda: len(a.cluster_nodes()) == len(b.cluster_nodes()) == 2, 10)
        async with member(b) as there:
            bodies = [{"operations": [
                {"op": "publish", "room": "r", "event": "n", "data": k * TOTAL + n}
                for n in range(TOTAL)
            ]} for k in range(4)]
            answers = await asyncio.gather(*(batch(a.port, body) for body in bodies))
            assert all(results == [{"result": {}}] * TOTAL for results in answers)
            await wait_for(partial(has_all, there, 4 * TOTAL), 60)
            assert there.gaps == 0 and sorted(there.got) == list(range(4 * TOTAL))
