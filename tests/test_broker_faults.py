"""Recovery in a cluster when Redis fails (protocol.md 8, "Gaps"; cluster/catchup.py,
cluster/roomlog.py): two node processes with recovery on a throwaway redis-server (its own
port and directory; the shared Redis is never touched) that the tests kill, restart, restore
from an older snapshot, pause and cut; real Python clients. A client gets every room message
once, in order, or a ``$gap`` notice for the room: never a silent loss."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from clusters import Node, ThrowawayRedis, node_processes
from smartsocket import Client
from smartsocket.testing import wait_for

pytestmark = pytest.mark.asyncio

FAST = {"reconnect_delay": 0.05, "reconnect_delay_max": 0.1}


def nodes(redis_server: ThrowawayRedis, logs: Path) -> Any:
    return node_processes(redis_server.url, 2, logs, None, "--recovery-window", "10")


def health(node: Node) -> dict[str, Any]:
    with urllib.request.urlopen(node.http + "/smartsocket/health", timeout=5) as response:
        body: dict[str, Any] = json.load(response)["cluster"]
        return body


async def until_health(node: Node, check: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + 15
    while not check(await asyncio.to_thread(health, node)):
        assert time.monotonic() < deadline, f"node health: {health(node)}"
        await asyncio.sleep(0.02)


def degraded(body: dict[str, Any]) -> bool:
    return body["status"] == "degraded"


def linked(body: dict[str, Any]) -> bool:
    """Back on the broker and caught up: a publish now cannot overtake the node's reads of
    its rooms' histories (a first publish after a restore starts a new epoch, dropping the
    old history a late read would have delivered)."""
    return body["status"] == "ok" and body["reconnects"] >= 1 and body["catchingUp"] == 0


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    c = Client(url, **FAST)
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


class Member:
    """A client in room ``r``, recording what it gets."""

    def __init__(self, c: Client) -> None:
        self.client = c
        self.got: list[Any] = []
        self.gaps: list[Any] = []
        self.connects: list[bool] = []
        c.on("said", self.got.append)
        c.on("$gap", self.gaps.append)
        c.on("connect", self.connects.append)

    async def join(self) -> None:
        await self.client.call("join", {"room": "r"})


async def say(publisher: Client, texts: Iterable[int]) -> None:
    for text in texts:  # one at a time: each is logged before the next
        await publisher.call("say", {"room": "r", "text": text})


async def test_a_restore_from_an_older_snapshot_starts_new_epochs(
    redis_server: ThrowawayRedis, tmp_path: Path
) -> None:
    """Offsets given again after the restore must not look like duplicates, and members that
    missed messages the restore lost are told (item 5). Node B is cut off before the snapshot
    and comes back after the restore: its history after B's position looks whole, but the
    messages after the snapshot are gone."""
    with nodes(redis_server, tmp_path) as (a, b):
        async with client(a.url) as ca, client(b.url) as cb, client(a.url) as publisher:
            near, far = Member(ca), Member(cb)
            for member in (near, far):
                await member.join()
            await say(publisher, range(20))
            await wait_for(lambda: len(near.got) == len(far.got) == 20, timeout=10)
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                with contextlib.closing(redis_server.client()) as r:
                    r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                await until_health(a, linked)
                await say(publisher, range(20, 40))
                await wait_for(lambda: len(near.got) == 40, timeout=10)  # all logged
                redis_server.snapshot("old.rdb")
                await say(publisher, range(40, 60))
                await wait_for(lambda: len(near.got) == 60, timeout=10)
                redis_server.kill()
                await until_health(a, degraded)
                redis_server.restore("old.rdb")  # the room's counter goes back from 60 to 40
                redis_server.start()
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            await until_health(a, lambda body: body["status"] == "ok" and body["catchingUp"] == 0)
            await until_health(b, linked)
            await say(publisher, range(60, 100))
            await wait_for(lambda: len(near.got) == 100 and far.got[-1:] == [99], timeout=10)
            assert near.got == list(range(100))
            # B's member gets what the restored history holds, then is told of the rest.
            assert far.got == list(range(40)) + list(range(60, 100))
            assert near.gaps == far.gaps == [{"room": "r"}]


async def test_a_session_resumes_with_positions_of_the_epoch_after_a_restart(
    redis_server: ThrowawayRedis, tmp_path: Path
) -> None:
    """A session joined before Redis restarted and got messages after it: it resumes, from
    those positions, on the other node (item 6)."""
    with nodes(redis_server, tmp_path) as (a, b):
        async with client(a.url) as watcher, client(b.url) as publisher:
            heard = Member(watcher)
            await heard.join()  # node A hears the room: its joins get a position
            await say(publisher, range(5))
            await wait_for(lambda: len(heard.got) == 5, timeout=10)  # an ack is not delivery
            async with client(a.url) as c:
                subject = Member(c)
                await subject.join()
                await say(publisher, range(5, 10))
                await wait_for(lambda: len(subject.got) == 5, timeout=10)

                redis_server.kill()
                await until_health(a, degraded)
                redis_server.start()  # empty: a new epoch
                await until_health(a, linked)
                await until_health(b, linked)
                await say(publisher, range(10, 20))
                await wait_for(lambda: len(subject.got) == 15, timeout=10)
                sid = c.sid
                c.url = b.url
                assert c._conn is not None
                c._conn.abort()  # dropped: it comes back on node B
                await wait_for(lambda: subject.connects and c.connected, timeout=10)
                assert c.recovered and c.sid == sid
                await say(publisher, range(20, 25))
                await wait_for(lambda: len(subject.got) == 20, timeout=10)
                assert subject.got == list(range(5, 25))


async def test_a_message_in_flight_when_redis_dies_reaches_the_senders_node(
    redis_server: ThrowawayRedis, tmp_path: Path
) -> None:
    """The ack counts the members on the sender's node: they get the message although Redis
    died with it (item 7); members on the other node are told (item 8), as for messages sent
    while Redis was down."""
    with nodes(redis_server, tmp_path) as (a, b):
        async with (
            client(a.url) as c1, client(a.url) as c2, client(b.url) as c3,
            client(a.url) as sender,
        ):
            near, far = [Member(c1), Member(c2)], Member(c3)
            for member in (*near, far):
                await member.join()
            await say(sender, [0])
            await wait_for(lambda: all(m.got == [0] for m in (*near, far)), timeout=10)

            redis_server.signal(signal.SIGSTOP)  # the script call goes out, no answer comes
            assert await sender.call("say", {"room": "r", "text": 1}) == 2
            redis_server.kill()
            await wait_for(lambda: all(m.got == [0, 1] for m in near), timeout=10)
            await until_health(a, degraded)
            assert await sender.call("say", {"room": "r", "text": 2}) == 2  # while down
            await wait_for(lambda: all(m.got == [0, 1, 2] for m in near), timeout=10)

            redis_server.start()
            await until_health(a, linked)
            await until_health(b, linked)
            await wait_for(lambda: far.gaps != [], timeout=10)
            assert {"room": "r"} in far.gaps
            await say(sender, [3])
            await wait_for(lambda: far.got == [0, 3], timeout=10)
            await wait_for(lambda: all(m.got == [0, 1, 2, 3] for m in near), timeout=10)


async def test_a_node_cut_off_from_redis_catches_up_from_the_history(
    redis_server: ThrowawayRedis, tmp_path: Path
) -> None:
    """Node B loses its link while node A goes on publishing: B's members get what they
    missed from the room's history, in order, once, without a notice (item 8)."""
    with nodes(redis_server, tmp_path) as (a, b):
        async with client(a.url) as publisher, client(b.url) as c:
            member = Member(c)
            await member.join()
            await say(publisher, range(5))
            await wait_for(lambda: len(member.got) == 5, timeout=10)
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                with contextlib.closing(redis_server.client()) as r:
                    r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # A's and B's
                await until_health(a, linked)  # A is back; B (stopped) is not
                await say(publisher, range(5, 25))
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            await wait_for(lambda: len(member.got) == 25, timeout=10)
            await say(publisher, [25])
            await wait_for(lambda: len(member.got) == 26, timeout=10)
            assert member.got == list(range(26))
            assert member.gaps == []


