"""``RoomSync``'s buffers are bounded (cluster/catchup.py, "Bounds"): past ``limit`` per room,
members get ``$gap`` instead of the node holding more. One in-process node with recovery on
the real Redis (6379, a prefix of its own); the link events are the node's own calls."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from smartsocket import Client, SmartSocket, Socket
from smartsocket.protocol.envelope import encode_event
from smartsocket.testing import connected, running, wait_for

REDIS = "redis://127.0.0.1:6379/0"


def server() -> SmartSocket:
    app = SmartSocket(
        cluster_url=REDIS, cluster_prefix="cb" + uuid.uuid4().hex[:10], recovery_window=10,
    )

    @app.on("join")
    async def join(socket: Socket, room: str) -> None:
        socket.join(room)
        await app.room(room).subscribed()

    return app


def record(c: Client) -> list[Any]:
    """What ``c`` gets: ``said`` data, and ``("gap", room)`` for each ``$gap``."""
    got: list[Any] = []
    c.on("said", got.append)
    c.on("$gap", lambda info: got.append(("gap", info["room"])))
    return got


@pytest.mark.asyncio
async def test_messages_held_back_past_the_limit_become_a_gap() -> None:
    app = server()
    async with running(app), connected(app) as c:
        sync = app._cluster.sync
        assert sync is not None
        got = record(c)
        await c.call("join", "r")
        app.room("r").broadcast("said", 0)
        await wait_for(lambda: got == [0])
        sync.limit = 3
        sync.link_lost()  # the link broke: the room's messages are held back until caught up
        assert sync.holding == {"r": []}
        for n in range(1, 6):
            app.room("r").broadcast("said", n)
        # Three held back, the fourth crossed the limit: those three are dropped and the
        # member is told; the fourth and the fifth go out live.
        await wait_for(lambda: got[-1:] == [5])
        assert got == [0, ("gap", "r"), 4, 5]
        assert "r" not in sync.holding
        assert app.stats()["recovery"]["gaps"] == 1


@pytest.mark.asyncio
async def test_own_messages_past_the_limit_are_not_matched_but_told() -> None:
    app = server()
    async with running(app), connected(app) as c:
        sync = app._cluster.sync
        assert sync is not None
        got = record(c)
        await c.call("join", "r")
        sync.limit = 2
        # Own messages on their way through Redis when the link broke, twice over: more
        # than ``limit`` to match against the history later.
        for outage in ("a", "b"):
            for n in range(2):
                sync.sent("r", encode_event("said", f"{outage}{n}"), False, [])
            sync.link_lost()  # delivered here at once, kept as uncertain
        await wait_for(lambda: len(got) == 4)
        assert got == ["a0", "a1", "b0", "b1"]
        assert sync.overflowed == {"r"} and "r" not in sync.uncertain
        sync.link_up()  # the link is back: no catch-up for the room, a $gap instead
        await wait_for(lambda: ("gap", "r") in got)
        # The room's epoch ends (nobody resumes across what went out here only).
        await wait_for(lambda: not sync.unlogged_rooms and not sync.overflowed)
        app.room("r").broadcast("said", "after")
        await wait_for(lambda: got[-1:] == ["after"])


@pytest.mark.asyncio
async def test_own_messages_forgotten_past_the_limit_and_never_logged_are_told() -> None:
    """More own messages in flight than ``limit``: the oldest are forgotten. When the link
    breaks before Redis ran any of them, the members got the ones still remembered (delivered
    at the break) but never the forgotten ones: they get ``$gap`` at the catch-up."""
    app = server()
    async with running(app), connected(app) as c:
        sync = app._cluster.sync
        assert sync is not None
        got = record(c)
        await c.call("join", "r")
        sync.limit = 2
        app.room("r").broadcast("said", 0)
        await wait_for(lambda: got == [0])  # a position in the room's history
        for n in range(1, 4):  # never published: Redis runs none of them
            sync.sent("r", encode_event("said", n), False, [])
        assert sync.forgotten == {"r"}
        sync.link_lost()
        await wait_for(lambda: got == [0, 2, 3])  # the remembered two, at the break
        sync.link_up()
        await wait_for(lambda: ("gap", "r") in got)
        assert got == [0, 2, 3, ("gap", "r")]
        await wait_for(lambda: not sync.forgotten and not sync.unlogged_rooms)


@pytest.mark.asyncio
async def test_a_forgotten_own_message_that_came_back_settles_the_room() -> None:
    """An own message coming back settles the ones sent before it, forgotten ones included:
    a later link break has nothing to tell."""
    app = server()
    async with running(app), connected(app) as c:
        sync = app._cluster.sync
        assert sync is not None
        got = record(c)
        await c.call("join", "r")
        sync.limit = 2
        for n in range(3):  # the first one remembered is forgotten past the limit
            app.room("r").broadcast("said", n)
        await wait_for(lambda: got == [0, 1, 2])  # all came back through Redis
        assert not sync.forgotten and not sync.pending.get("r")
        sync.link_lost()
        sync.link_up()
        await wait_for(lambda: sync.catching_up == 0)
        app.room("r").broadcast("said", 3)
        await wait_for(lambda: got[-1:] == [3])
        assert got == [0, 1, 2, 3]
