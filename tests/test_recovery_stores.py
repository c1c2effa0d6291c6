"""The ``SessionStore`` contract (recovery/store.py): the same tests against ``MemoryStore`` and
``RedisStore`` (the real Redis at 127.0.0.1:6379, keys under a prefix of their own, deleted
afterwards). Time is injected: the memory store's clock moves; for Redis, what Redis itself
expires is checked by the TTL it was given, and the expiry itself is what deleting the key
does."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio

from smartsocket.cluster.brokers import BrokerAdapter, create_adapter
from smartsocket.cluster.brokers.scripts import ScriptCall
from smartsocket.cluster.roomlog import RoomLogs
from smartsocket.config import Config
from smartsocket.history import HistoryLimits
from smartsocket.policies import RoomPolicy
from smartsocket.protocol import envelope
from smartsocket.recovery import (
    MemoryStore,
    RedisStore,
    Replies,
    SessionState,
    SessionStore,
    pick_store,
)
from smartsocket.recovery.redis import REFRESH
from smartsocket.server.room_policy import RoomGate

REDIS_URL = "redis://127.0.0.1:6379/0"
WINDOW = 10.0
TTL = 5.0


class Clock:
    """Seconds that move only when a test moves them."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Dropped:
    """A socket whose session a store holds (``recovery.state.HeldSocket``)."""

    id: str
    token: str = "secret-token"
    identity: Any = None
    data: dict[str, Any] = field(default_factory=dict)
    presence: dict[str, Any] = field(default_factory=dict)
    rooms: list[str] = field(default_factory=list)

    def joined_rooms(self) -> list[str]:
        return list(self.rooms)


class Backend:
    """A store and how a test drives what it does not say in its interface: logging a room
    message (on Redis the node logs it as it publishes), waiting for queued writes, losing a
    room's history, letting time pass."""

    kind: str
    store: SessionStore
    clock: Clock

    async def append(
        self, room: str, data: Any, excluded: tuple[str, ...] | None = None
    ) -> None:
        raise NotImplementedError

    async def settled(self) -> None:
        """Queued writes (holds, refreshes, direct messages) are done."""

    async def lose_history(self, room: str) -> None:
        raise NotImplementedError

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds


class Memory(Backend):
    kind = "memory"

    def __init__(self, config: Config, history: HistoryLimits | None = None) -> None:
        self.clock = Clock(1000.0)
        self.memory = MemoryStore(config, self.clock, history=history)
        self.store = self.memory

    async def append(
        self, room: str, data: Any, excluded: tuple[str, ...] | None = None
    ) -> None:
        self.memory.log_room(room, "said", data, False, excluded)

    async def lose_history(self, room: str) -> None:
        # A room nobody is in or may resume into is forgotten once its messages are too old.
        self.advance(TTL + 1)
        self.memory.sweep(())


class Redis(Backend):
    kind = "redis"

    def __init__(
        self, config: Config, adapter: BrokerAdapter, probe: redis.asyncio.Redis,
        history: HistoryLimits | None = None,
    ) -> None:
        self.prefix = "rs" + uuid.uuid4().hex[:12]
        self.clock = Clock(1000.0)
        self.adapter = adapter
        self.probe = probe
        self.logs = RoomLogs(config, adapter, history)
        self.forwarded: list[tuple[str, str, bytes, bool]] = []
        self.redis = RedisStore(
            config, adapter, self.logs, prefix=self.prefix, node_id="here",
            channel=self.channel,
            forward=lambda *args: self.forwarded.append(args),
            clock=self.clock, wall=self._wall,
        )
        self.store = self.redis
        self.skew = 0.0  # seconds the store's wall clock is ahead of Redis's

    def _wall(self) -> float:
        # Redis stamps room messages with its own clock: the store's runs ahead by ``skew``.
        return time.time() + self.skew

    def channel(self, room: str) -> str:
        return f"{self.prefix}.room.{room}"

    async def append(
        self, room: str, data: Any, excluded: tuple[str, ...] | None = None
    ) -> None:
        channel = self.channel(room)
        before = await self.logs.read_room(channel, 1 << 60)
        count = before.last if before is not None else 0
        payload = envelope.encode_event("said", data)
        assert self.logs.publish_room(room, channel, b"-", payload, False, list(excluded or ()))
        await until(lambda: self._last(room), lambda last: last == count + 1)

    async def _last(self, room: str) -> int:
        log = await self.logs.read_room(self.channel(room), 1 << 60)
        return log.last if log is not None else 0

    async def settled(self) -> None:
        # The adapter runs its queue in order: once a call queued last has answered, the
        # writes queued before it are done. (REFRESH of a session that does not exist
        # writes nothing.)
        done = asyncio.get_running_loop().create_future()
        keys = self.redis.session_keys("settled")
        call = ScriptCall(REFRESH, keys, [b"-"], lambda result: done.set_result(result))
        assert self.adapter.publish(keys[0], call)
        assert await asyncio.wait_for(done, 10) == 0

    async def lose_history(self, room: str) -> None:
        # What Redis does when the keys expire (recovery_window + history_ttl idle).
        await self.probe.delete(*self.logs.room_keys(self.channel(room)))

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.skew += seconds

    async def cleanup(self) -> None:
        keys = [key async for key in self.probe.scan_iter(match="{" + self.prefix + "*")]
        if keys:
            await self.probe.delete(*keys)


