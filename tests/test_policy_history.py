"""Room policies' ``history_size`` / ``history_ttl`` (docs/auth.md) applied by recovery, at the
protocol level: on one node (the memory store, its clock injected) and in a cluster on the
real Redis (two nodes in this process, a cluster prefix of their own), where every node gives
the room log the room's values, whichever node publishes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio

from smartsocket import SmartSocket, Socket
from smartsocket.testing import running, wait_for
from test_recovery import Peer, resume

pytestmark = pytest.mark.asyncio

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def app(**options: Any) -> SmartSocket:
    options.setdefault("recovery_window", 60.0)
    server = SmartSocket(history_size=10, **options)
    server.policy("p:*", history_size=2)
    server.policy("live:*", history_size=0)
    server.policy("short:*", history_ttl=1)

    @server.on("join")
    async def join(socket: Socket, room: str) -> str:
        socket.join(room)
        await server.room(room).subscribed()
        return room

    return server


async def joined(server: SmartSocket, *rooms: str) -> Peer:
    peer = await Peer.open(server)
    await peer.welcomed()
    for n, room in enumerate(rooms, 1):
        await peer.send("join", room, n)
        assert await peer.recv() == [n, room]
    return peer


async def dropped(server: SmartSocket, peer: Peer) -> None:
    peer.drop()
    await wait_for(lambda: peer.welcome["sid"] not in server.sockets)


async def replay(peer: Peer) -> list[Any]:
    """What the resumed peer gets until it goes quiet: (event, data) pairs."""
    got = []
    while True:
        try:
            message = await peer.recv(0.3)
        except TimeoutError:
            return got
        got.append((message[0], message[1]))


async def test_one_node_keeps_a_policy_rooms_last_n() -> None:
    async with running(app()) as server:
        peer = await joined(server, "p:a", "plain")
        await dropped(server, peer)
        for n in range(2):  # the policy's 2
            server.room("p:a").broadcast("m", n)
        for n in range(5):  # more than 2: the server's 10 apply to this room
            server.room("plain").broadcast("m", n)
        again = await resume(server, peer, {}, 0)
        assert again.welcome["recovered"] is True
        assert await replay(again) == [("m", 0), ("m", 1)] + [("m", n) for n in range(5)]

        await dropped(server, again)
        for n in range(3):  # one more than the policy keeps
            server.room("p:a").broadcast("m", n)
        last = await resume(server, again, {}, 0)
        assert last.welcome["recovered"] is False
        await last.ws.close()


async def test_one_node_room_without_history_resumes_with_a_gap() -> None:
    async with running(app()) as server:
        peer = await joined(server, "live:x", "plain")
        server.room("live:x").broadcast("m", "seen")
        seen = await peer.recv()
        assert seen[3][0] == "live:x"  # numbered like any room message
        await dropped(server, peer)
        server.room("live:x").broadcast("m", "lost")
        server.room("plain").broadcast("m", "kept")
        again = await resume(server, peer, {"live:x": seen[3][1:]}, 0)
        assert again.welcome["recovered"] is True
        assert await replay(again) == [("$gap", {"room": "live:x"}), ("m", "kept")]
        # Nothing missed in it this time: no gap.
        await dropped(server, again)
        server.room("plain").broadcast("m", "again")
        last = await resume(server, again, {}, 0)
        assert last.welcome["recovered"] is True
        assert await replay(last) == [("m", "again")]
        await last.ws.close()


async def test_one_node_policy_ttl_expires_by_the_injected_clock() -> None:
    async with running(app()) as server:
        store = server._parts.recovery
        assert store is not None
        clock = store.clock = Clock(1000.0)  # type: ignore[assignment]
        first = await joined(server, "short:a")
        second = await joined(server, "plain")
        await dropped(server, first)
        await dropped(server, second)
        server.room("short:a").broadcast("m", 1)
        server.room("plain").broadcast("m", 1)
        clock.now += 2  # past the policy's 1 s; the server's TTL is the window (60 s)
        expired = await resume(server, first, {}, 0)
        assert expired.welcome["recovered"] is False
        kept = await resume(server, second, {}, 0)
        assert kept.welcome["recovered"] is True
        assert await replay(kept) == [("m", 1)]
        await expired.ws.close()
        await kept.ws.close()


async def test_a_cluster_applies_the_policy_whichever_node_publishes() -> None:
    prefix = "ph" + uuid.uuid4().hex[:10]
    one = app(cluster_url=REDIS_URL, cluster_prefix=prefix, recovery_window=10)
    two = app(cluster_url=REDIS_URL, cluster_prefix=prefix, recovery_window=10)
    probe = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        async with running(one), running(two):
            peer = await joined(one, "p:a", "live:x", "short:a", "plain")
            await dropped(one, peer)
            for n in range(2):  # from both nodes: the room keeps the policy's 2
                one.room("p:a").broadcast("m", f"one{n}")
                two.room("p:a").broadcast("m", f"two{n}")
            for room in ("live:x", "short:a", "plain"):
                two.room(room).broadcast("m", room)

            def keys(room: str) -> list[str]:
                logs = two._cluster.room_logs
                assert logs is not None
                return logs.room_keys(two._cluster.room_channel(room))

            meta, stream = keys("p:a")
            await wait_for_async(lambda: probe.hget(meta, "n"), lambda n: n == b"4")
            for room in ("live:x", "short:a", "plain"):
                await wait_for_async(lambda: probe.hget(keys(room)[0], "n"),  # noqa: B023
                                     lambda n: n == b"1")
            assert await probe.xlen(stream) == 2
            assert await probe.exists(keys("live:x")[1]) == 0  # no history kept
            for key in keys("short:a"):  # expiry: recovery_window + the policy's 1 s
                assert 0 < await probe.pttl(key) <= (10 + 1) * 1000
            assert await probe.xlen(keys("plain")[1]) == 1
            # Missed 4 in p:a (history 2): gone, on whichever node it resumes.
            lost = await resume(two, peer, {}, 0)
            assert lost.welcome["recovered"] is False
            await lost.ws.close()

            peer = await joined(two, "p:a", "live:x")
            # A position the client reports (node two knew none of p:a when it joined: by
            # time, a history of 2 could not show that nothing was trimmed).
            one.room("p:a").broadcast("m", "seen")
            seen = await peer.recv()
            assert seen[1] == "seen"
            await dropped(two, peer)
            one.room("p:a").broadcast("m", "a")
            # Two nodes, two broker connections: "b" goes out once Redis has logged "a", or
            # the log's order (what the replay shows) would be a race between them.
            await wait_for_async(lambda: probe.hget(meta, "n"), lambda n: n == b"6")
            two.room("p:a").broadcast("m", "b")
            one.room("live:x").broadcast("m", "lost")
            await wait_for_async(lambda: probe.hget(meta, "n"), lambda n: n == b"7")
            await wait_for_async(lambda: probe.hget(keys("live:x")[0], "n"),
                                 lambda n: n == b"2")
            again = await resume(one, peer, {"p:a": seen[3][1:]}, 0)
            assert again.welcome["recovered"] is True
            got = await replay(again)
            assert got[0] == ("$gap", {"room": "live:x"})
            assert [item for item in got[1:] if item[0] == "m"] == [("m", "a"), ("m", "b")]
            await again.ws.close()
    finally:
        keys_left = [key async for key in probe.scan_iter(match="{" + prefix + "*")]
        if keys_left:
            await probe.delete(*keys_left)
        await probe.aclose()


async def wait_for_async(read: Any, done: Any, timeout: float = 10.0) -> Any:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        assert loop.time() < deadline, f"still {value!r} after {timeout} s"
        await asyncio.sleep(0.01)


async def test_the_python_client_hands_a_resumes_gap_to_the_app() -> None:
    """An independent peer of the server code: the Python client resumes by itself and gets
    ``$gap`` for the room without history, then the other room's replay. The resume waits in
    the (async) authentication hook until the test has broadcast: no race with the
    reconnect."""
    import asyncio

    from smartsocket import Client

    server = app()
    open_door = asyncio.Event()
    open_door.set()

    @server.authenticate
    async def door(request: Any) -> dict[str, str]:
        await open_door.wait()
        return {"user": "ann"}

    async with running(server):
        client = Client(server.url, reconnect_delay=0.02, reconnect_delay_max=0.05)
        got: list[Any] = []
        client.on("m", got.append)
        client.on("$gap", lambda info: got.append(("gap", info["room"])))
        await client.connect()
        old_sid = client.sid
        await client.call("join", "live:x")
        await client.call("join", "plain")
        server.room("live:x").broadcast("m", "seen")
        await wait_for(lambda: got == ["seen"])
        open_door.clear()
        assert client._conn is not None
        client._conn.abort()
        await wait_for(lambda: old_sid not in server.sockets)
        server.room("live:x").broadcast("m", "lost")
        server.room("plain").broadcast("m", "kept")
        open_door.set()
        await wait_for(lambda: len(got) == 3, timeout=5)
        assert client.recovered and client.sid == old_sid
        assert got == ["seen", ("gap", "live:x"), "kept"]
        assert "live:x" not in client._positions.rooms  # forgotten: the app refetches the room
        server.room("live:x").broadcast("m", "after")
        await wait_for(lambda: got[-1:] == ["after"])
        await client.close()
