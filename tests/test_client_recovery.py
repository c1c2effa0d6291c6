"""The Python client resumes its session transparently (protocol.md section 8): a busy room
while the connection is cut, trimmed history, and calls retried with idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from smartsocket import Client, SmartSocket, Socket
from smartsocket.testing import running, wait_for

pytestmark = pytest.mark.asyncio

FAST = {"reconnect_delay": 0.02, "reconnect_delay_max": 0.05}


def app(**options: Any) -> SmartSocket:
    options.setdefault("recovery_window", 5.0)
    server = SmartSocket(**options)
    server.on("join", lambda socket, room: socket.join(room) or room)
    return server


@contextlib.asynccontextmanager
async def publishing(
    server: SmartSocket, room: str, count: int
) -> AsyncIterator[asyncio.Task[None]]:
    """Broadcast 0..count-1 to ``room`` from the server, one every millisecond or so."""

    async def publish() -> None:
        for n in range(count):
            server.room(room).broadcast("tick", n)
            if n % 5 == 0:
                await asyncio.sleep(0.002)

    task = asyncio.get_running_loop().create_task(publish())
    try:
        yield task
    finally:
        task.cancel()


def cut(client: Client) -> None:
    """Drop the client's TCP connection without a close frame (a network failure)."""
    assert client._conn is not None
    client._conn.abort()


@pytest.mark.parametrize("side", ["client", "server"])
async def test_busy_room_reaches_the_app_exactly_once_in_order_across_drops(side: str) -> None:
    async with running(app()) as server:
        client = Client(server.url, **FAST)
        got: list[int] = []
        connects: list[bool] = []
        client.on("tick", got.append)
        client.on("connect", connects.append)
        await client.connect()
        sid = client.sid
        await client.call("join", "r")
        async with publishing(server, "r", 3000) as task:
            for at in (300, 1200, 2100):  # three drops mid-stream
                await wait_for(lambda at=at: len(got) >= at, timeout=10)
                if side == "client":
                    cut(client)
                else:
                    socket = server.sockets[sid]  # type: ignore[index]
                    assert socket._conn is not None
                    socket._conn.abort()
                await wait_for(lambda: not client.connected, timeout=5)
            await task
            await wait_for(lambda: len(got) >= 3000, timeout=10)
        await asyncio.sleep(0.05)
        assert got == list(range(3000))
        assert connects == [False, True, True, True]
        assert client.recovered and client.sid == sid
        assert server.stats()["recovery"]["recovered"] == 3
        await client.close()


async def test_direct_messages_missed_while_away_are_replayed() -> None:
    async with running(app()) as server:
        client = Client(server.url, **FAST)
        got: list[Any] = []
        client.on("dm", got.append)
        await client.connect()
        sid = client.sid
        assert sid is not None
        server.sockets[sid].send("dm", 1)
        await wait_for(lambda: got == [1])
        client.reconnect_delay = client.reconnect_delay_max = 0.3
        cut(client)
        await wait_for(lambda: sid not in server.sockets)
        assert server.send(sid, "dm", 2)  # held session: logged for the resume
        assert server.send(sid, "dm", 3)
        await wait_for(lambda: client.connected, timeout=5)
        await wait_for(lambda: got == [1, 2, 3])
        assert client.recovered
        await client.close()


async def test_trimmed_history_reports_not_recovered_and_starts_over() -> None:
    async with running(app(history_size=5)) as server:
        client = Client(server.url, reconnect_delay=0.3, reconnect_delay_max=0.3)
        got: list[int] = []
        connects: list[bool] = []
        client.on("tick", got.append)
        client.on("connect", connects.append)
        await client.connect()
        old_sid = client.sid
        await client.call("join", "r")
        server.room("r").broadcast("tick", 0)
        await wait_for(lambda: got == [0])
        cut(client)
        await wait_for(lambda: old_sid not in server.sockets)
        for n in range(1, 10):  # 9 missed, only 5 kept
            server.room("r").broadcast("tick", n)
        await wait_for(lambda: client.connected, timeout=5)
        assert connects == [False, False]
        assert not client.recovered and client.sid != old_sid
        assert client._positions.rooms == {} and client._positions.seq == 0
        assert got == [0]  # nothing replayed: the application refetches its state
        await client.call("join", "r")
        server.room("r").broadcast("tick", 10)
        await wait_for(lambda: got == [0, 10])
        await client.close()