async def until(
    read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    """Read until ``done`` holds (a condition, not a guess at how long it takes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        assert loop.time() < deadline, f"still {value!r} after {timeout} s"
        await asyncio.sleep(0.005)


def limits(config: Config, policies: dict[str, RoomPolicy]) -> HistoryLimits:
    """Each room's history limits as a server with these room policies resolves them."""
    history = HistoryLimits.of_config(config)
    gate = RoomGate(deny_by_default=False, verifier=None, clock=time.time,
                    monotonic_ns=time.monotonic_ns, has_room=lambda room: False,
                    history=history)
    for pattern, policy in policies.items():
        gate.set(pattern, policy)
    return history


def config(**changes: Any) -> Config:
    options: dict[str, Any] = {
        "recovery_window": WINDOW, "history_ttl": TTL, "history_size": 3, **changes,
    }
    return Config().replace(**options)


@pytest.fixture
async def redis_adapter() -> AsyncIterator[tuple[BrokerAdapter, redis.asyncio.Redis]]:
    adapter = create_adapter(REDIS_URL)
    assert isinstance(adapter, BrokerAdapter)
    await adapter.start(lambda channel, data: None, lambda up: None)
    probe = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert adapter.connected
        yield adapter, probe
    finally:
        await adapter.close()
        await probe.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Backend]]:
    made: list[Redis] = []
    adapter: BrokerAdapter | None = None
    probe: redis.asyncio.Redis | None = None
    if request.param == "redis":
        adapter = create_adapter(REDIS_URL)  # type: ignore[assignment]
        assert isinstance(adapter, BrokerAdapter)
        await adapter.start(lambda channel, data: None, lambda up: None)
        assert adapter.connected
        probe = redis.asyncio.Redis.from_url(REDIS_URL)

    def factory(policies: dict[str, RoomPolicy] | None = None, **changes: Any) -> Backend:
        made_config = config(**changes)
        history = limits(made_config, policies or {})
        if adapter is None:
            return Memory(made_config, history)
        assert probe is not None
        backend = Redis(made_config, adapter, probe, history)
        made.append(backend)
        return backend

    try:
        yield factory
    finally:
        for backend in made:
            await backend.cleanup()
        if adapter is not None:
            await adapter.close()
        if probe is not None:
            await probe.aclose()


def data_of(payload: bytes) -> Any:
    packet = envelope.decode(payload, binary=False)
    assert isinstance(packet, envelope.Event)
    return packet.data


# room history


async def test_history_is_read_after_an_offset(make: Callable[..., Backend]) -> None:
    backend = make()
    store = backend.store
    assert await store.read_room("r", 0) is None  # no history yet
    for n in (1, 2, 3):
        await backend.append("r", n)
    view = await store.read_room("r", 1)
    assert view is not None and view.current
    assert view.last == 3
    assert [item.offset for item in view.items] == [2, 3]
    assert [data_of(item.payload) for item in view.items] == [2, 3]
    everything = await store.read_room("r", -1)
    assert everything is not None and everything.epoch == view.epoch
    assert [item.offset for item in everything.items] == [1, 2, 3]
    nothing_new = await store.read_room("r", 3)
    assert nothing_new is not None and nothing_new.items == [] and nothing_new.last == 3


