"""Each room's history limits (history.py): the server's options, or a room policy's, resolved
once per room name and looked up only when some policy sets history."""

from __future__ import annotations

import time

import pytest

from smartsocket.history import HistoryLimits
from smartsocket.policies import RoomPolicy
from smartsocket.server.room_policy import RoomGate


def gate(history: HistoryLimits) -> RoomGate:
    return RoomGate(deny_by_default=False, verifier=None, clock=time.time,
                    monotonic_ns=time.monotonic_ns, has_room=lambda room: False,
                    history=history)


def test_without_a_history_policy_every_room_gets_the_server_values() -> None:
    history = HistoryLimits(100, 0.0, 30.0)
    rooms = gate(history)
    rooms.set("chat:*", RoomPolicy(join="authenticated", rate_limit_messages=5))
    assert history.lookup is None  # no lookup at all, for any room
    limits = history.of("chat:a")
    assert limits is history.default
    assert (limits.size, limits.ttl, limits.ttl_ms, limits.expire_ms) == (100, 30.0, 30_000,
                                                                          60_000)


def test_a_policy_sets_size_and_ttl_and_falls_back_for_what_it_leaves_out() -> None:
    history = HistoryLimits(100, 20.0, 30.0)
    rooms = gate(history)
    rooms.set("big:*", RoomPolicy(history_size=500))
    rooms.set("short:*", RoomPolicy(history_ttl=2))
    rooms.set("window:*", RoomPolicy(history_ttl=0))  # 0: the recovery window
    rooms.set("live:*", RoomPolicy(history_size=0))
    assert history.lookup is not None
    assert (history.of("big:1").size, history.of("big:1").ttl) == (500, 20.0)
    assert (history.of("short:1").size, history.of("short:1").expire_ms) == (100, 32_000)
    assert history.of("window:1").ttl == 30.0
    assert history.of("live:1").size == 0
    assert history.of("elsewhere") is history.default
    assert history.of("big:2") is history.of("big:1")  # one History per distinct value


def test_a_more_specific_policy_set_later_takes_over() -> None:
    history = HistoryLimits(100, 0.0, 30.0)
    rooms = gate(history)
    rooms.set("chat:*", RoomPolicy(history_size=5))
    assert history.of("chat:vip:1").size == 5
    version = history.version
    rooms.set("chat:vip:*", RoomPolicy(presence=True))  # no history: the server's
    assert history.version > version
    assert history.of("chat:vip:1") is history.default
    assert history.of("chat:1").size == 5


def test_the_cache_is_bounded() -> None:
    looked: list[str] = []

    def lookup(room: str) -> tuple[int | None, float | None]:
        looked.append(room)
        return (7, None)

    history = HistoryLimits(100, 0.0, 30.0, cache_size=2)
    history.use(lookup)
    for room in ("a", "b", "a", "c", "d", "e"):
        assert history.of(room).size == 7
    assert looked == ["a", "b", "c", "d", "e"]  # "a" again came from the cache
    assert len(history._cache) <= 2


def test_values_a_policy_cannot_have_are_refused() -> None:
    history = HistoryLimits(100, 0.0, 30.0)
    with pytest.raises(ValueError, match="history_size"):
        history.resolve(-1, None)
    with pytest.raises(ValueError, match="history_ttl"):
        history.resolve(None, -1.0)
    assert history.resolve(None, None) is history.default