async def test_call_cut_off_by_a_drop_is_retried_and_runs_once() -> None:
    runs: list[int] = []
    started = asyncio.Event()
    release = asyncio.Event()
    server = app()

    @server.on("pay")
    async def pay(socket: Socket, amount: int) -> dict[str, int]:
        runs.append(amount)
        started.set()
        await release.wait()
        return {"paid": amount, "runs": len(runs)}

    async with running(server):
        client = Client(server.url, reconnect_delay=0.2, reconnect_delay_max=0.2)
        await client.connect()
        call = asyncio.ensure_future(client.call("pay", 10, timeout=10))
        await asyncio.wait_for(started.wait(), 5)
        cut(client)  # the reply can no longer come on this connection
        await wait_for(lambda: not client.connected)
        release.set()  # finishes while the client is away: the outcome is recorded
        assert await asyncio.wait_for(call, 10) == {"paid": 10, "runs": 1}
        assert runs == [10]
        # A call made while offline goes out after the reconnect and runs once as well.
        cut(client)
        await wait_for(lambda: not client.connected)
        later = asyncio.ensure_future(client.call("pay", 20, timeout=10))
        assert (await asyncio.wait_for(later, 10))["paid"] == 20
        assert runs == [10, 20]
        await client.close()


async def test_without_recovery_calls_fail_on_a_drop_and_nothing_is_resumed() -> None:
    release = asyncio.Event()
    server = SmartSocket()

    @server.on("slow")
    async def slow(socket: Socket, data: Any) -> int:
        await release.wait()
        return 1

    async with running(server):
        client = Client(server.url, **FAST)
        await client.connect()
        sid = client.sid
        call = asyncio.ensure_future(client.call("slow", None))
        await asyncio.sleep(0.05)
        cut(client)
        from smartsocket import ConnectionClosed

        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(call, 5)
        await wait_for(lambda: client.connected, timeout=5)
        assert client.sid != sid and not client.recovered
        release.set()
        await client.close()


async def test_positions_already_seen_are_dropped() -> None:
    seen = Client("ws://127.0.0.1:1/")._positions.first_time
    assert seen(["r", "e1", 1]) and seen(["r", "e1", 2])
    assert not seen(["r", "e1", 2]) and not seen(["r", "e1", 1])
    assert seen(["r", "e2", 1])  # a new epoch starts over
    assert seen(["s", "e1", 1])  # rooms are independent
    assert seen(1) and seen(2) and not seen(2)
    assert seen(["r", 5, "junk"])  # not a position: delivered as is


async def test_a_gap_notice_reaches_the_app_and_starts_the_room_afresh() -> None:
    """``$gap`` (protocol.md 8, "Gaps"): the app hears it, and positions of the room seen before
    it (a broker that went back in time gives them again) are new messages after it."""
    from smartsocket.cluster.catchup import gap_notice
    from smartsocket.protocol import envelope

    server = app()
    async with running(server):
        client = Client(server.url, **FAST)
        await client.connect()
        try:
            got: list[Any] = []
            gaps: list[Any] = []
            client.on("tick", got.append)
            client.on("$gap", gaps.append)
            await client.call("join", "r")
            await client.call("join", "s")

            def positioned(room: str, n: int, offset: int) -> None:
                payload = envelope.encode_event("tick", n, meta=[room, "e1", offset])
                server._local.deliver(room, payload, False)

            positioned("r", 1, 1)
            positioned("r", 2, 2)
            positioned("s", 3, 1)
            server._local.deliver("r", gap_notice("r"), False)
            positioned("r", 4, 1)  # offsets given again after a rewind
            positioned("r", 5, 2)
            positioned("s", 6, 1)  # another room: still a duplicate
            server.room("r").broadcast("tick", 7)
            await wait_for(lambda: 7 in got)
            assert got == [1, 2, 3, 4, 5, 7]
            assert gaps == [{"room": "r"}]
        finally:
            await client.close()