async def test_history_keeps_who_a_message_skipped(make: Callable[..., Backend]) -> None:
    backend = make()
    await backend.append("r", "x", excluded=("a.1", "a.2"))
    view = await backend.store.read_room("r", 0)
    assert view is not None
    assert list(view.items[0].excluded or ()) == ["a.1", "a.2"]


async def test_history_is_trimmed_to_its_size(make: Callable[..., Backend]) -> None:
    backend = make(history_size=3)
    for n in range(1, 6):
        await backend.append("r", n)
    view = await backend.store.read_room("r", 0)
    assert view is not None and view.last == 5
    assert [item.offset for item in view.items] == [3, 4, 5]  # the oldest two are gone


async def test_a_lost_history_starts_a_new_epoch(make: Callable[..., Backend]) -> None:
    backend = make()
    await backend.append("r", 1)
    await backend.append("r", 2)
    before = await backend.store.read_room("r", 0)
    assert before is not None
    await backend.lose_history("r")
    assert await backend.store.read_room("r", 0) is None
    await backend.append("r", 3)
    after = await backend.store.read_room("r", 0)
    assert after is not None
    assert after.epoch != before.epoch
    assert after.last == 1 and [data_of(i.payload) for i in after.items] == [3]


# held sessions


def session(rooms: dict[str, tuple[str, int]] | None = None) -> SessionState:
    state = SessionState(None)
    state.joined = dict(rooms or {})
    return state


async def test_a_held_session_is_taken_once(make: Callable[..., Backend]) -> None:
    backend = make()
    store = backend.store
    socket = Dropped("n.1", identity={"user": "ann"}, data={"k": 1}, presence={"s": "on"})
    store.hold(socket, session())
    await backend.settled()
    assert store.holds("n.1")
    assert await store.take("n.1", "wrong", {"user": "ann"}) is None  # still held
    assert await store.take(5, "secret-token", None) is None  # not a session id
    held = await store.take("n.1", "secret-token", {"user": "ann"})
    assert held is not None
    assert (held.sid, held.data, held.presence) == ("n.1", {"k": 1}, {"s": "on"})
    assert held.identity == {"user": "ann"}
    assert await store.take("n.1", "secret-token", {"user": "ann"}) is None  # once


async def test_a_session_is_not_taken_by_another_identity(make: Callable[..., Backend]) -> None:
    backend = make()
    backend.store.hold(Dropped("n.2", identity="ann"), session())
    await backend.settled()
    assert await backend.store.take("n.2", "secret-token", "bob") is None


async def test_a_held_session_expires(make: Callable[..., Backend]) -> None:
    backend = make()
    store = backend.store
    store.hold(Dropped("n.3"), session())
    await backend.settled()
    if isinstance(backend, Redis):
        # Redis expires it: the TTL it was given is the window.
        ttl = await backend.probe.pttl(backend.redis.session_keys("n.3")[0])
        assert 0 < ttl <= WINDOW * 1000
        await backend.probe.delete(backend.redis.session_keys("n.3")[0])
    backend.advance(WINDOW + 1)
    assert not store.holds("n.3")
    assert await store.take("n.3", "secret-token", None) is None
    store.sweep(())
    assert not store.holds("n.3")


async def test_a_dropped_record_is_not_held_here(make: Callable[..., Backend]) -> None:
    backend = make()
    backend.store.hold(Dropped("n.4"), session())
    await backend.settled()
    backend.store.drop("n.4")
    assert not backend.store.holds("n.4")
    backend.store.drop("n.4")  # twice: nothing to do


async def test_messages_for_a_held_session_wait_for_it(make: Callable[..., Backend]) -> None:
    backend = make()
    store = backend.store
    state = session()
    store.direct_message(state, "before", 1, False)  # while it was connected
    store.hold(Dropped("n.5"), state)
    await backend.settled()
    assert store.send_held("n.5", envelope.encode_event("dm", 2), False)
    assert not store.send_held("n.none", envelope.encode_event("dm", 3), False)
    await backend.settled()
    held = await store.take("n.5", "secret-token", None)
    assert held is not None
    missed = held.state.since(0)
    assert missed is not None
    assert [(e[0], data_of(e[3])) for e in missed] == [(1, 1), (2, 2)]
    assert held.state.seq == 2


