"""Redis closes a subscriber that reads too slowly (``client-output-buffer-limit pubsub``): the
node notices, reconnects, and its members get ``$gap`` for their rooms (with or without
recovery), never a silent hole. Two node processes on a throwaway redis-server with a small
pub/sub output limit; node B is paused with SIGSTOP while node A's API publishes until Redis
has dropped B's subscription."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from clusters import Broker, _binary, answers, node_processes
from smartsocket import Client
from smartsocket.testing import wait_for

pytestmark = pytest.mark.asyncio

SECRET = "slow-subscriber-secret-0123"
BATCH = 1000
PAYLOAD = "x" * 200


class LimitedRedis(Broker):
    """A throwaway redis-server that drops a pub/sub client past 256 KiB of output."""

    def command(self) -> list[str]:
        return [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no",
                "--client-output-buffer-limit", "pubsub 262144 131072 1"]


@pytest.fixture
def limited() -> Iterator[LimitedRedis]:
    broker = LimitedRedis("redis")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def publish_batch(http: str) -> int:
    """A batch of publishes to room ``r``; how many were accepted."""
    body = json.dumps({"operations": [
        {"op": "publish", "room": "r", "event": "said", "data": PAYLOAD} for _ in range(BATCH)
    ]}).encode()
    request = urllib.request.Request(
        http + "/smartsocket/api/batch", data=body, method="POST",
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        results: list[dict[str, Any]] = json.load(response)["results"]
    return sum(1 for item in results if "result" in item)


def subscribers(port: int) -> int:
    with contextlib.closing(redis.Redis(port=port, socket_timeout=10)) as r:
        return len(r.client_list(_type="pubsub"))


class Member:
    def __init__(self, client: Client) -> None:
        self.got = 0
        self.gaps = 0
        client.on("said", self._said)
        client.on("$gap", self._gap)

    def _said(self, data: Any) -> None:
        self.got += 1

    def _gap(self, data: Any) -> None:
        self.gaps += 1


def settled(m: Member, accepted: int) -> bool:
    return m.got >= accepted or m.gaps > 0


@pytest.mark.parametrize("recovery", ["0", "30"], ids=["plain", "recovery"])
async def test_a_subscriber_redis_dropped_gets_gap_not_a_silent_hole(
    limited: LimitedRedis, tmp_path: Path, recovery: str
) -> None:
    assert answers(limited.port)
    extra = ("--api-secret", SECRET, "--recovery-window", recovery, "--history-size", "10",
             "--rate-limit-messages", "0")
    with node_processes(limited.url, 2, tmp_path, None, *extra) as (a, b):
        clients = [Client(node.url, reconnect=False) for node in (a, b)]
        try:
            for client in clients:
                await client.connect()
                await client.call("join", {"room": "r"})
            members = [Member(client) for client in clients]
            before = subscribers(limited.port)
            os.kill(b.proc.pid, signal.SIGSTOP)
            accepted = 0
            try:
                for _ in range(200):  # bounded: ~40 MB at most; Redis drops B far sooner
                    accepted += await asyncio.to_thread(publish_batch, a.http)
                    if subscribers(limited.port) < before:
                        break
                else:
                    pytest.fail("Redis never dropped the paused node's subscription")
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            here, there = members
            await wait_for(partial(settled, here, accepted), 60)
            await wait_for(partial(settled, there, accepted), 60)
            assert there.gaps, (there.got, accepted)  # B missed some: it must have been told
            assert here.got == accepted or here.gaps
        finally:
            for client in clients:
                await client.close()
