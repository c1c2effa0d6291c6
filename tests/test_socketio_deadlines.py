"""The Socket.IO endpoint's one timer for every session's deadlines (deadlines.py)."""

from __future__ import annotations

import asyncio

from smartsocket.server.socketio.deadlines import Deadlines
from smartsocket.testing import wait_for


class Owner:
    """A session stand-in: records what came, and may arm again from inside the call."""

    def __init__(self, sid: str, deadlines: Deadlines, got: list[tuple[str, float]],
                 again: int = 0) -> None:
        self.sid = sid
        self.deadlines = deadlines
        self.got = got
        self.again = again  # arm the same deadline again this many times (not due by its clock)

    def deadline_due(self, deadline: float) -> None:
        self.got.append((self.sid, deadline))
        if self.again:
            self.again -= 1
            self.deadlines.arm(self.sid, deadline)


def wheel(*sids: str) -> tuple[Deadlines, dict[str, Owner], list[tuple[str, float]]]:
    """A ``Deadlines`` with an ``Owner`` session for each sid, and the list they record."""
    sessions: dict[str, Owner] = {}
    deadlines = Deadlines(sessions)
    got: list[tuple[str, float]] = []
    for sid in sids:
        sessions[sid] = Owner(sid, deadlines, got)
    return deadlines, sessions, got


async def test_deadlines_come_in_order_and_a_gone_session_is_skipped() -> None:
    deadlines, _, got = wheel("a", "b")
    now = asyncio.get_running_loop().time()
    deadlines.arm("a", now + 0.03)
    deadlines.arm("gone", now + 0.02)  # its session ended: never called, held by sid only
    deadlines.arm("b", now + 0.01)
    await wait_for(lambda: len(got) == 2 and len(deadlines) == 0, timeout=10)
    assert got == [("b", now + 0.01), ("a", now + 0.03)]


async def test_an_earlier_deadline_rearms_the_timer() -> None:
    deadlines, _, got = wheel("late", "soon")
    now = asyncio.get_running_loop().time()
    deadlines.arm("late", now + 3600)  # the timer is armed for an hour from now
    deadlines.arm("soon", now + 0.01)  # comes first all the same
    await wait_for(lambda: got == [("soon", now + 0.01)], timeout=10)
    assert len(deadlines) == 1  # the hour's entry waits


async def test_an_owner_that_arms_the_same_deadline_again_is_served_by_the_next_timer() -> None:
    """A loop timer may fire before the deadline by the owner's clock: the owner arms it
    again, and is called again on a later turn of the loop, not in a loop within one."""
    loop = asyncio.get_running_loop()
    deadlines, sessions, got = wheel()
    turns: list[int] = []  # for each call, how many loop turns had passed
    passed = 0

    def turn() -> None:
        nonlocal passed
        passed += 1

    class Counting(Owner):
        def deadline_due(self, deadline: float) -> None:
            turns.append(passed)
            loop.call_soon(turn)
            super().deadline_due(deadline)

    sessions["a"] = Counting("a", deadlines, got, again=3)
    deadline = loop.time() + 0.01
    deadlines.arm("a", deadline)
    await wait_for(lambda: len(got) == 4, timeout=10)
    assert got == [("a", deadline)] * 4
    assert turns == sorted(set(turns))  # each call on a turn of its own
    assert len(deadlines) == 0


async def test_entries_of_gone_sessions_are_dropped_once_they_pile_up() -> None:
    """A storm of short sessions: their entries go before their deadlines come, a live
    session's stay."""
    deadlines, _, got = wheel("live")
    now = asyncio.get_running_loop().time()
    deadlines.arm("live", now + 0.05)
    for i in range(10_000):
        deadlines.arm(f"gone-{i}", now + 3600)  # sessions that ended at once
        assert len(deadlines) <= 2_048 + 1
    await wait_for(lambda: got == [("live", now + 0.05)], timeout=10)