async def test_replies_of_idempotent_calls_go_with_the_session(
    make: Callable[..., Backend],
) -> None:
    backend = make()
    store = backend.store
    state = session()
    replies = state.replies = Replies(store.reply_limit)
    replies.remember("k1", {"ok": 1}, None)
    store.hold(Dropped("n.6"), state)
    await backend.settled()
    replies.remember("k2", None, ("bad_request", "no", 1.5))  # finished while held
    store.refresh("n.6", state)
    store.refresh("n.none", state)  # not held here: nothing
    await backend.settled()
    held = await store.take("n.6", "secret-token", None)
    assert held is not None and held.state.replies is not None
    done = dict(held.state.replies.done)
    assert done["k1"] == ({"ok": 1}, None)
    assert done["k2"] == (None, ("bad_request", "no", 1.5))


# replay


async def test_a_resume_replays_what_was_missed_in_order(make: Callable[..., Backend]) -> None:
    backend = make(history_size=10)
    store = backend.store
    await backend.append("r", 0)
    start = await store.read_room("r", 0)
    assert start is not None
    state = session({"r": (start.epoch, start.last)})
    store.hold(Dropped("n.7", rooms=["r"]), state)
    await backend.settled()
    await backend.append("r", 1)
    await backend.append("r", 2, excluded=("n.7",))  # not for it
    await backend.append("r", 3)
    held = await store.take("n.7", "secret-token", None)
    assert held is not None
    missed = await store.missed(held, {}, 0)
    assert missed is not None
    assert [data_of(payload) for payload, _ in missed] == [1, 3]
    # Each carries its position (room, epoch, offset): the client drops what it saw.
    packet = envelope.decode(missed[-1][0], binary=False)
    assert isinstance(packet, envelope.Event) and packet.meta == ["r", start.epoch, 4]
    # What the client reports having seen is not replayed again.
    again = await store.missed(held, {"r": [start.epoch, 3]}, 0)
    assert again is not None and [data_of(p) for p, _ in again] == [3]


async def test_a_resume_fails_when_history_is_gone(make: Callable[..., Backend]) -> None:
    backend = make(history_size=2)
    store = backend.store
    await backend.append("r", 0)
    start = await store.read_room("r", 0)
    assert start is not None
    state = session({"r": (start.epoch, start.last)})
    store.hold(Dropped("n.8", rooms=["r"]), state)
    await backend.settled()
    for n in (1, 2, 3):  # one more than the history keeps
        await backend.append("r", n)
    held = await store.take("n.8", "secret-token", None)
    assert held is not None
    assert await store.missed(held, {}, 0) is None  # trimmed
    assert await store.missed(held, {}, 5) is None  # a direct message it cannot have seen


async def test_a_resume_fails_across_an_epoch(make: Callable[..., Backend]) -> None:
    backend = make()
    store = backend.store
    await backend.append("r", 0)
    start = await store.read_room("r", 0)
    assert start is not None
    store.hold(Dropped("n.9", rooms=["r"]), session({"r": (start.epoch, start.last)}))
    await backend.settled()
    held = await store.take("n.9", "secret-token", None)
    assert held is not None
    await backend.lose_history("r")
    await backend.append("r", 1)
    assert await store.missed(held, {}, 0) is None


async def test_a_resume_fails_once_messages_are_too_old(make: Callable[..., Backend]) -> None:
    backend = make(history_size=10)
    store = backend.store
    await backend.append("r", 0)
    start = await store.read_room("r", 0)
    assert start is not None
    store.hold(Dropped("n.10", rooms=["r"]), session({"r": (start.epoch, start.last)}))
    await backend.settled()
    await backend.append("r", 1)
    held = await store.take("n.10", "secret-token", None)
    assert held is not None
    missed = await store.missed(held, {}, 0)
    assert missed is not None and len(missed) == 1
    backend.advance(TTL + 1)  # past history_ttl
    assert await store.missed(held, {}, 0) is None


async def test_direct_and_room_messages_replay_in_send_order(
    make: Callable[..., Backend],
) -> None:
    backend = make(history_size=10)
    store = backend.store
    await backend.append("r", "r0")
    start = await store.read_room("r", 0)
    assert start is not None
    state = session({"r": (start.epoch, start.last)})
    store.hold(Dropped("n.11", rooms=["r"]), state)
    await backend.settled()
    await backend.append("r", "r1")
    if isinstance(backend, Redis):
        # Merged by wall time (ms): keep the direct message a clear millisecond later.
        await asyncio.sleep(0.01)
    store.send_held("n.11", envelope.encode_event("dm", "d1"), False)
    await backend.settled()
    held = await store.take("n.11", "secret-token", None)
    assert held is not None
    missed = await store.missed(held, {}, 0)
    assert missed is not None
    assert [data_of(p) for p, _ in missed] == ["r1", "d1"]


