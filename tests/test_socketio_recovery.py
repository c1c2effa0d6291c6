"""Socket.IO connection-state recovery (``pid`` and ``offset``) on SmartSocket's recovery:
the marks that turn one offset into every position (unit), then python-socketio's
``AsyncClient`` resuming on one node (memory store) and on another node of a Redis cluster.

python-socketio has no client-side recovery (5.x): the tests hand it the ``pid`` (read on the
server) and the last offset it received in its CONNECT auth, as socket.io-client 4.6+ does
by itself (tests/js/socketio.test.mjs runs that client)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import socketio

from smartsocket import SmartSocket, Socket
from smartsocket.recovery.marks import ResumePoint, mark_of, pid_of, record, room_mark
from smartsocket.recovery.state import SessionState
from smartsocket.testing import running, wait_for

REDIS = "redis://127.0.0.1:6379/0"


# -- marks (unit) ------------------------------------------------------------------------------


def test_mark_of_positions() -> None:
    assert mark_of(["lobby", "e1", 17]) == "17~e1~lobby" == room_mark("lobby", "e1", 17)
    assert mark_of(42) == "42"
    assert mark_of(None) is None and mark_of(["r", "e"]) is None and mark_of("x") is None


def test_one_offset_gives_every_position() -> None:
    state = SessionState(None)
    state.joined = {"a": ("ea", 0), "b": ("eb", 5)}
    for mark in ["1~ea~a", "6~eb~b", "3", "2~ea~a", "7~eb~b"]:
        record(state, mark, 10)
    point = ResumePoint("sid", "tok", "3")
    assert point.positions(state) == ({"a": ["ea", 1], "b": ["eb", 6]}, 3)
    assert ResumePoint("sid", "tok", "7~eb~b").positions(state) == (
        {"a": ["ea", 2], "b": ["eb", 7]}, 3
    )
    assert ResumePoint("sid", "tok", None).positions(state) == ({}, 0)  # got nothing yet
    assert ResumePoint("sid", "tok", "unknown").positions(state) is None


def test_marks_leaving_the_window_become_floors() -> None:
    state = SessionState(None)
    state.joined = {"a": ("ea", 0)}
    for mark in ["1~ea~a", "4", "2~ea~a", "3~ea~a"]:
        record(state, mark, 2)
    assert list(state.marks or ()) == ["2~ea~a", "3~ea~a"]
    assert state.joined["a"] == ("ea", 1) and state.marks_seq == 4
    assert ResumePoint("s", "t", "2~ea~a").positions(state) == ({"a": ["ea", 2]}, 4)
    # An offset older than the window, or none after marks left it: cannot resume.
    assert ResumePoint("s", "t", "1~ea~a").positions(state) is None
    assert ResumePoint("s", "t", None).positions(state) is None


def test_pid_parses_back() -> None:
    pid = pid_of("node.abc", "tok-en_1")
    point = ResumePoint.parse(pid, "5")
    assert point is not None and (point.sid, point.token, point.offset) == (
        "node.abc", "tok-en_1", "5"
    )
    assert point.pid == pid
    assert ResumePoint.parse("nodot", None) is None


# -- python-socketio resuming ------------------------------------------------------------------


def recovering_app(server: SmartSocket, log: list[bool]) -> None:
    @server.on_connection
    def connected(socket: Socket) -> None:
        log.append(socket.recovered)

    @server.on("enter")
    async def enter(socket: Socket, room: str) -> str:
        socket.join(room)
        await server.room(room).subscribed()
        return pid_of(socket.id, socket.token)  # what socket.io-client reads from CONNECT

    @server.on("cut")
    def cut(socket: Socket, data: Any) -> None:
        connection = socket.connection
        assert connection is not None
        connection.abort()  # the transport ends without a DISCONNECT: the session is held


@asynccontextmanager
async def client_of(server: SmartSocket, auth: Any = None) -> AsyncIterator[
    tuple[socketio.AsyncClient, asyncio.Queue[Any]]
]:
    client = socketio.AsyncClient(reconnection=False)
    got: asyncio.Queue[Any] = asyncio.Queue()
    client.on("news", lambda *args: got.put_nowait(args))
    await client.connect(f"http://127.0.0.1:{server.port}", transports=["websocket"],
                         auth=auth, wait_timeout=5)
    try:
        yield client, got
    finally:
        await client.disconnect()


async def resume_across(first: SmartSocket, second: SmartSocket, log: list[bool]) -> None:
    """A client of ``first`` is cut; ``second`` broadcasts meanwhile; the client comes back
    to ``second`` with its pid and last offset and gets the rest, in order, once."""
    async with client_of(first) as (client, got):
        old_sid = client.get_sid()
        pid = await client.call("enter", "news-room", timeout=5)
        second.room("news-room").broadcast("news", 1)
        one, offset = await asyncio.wait_for(got.get(), 5)
        assert one == 1 and isinstance(offset, str)
        await client.emit("cut")
        await wait_for(lambda: old_sid not in first.sockets)
    second.room("news-room").broadcast("news", 2)
    second.room("news-room").broadcast("news", 3)
    assert second.send(old_sid, "news", "direct")  # to the held session, kept for it
    async with client_of(second, {"pid": pid, "offset": offset}) as (client, got):
        assert client.get_sid() == old_sid
        replayed = [(await asyncio.wait_for(got.get(), 5))[0] for _ in range(3)]
        # Room messages in order; across nodes the direct one is merged by the clock.
        assert [n for n in replayed if n != "direct"] == [2, 3] and "direct" in replayed
        if first is second:
            assert replayed == [2, 3, "direct"]
        second.room("news-room").broadcast("news", 4)  # back in the room
        assert (await asyncio.wait_for(got.get(), 5))[0] == 4
        assert got.empty()
    assert log[-1] is True


async def test_resumes_on_one_node() -> None:
    server = SmartSocket(recovery_window=30)
    log: list[bool] = []
    recovering_app(server, log)
    async with running(server):
        await resume_across(server, server, log)
        assert server.stats()["recovery"]["recovered"] == 1


async def test_unknown_pid_starts_a_new_session() -> None:
    server = SmartSocket(recovery_window=30)
    log: list[bool] = []
    recovering_app(server, log)
    async with running(server), client_of(server, {"pid": "gone.token", "offset": "1"}) as (
        client, _
    ):
        assert await client.call("enter", "r", timeout=5)
        assert log == [False]


async def test_resumes_on_another_node_of_a_redis_cluster() -> None:
    prefix = "sio" + uuid.uuid4().hex[:10]
    options: dict[str, Any] = {
        "cluster_url": REDIS, "cluster_prefix": prefix, "recovery_window": 30,
        "cluster_heartbeat": 0.05, "node_timeout": 1.0,
    }
    a, b = SmartSocket(**options), SmartSocket(**options)
    log: list[bool] = []
    recovering_app(a, log)
    recovering_app(b, log)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(a))
        await stack.enter_async_context(running(b))
        await wait_for(lambda: len(a.cluster_nodes()) == 2)
        await resume_across(a, b, log)


async def test_no_pid_without_socketio_recovery() -> None:
    server = SmartSocket(recovery_window=30, socketio_recovery=False)
    log: list[bool] = []
    recovering_app(server, log)
    async with running(server):
        async with client_of(server) as (client, got):
            pid = await client.call("enter", "r", timeout=5)
            server.room("r").broadcast("news", 1)
            assert await asyncio.wait_for(got.get(), 5) == (1,)  # no offset argument
        # Its pid would not resume it: the server never advertised one.
        async with client_of(server, {"pid": pid, "offset": "1"}) as (client, _):
            await client.call("enter", "r", timeout=5)
        assert log == [False, False]