async def test_a_paused_redis_is_found_dead_and_members_catch_up_or_are_told(
    redis_server: ThrowawayRedis, tmp_path: Path
) -> None:
    """Redis paused (TCP open, nothing answers; a network black hole looks the same): both
    nodes find it within their watchdog's bound (here ``cluster_link_timeout`` 0.5 s) and
    report degraded; what A sends meanwhile reaches its own members and is counted failed
    (never logged: Redis does not answer); once Redis answers again both relink, and B's
    member, who missed it, gets a ``$gap`` notice, never a silent loss."""
    with node_processes(redis_server.url, 2, tmp_path, None, "--recovery-window", "10",
                        "--cluster-link-timeout", "0.5") as (a, b):
        async with client(a.url) as ca, client(b.url) as cb, client(a.url) as sender:
            near, far = Member(ca), Member(cb)
            for member in (near, far):
                await member.join()
            await say(sender, [0])
            await wait_for(lambda: near.got == far.got == [0], timeout=10)
            failed = health(a)["publishFailed"]
            redis_server.signal(signal.SIGSTOP)
            try:
                await until_health(a, degraded)
                await until_health(b, degraded)
                for text in (1, 2):  # its own members get them at once
                    assert await sender.call("say", {"room": "r", "text": text}) == 1
                await wait_for(lambda: near.got == [0, 1, 2], timeout=10)
                assert health(a)["publishFailed"] > failed  # counted, not silently dropped
            finally:
                redis_server.signal(signal.SIGCONT)
            await until_health(a, linked)
            await until_health(b, linked)
            await wait_for(lambda: far.gaps != [], timeout=10)
            # (told once or twice: by its node's catch-up, and when A says what it lost)
            assert set(map(str, far.gaps)) == {str({"room": "r"})} and far.got == [0]
            await say(sender, [3])
            await wait_for(lambda: far.got == [0, 3] and near.got == [0, 1, 2, 3], timeout=10)