# room policies' history settings (history.py): per room, the same on both stores


async def test_a_policy_sets_its_rooms_history_size(make: Callable[..., Backend]) -> None:
    backend = make(history_size=3, policies={"p:*": RoomPolicy(history_size=5)})
    for n in range(1, 8):
        await backend.append("p:a", n)
        await backend.append("r", n)
    policed = await backend.store.read_room("p:a", 0)
    plain = await backend.store.read_room("r", 0)
    assert policed is not None and plain is not None
    assert [item.offset for item in policed.items] == [3, 4, 5, 6, 7]  # the policy's 5
    assert [item.offset for item in plain.items] == [5, 6, 7]  # the server's 3


async def test_a_resume_gets_a_policy_rooms_last_n_or_fails(
    make: Callable[..., Backend],
) -> None:
    """history_size N: a session that missed N messages gets them all; one that missed N + 1
    cannot be recovered (protocol.md 8: ``recovered: false``, not the last N)."""
    backend = make(history_size=2, policies={"p:*": RoomPolicy(history_size=4)})
    store = backend.store
    await backend.append("p:a", 0)
    start = await store.read_room("p:a", 0)
    assert start is not None
    store.hold(Dropped("n.p", rooms=["p:a"]), session({"p:a": (start.epoch, start.last)}))
    await backend.settled()
    held = await store.take("n.p", "secret-token", None)
    assert held is not None
    for n in range(1, 5):  # N = 4 missed: more than the server's 2
        await backend.append("p:a", n)
    missed = await store.missed(held, {}, 0)
    assert missed is not None and [data_of(p) for p, _ in missed] == [1, 2, 3, 4]
    await backend.append("p:a", 5)  # N + 1
    assert await store.missed(held, {}, 0) is None


async def test_a_room_without_history_resumes_with_a_gap(make: Callable[..., Backend]) -> None:
    """history_size 0: the room keeps nothing; its messages are still numbered, and a resume
    that missed some gets ``$gap`` for the room (first), the other rooms' replay after it."""
    backend = make(policies={"live:*": RoomPolicy(history_size=0)})
    store = backend.store
    await backend.append("live:x", 0)
    await backend.append("r", 0)
    live = await store.read_room("live:x", 0)
    plain = await store.read_room("r", 0)
    assert live is not None and plain is not None
    assert live.last == 1 and live.items == []  # numbered, nothing kept
    joined = {"live:x": (live.epoch, live.last), "r": (plain.epoch, plain.last)}
    store.hold(Dropped("n.l", rooms=["live:x", "r"]), session(joined))
    await backend.settled()
    held = await store.take("n.l", "secret-token", None)
    assert held is not None
    assert await store.missed(held, {}, 0) == []  # nothing missed: no gap
    await backend.append("live:x", 1)
    await backend.append("r", 1)
    missed = await store.missed(held, {}, 0)
    assert missed is not None
    gap = envelope.decode(missed[0][0], binary=False)
    assert isinstance(gap, envelope.Event)
    assert (gap.name, gap.data) == ("$gap", {"room": "live:x"})
    assert [data_of(p) for p, _ in missed[1:]] == [1]
    # The client saw offset 2 of the live room after all: nothing missed there.
    seen = await store.missed(held, {"live:x": [live.epoch, 2]}, 0)
    assert seen is not None and [data_of(p) for p, _ in seen] == [1]


async def test_a_policy_ttl_expires_its_rooms_messages(make: Callable[..., Backend]) -> None:
    backend = make(history_size=10, policies={"short:*": RoomPolicy(history_ttl=1)})
    store = backend.store
    await backend.append("short:a", 0)
    await backend.append("r", 0)
    short = await store.read_room("short:a", 0)
    plain = await store.read_room("r", 0)
    assert short is not None and plain is not None
    store.hold(Dropped("n.s", rooms=["short:a"]), session({"short:a": (short.epoch, 1)}))
    store.hold(Dropped("n.r", rooms=["r"]), session({"r": (plain.epoch, 1)}))
    await backend.settled()
    in_short = await store.take("n.s", "secret-token", None)
    in_plain = await store.take("n.r", "secret-token", None)
    assert in_short is not None and in_plain is not None
    await backend.append("short:a", 1)
    await backend.append("r", 1)
    assert await store.missed(in_short, {}, 0) is not None
    backend.advance(2)  # past the policy's 1 s, within the server's TTL (5 s)
    assert await store.missed(in_short, {}, 0) is None
    kept = await store.missed(in_plain, {}, 0)
    assert kept is not None and [data_of(p) for p, _ in kept] == [1]


async def test_the_stores_report_the_same_figures(make: Callable[..., Backend]) -> None:
    figures = make().store.stats()
    assert set(figures) == {
        "heldSessions", "heldEvicted", "historyRooms", "historyMessages", "unlogged",
        "lostDirect", "gaps", "caughtUp",
    }


# what differs by design


async def test_the_memory_store_logs_room_messages_itself() -> None:
    clock = Clock(0.0)
    store = MemoryStore(config(), clock)
    payload = store.log_room("r", "said", 1, False, None)
    epoch, last = store.position("r")
    packet = envelope.decode(payload, binary=False)
    assert isinstance(packet, envelope.Event) and packet.meta == ["r", epoch, 1] and last == 1
    assert store.stats()["historyMessages"] == 1


async def test_the_memory_store_caps_held_sessions() -> None:
    store = MemoryStore(config(max_connections=2), Clock(0.0))
    store.log_room("r", "said", 1, False, None)
    for n in range(3):
        store.hold(Dropped(f"s{n}", rooms=["r"]), session())
    assert list(store.held) == ["s1", "s2"] and store.evicted == 1
    assert store.rooms["r"].holders == 2  # the evicted one let go of its room


async def test_the_memory_store_forgets_rooms_nobody_needs() -> None:
    clock = Clock(0.0)
    store = MemoryStore(config(), clock)
    store.log_room("kept", "said", 1, False, None)
    store.log_room("in use", "said", 1, False, None)
    store.log_room("gone", "said", 1, False, None)
    store.hold(Dropped("s", rooms=["kept"]), session())
    clock.now += TTL + 1
    store.sweep({"in use"})
    assert set(store.rooms) == {"kept", "in use"}
    clock.now += WINDOW
    store.sweep(())
    assert store.held == {} and store.rooms == {}


async def test_the_memory_store_refuses_a_wrong_report() -> None:
    clock = Clock(0.0)
    store = MemoryStore(config(), clock)
    store.log_room("r", "said", 1, False, None)
    held_state = session({"r": store.position("r")})
    store.hold(Dropped("s", rooms=["r", "never"]), held_state)
    held = await store.take("s", "secret-token", None)
    assert held is not None
    assert await store.missed(held, {}, 0) is None  # no history of "never"


async def test_the_redis_store_leaves_room_logging_to_the_broker(
    redis_adapter: tuple[BrokerAdapter, redis.asyncio.Redis],
) -> None:
    adapter, probe = redis_adapter
    backend = Redis(config(), adapter, probe)
    try:
        store = backend.redis
        assert store.log_room("r", "said", 1, False, None) is None
        epoch, after = store.position("r")  # never delivered here: from now on, by time
        assert epoch == "" and after < 0
        backend.logs.positions["r"] = ("e", 4)
        assert store.position("r") == ("e", 4)
        await backend.append("r", 1)
        keys = backend.logs.room_keys(backend.channel("r"))
        for key in keys:  # idle room keys expire after recovery_window + history_ttl
            ttl = await probe.pttl(key)
            assert 0 < ttl <= (WINDOW + TTL) * 1000
    finally:
        await backend.cleanup()


async def test_the_redis_log_gives_each_room_its_policys_size_and_expiry(
    redis_adapter: tuple[BrokerAdapter, redis.asyncio.Redis],
) -> None:
    """The LOG script's size and expiry per room: a policy's TTL sets the keys' expiry
    (recovery_window + history_ttl), checked on the TTL Redis was given (no waiting)."""
    adapter, probe = redis_adapter
    cfg = config(history_size=3)
    history = limits(cfg, {
        "short:*": RoomPolicy(history_ttl=1), "long:*": RoomPolicy(history_ttl=1000),
        "big:*": RoomPolicy(history_size=5), "live:*": RoomPolicy(history_size=0),
    })
    backend = Redis(cfg, adapter, probe, history)
    try:
        for room in ("short:a", "long:a", "big:a", "live:a", "r"):
            for n in range(7):
                await backend.append(room, n)

        async def ttls(room: str) -> list[int]:
            keys = backend.logs.room_keys(backend.channel(room))
            return [await probe.pttl(key) for key in keys]

        assert all(0 < ttl <= (WINDOW + 1) * 1000 for ttl in await ttls("short:a"))
        assert all((WINDOW + TTL) * 1000 < ttl <= (WINDOW + 1000) * 1000
                   for ttl in await ttls("long:a"))
        assert all(0 < ttl <= (WINDOW + TTL) * 1000 for ttl in await ttls("r"))
        streams = {room: await probe.xlen(backend.logs.room_keys(backend.channel(room))[1])
                   for room in ("big:a", "r", "short:a")}
        assert streams == {"big:a": 5, "r": 3, "short:a": 3}
        meta, stream = backend.logs.room_keys(backend.channel("live:a"))
        assert await probe.exists(stream) == 0  # no history kept
        assert int(await probe.hget(meta, "n")) == 7  # but numbered
    finally:
        await backend.cleanup()


async def test_the_memory_store_follows_a_policy_set_later() -> None:
    cfg = config(history_size=5)
    history = HistoryLimits.of_config(cfg)
    store = MemoryStore(cfg, Clock(0.0), history=history)
    for n in range(5):
        store.log_room("p:a", "said", n, False, None)
    assert len(store.rooms["p:a"].entries) == 5
    history.use(lambda room: (2, None) if room.startswith("p:") else None)
    view = await store.read_room("p:a", 0)  # the next use applies it
    assert view is not None and [item.offset for item in view.items] == [4, 5]
    store.log_room("p:a", "said", 5, False, None)
    assert [entry[0] for entry in store.rooms["p:a"].entries] == [5, 6]


async def test_the_redis_store_forwards_to_where_a_session_resumed(
    redis_adapter: tuple[BrokerAdapter, redis.asyncio.Redis],
) -> None:
    adapter, probe = redis_adapter
    backend = Redis(config(), adapter, probe)
    try:
        store = backend.redis
        store.hold(Dropped("n.f"), session())
        await backend.settled()
        # Another node takes it; this one still has its record and learns it from Redis.
        other = RedisStore(
            config(), adapter, backend.logs, prefix=backend.prefix, node_id="there",
            channel=backend.channel, forward=lambda *args: None,
        )
        assert await other.take("n.f", "secret-token", None) is not None
        assert store.send_held("n.f", envelope.encode_event("dm", 1), False)
        await until(_async(lambda: backend.forwarded), bool)
        assert backend.forwarded[0][:2] == ("n.f", "there")
        # Expired meanwhile (not resumed anywhere): the message is counted as lost.
        store.hold(Dropped("n.g"), session())
        await backend.settled()
        await probe.delete(backend.redis.session_keys("n.g")[0])
        assert store.send_held("n.g", envelope.encode_event("dm", 1), False)
        await until(_async(lambda: store.lost_direct), bool)
    finally:
        await backend.cleanup()


async def test_the_redis_store_holds_nothing_it_cannot_encode(
    redis_adapter: tuple[BrokerAdapter, redis.asyncio.Redis],
) -> None:
    adapter, probe = redis_adapter
    backend = Redis(config(), adapter, probe)
    try:
        backend.redis.hold(Dropped("n.h", data={"x": object()}), session())
        assert not backend.redis.holds("n.h")
    finally:
        await backend.cleanup()


def _async(read: Callable[[], Any]) -> Callable[[], Any]:
    async def reader() -> Any:
        return read()

    return reader


async def test_the_server_picks_memory_without_a_room_log() -> None:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.server.local import LocalSide
    from smartsocket.server.rooms import RoomRegistry

    memory = MemoryStore(config())
    node = ClusterNode(LocalSide({}, RoomRegistry(), None))  # type: ignore[arg-type]
    assert pick_store(config(), node, memory) is memory
    assert pick_store(config(), node, None) is None


# the session state both stores carry


def test_direct_messages_since_a_sequence_number() -> None:
    clock = Clock(0.0)
    store = MemoryStore(config(history_size=2), clock)
    state = session()
    assert state.since(0) == [] and state.since(1) is None and state.since(-1) is None
    for n in range(3):
        store.direct_message(state, "dm", n, False)
    assert state.since(3) == []
    assert [e[0] for e in state.since(1) or ()] == [2, 3]
    assert state.since(0) is None  # the first one is gone (history_size)
    clock.now += TTL + 1
    state.trim(clock.now - TTL)
    assert state.since(2) is None  # too old now


def test_replies_answer_every_retry_of_a_running_call() -> None:
    replies = Replies(2)
    first, retry, other = object(), object(), object()
    replies.running[1] = ("k", first)
    replies.running[2] = ("k", retry)  # the same call, retried on a new connection
    replies.running[3] = ("j", other)
    assert replies.is_running("k") and not replies.is_running("x")
    assert replies.finish(1, "ok", None) == [(1, first), (2, retry)]
    assert list(replies.running) == [3]
    replies.remember("a", 1, None)
    replies.remember("b", 2, None)  # over the limit: the oldest outcome goes
    assert list(replies.done) == ["a", "b"]


# the Redis replay in detail: positions a node knew, epochs that began after the join


async def redis_held(
    backend: Redis, sid: str, joined: dict[str, tuple[str, int]], rooms: list[str]
) -> Any:
    backend.redis.hold(Dropped(sid, rooms=rooms), session(joined))
    await backend.settled()
    held = await backend.redis.take(sid, "secret-token", None)
    assert held is not None
    return held


async def test_redis_replays_by_time_what_came_after_an_unknown_join(
    redis_adapter: tuple[BrokerAdapter, redis.asyncio.Redis],
) -> None:
    adapter, probe = redis_adapter
    backend = Redis(config(history_size=2), adapter, probe)
    store = backend.redis
    try:
        joined = store.position("r")  # this node knew no position: by time
        held = await redis_held(backend, "n.t", {"r": joined}, ["r"])
        assert await store.missed(held, {}, 0) == []  # no history: nothing was sent
        await backend.append("r", 1)
        await backend.append("r", 2)
        missed = await store.missed(held, {}, 0)
        assert missed is not None and [data_of(p) for p, _ in missed] == [1, 2]
        await backend.append("r", 3)  # the history (2) no longer starts at the join
        assert await store.missed(held, {}, 0) is None
        # A position reported by the client replaces the time.
        view = await store.read_room("r", 0)
        assert view is not None
        again = await store.missed(held, {"r": [view.epoch, 2]}, 0)
        assert again is not None and [data_of(p) for p, _ in again] == [3]
    finally:
        await backend.cleanup()


async def test_redis_replays_from_an_epoch_that_began_after_the_join(
    redis_adapter: tuple[BrokerAdapter, redis.asyncio.Redis],
) -> None:
    adapter, probe = redis_adapter
    backend = Redis(config(), adapter, probe)
    store = backend.redis
    try:
        await backend.append("r", 0)
        old = await store.read_room("r", 0)
        assert old is not None
        held = await redis_held(backend, "n.e", {"r": (old.epoch, old.last)}, ["r"])
        await backend.lose_history("r")  # Redis restarted: a new epoch
        await backend.append("r", 1)
        await backend.append("r", 2)
        new = await store.read_room("r", 0)
        assert new is not None and new.epoch != old.epoch
        # The client got offset 1 of the new epoch (after a $gap): it misses offset 2 only.
        missed = await store.missed(held, {"r": [new.epoch, 1]}, 0)
        assert missed is not None and [data_of(p) for p, _ in missed] == [2]
        # A position in an epoch that is not the room's: from the join, which is gone.
        assert await store.missed(held, {"r": ["bogus", 1]}, 0) is None
    finally:
        await backend.cleanup()


async def test_redis_replays_nothing_from_a_history_that_may_have_lost_its_tail(
    redis_adapter: tuple[BrokerAdapter, redis.asyncio.Redis],
) -> None:
    adapter, probe = redis_adapter
    backend = Redis(config(), adapter, probe)
    store = backend.redis
    try:
        await backend.append("r", 0)
        view = await store.read_room("r", 0)
        assert view is not None
        held = await redis_held(backend, "n.c", {"r": (view.epoch, view.last)}, ["r"])
        await backend.append("r", 1)
        # The epoch's incarnation is another server's (it restarted or failed over).
        await probe.hset(backend.logs.room_keys(backend.channel("r"))[0], "i", "another")
        later = await store.read_room("r", 0)
        assert later is not None and not later.current
        assert await store.missed(held, {}, 0) is None
        assert await store.missed(held, {"r": [view.epoch, 5]}, 0) is None  # ahead of it
    finally:
        await backend.cleanup()
