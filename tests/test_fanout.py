"""server/fanout.py and server/rooms.py without a network: frames built once, compressed at
most once, exclusions in one shape, and the room registry's bookkeeping."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from smartsocket import compression
from smartsocket.config import Config
from smartsocket.metrics import Stats
from smartsocket.protocol import envelope
from smartsocket.server import fanout as fanout_module
from smartsocket.server.fanout import Fanout, count_members, exclude_ids, skip_set
from smartsocket.server.rooms import RoomRegistry
from smartsocket.server.socket import OWN, PLAIN, SHARED, Socket
from smartsocket.transport import build_frame


class Member:
    """A member as Fanout sees one: how it takes compressed frames, and a frame sink."""

    def __init__(self, sid: str, mode: int = PLAIN) -> None:
        self.id = sid
        self.compression_mode = mode
        self.frames: list[bytes] = []
        self.own: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send_own_compressed(self, payload: bytes, binary: bool) -> int:
        self.own.append(payload)
        return len(payload) // 2


def members_of(*members: Member) -> Any:
    return {m: m.send for m in members}


def inflate(frame: bytes) -> bytes:
    """The payload of a short compressed frame (RFC 7692 7.2.2: append 00 00 ff ff)."""
    assert frame[0] & 0x40, "RSV1 set"
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4
    return zlib.decompressobj(-15).decompress(frame[start:] + b"\x00\x00\xff\xff")


BIG = envelope.encode_event("news", {"text": "x" * 2000})


def test_plain_broadcast_is_framed_once_and_shared() -> None:
    fan = Fanout(Config(enable_compression=False), None)
    a, b, c = Member("a"), Member("b"), Member("c")
    payload = envelope.encode_event("hi", 1)
    assert fan.deliver(members_of(a, b, c), payload, False, None) == 3
    assert a.frames == [build_frame(payload)]
    assert a.frames[0] is b.frames[0] is c.frames[0]  # one bytes object for everyone


def test_exclusions_skip_members() -> None:
    fan = Fanout(Config(enable_compression=False), None)
    a, b = Member("a"), Member("b")
    skip: Any = {b}
    assert fan.deliver(members_of(a, b), b"[0,\"e\"]", False, skip) == 1
    assert (len(a.frames), len(b.frames)) == (1, 0)
    assert count_members(members_of(a, b), skip) == 1
    assert count_members(members_of(a, b), None) == 2


def test_compressed_once_for_all_shared_members(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = compression.compress_once

    def counting(payload: Any, **kw: Any) -> bytes | None:
        calls.append(len(payload))
        return real(payload, **kw)

    monkeypatch.setattr(fanout_module.compression, "compress_once", counting)
    fan = Fanout(Config(compression_threshold=100), None)
    shared = [Member(f"s{i}", SHARED) for i in range(5)]
    plain, own = Member("p", PLAIN), Member("o", OWN)
    assert fan.deliver(members_of(*shared, plain, own), BIG, False, None) == 7
    assert len(calls) == 1  # compressed once, for the five that share it
    assert all(m.frames[0] is shared[0].frames[0] for m in shared)
    assert inflate(shared[0].frames[0]) == BIG
    assert plain.frames == [build_frame(BIG)]
    assert own.own == [BIG] and not own.frames  # its own deflater, not the shared frame


def test_no_compression_below_the_threshold() -> None:
    fan = Fanout(Config(compression_threshold=100_000), None)
    member = Member("s", SHARED)
    fan.deliver(members_of(member), BIG, False, None)
    assert member.frames == [build_frame(BIG)]


def test_given_compression_is_used_not_redone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broadcast from another node arrives compressed already (``tried``)."""
    deflated = compression.compress_once(BIG, threshold=0)
    assert deflated is not None
    monkeypatch.setattr(
        fanout_module.compression, "compress_once",
        lambda *a, **k: pytest.fail("compressed again"),
    )
    fan = Fanout(Config(compression_threshold=100), None)
    member = Member("s", SHARED)
    fan.deliver(members_of(member), BIG, False, None, deflated, True)
    assert inflate(member.frames[0]) == BIG
    # tried, and it did not pay (None): the plain frame
    member = Member("s", SHARED)
    fan.deliver(members_of(member), BIG, False, None, None, True)
    assert member.frames == [build_frame(BIG)]


def test_the_publish_decision_matches_delivery() -> None:
    on = Fanout(Config(compression_threshold=100), None)
    deflated, tried = on.compress_for_publish(BIG)
    assert tried and deflated is not None and zlib.decompressobj(-15).decompress(
        deflated + b"\x00\x00\xff\xff"
    ) == BIG
    assert on.compress_for_publish(b"short") == (None, False)
    off = Fanout(Config(enable_compression=False), None)
    assert off.compress_for_publish(BIG) == (None, False)


def test_stats_count_deliveries_and_wire_bytes() -> None:
    stats = Stats()
    fan = Fanout(Config(compression_threshold=100), stats)
    fan.deliver(members_of(Member("a", SHARED), Member("b", PLAIN)), BIG, False, None)
    assert stats.messages_out == 2
    assert stats.bytes_out_wire < 2 * len(BIG)  # one of them went compressed


def test_exclude_shapes() -> None:
    assert exclude_ids(None) == ()
    assert exclude_ids("a") == ("a",)
    assert exclude_ids(["a", "b", "a"]) == ("a", "b")
    sockets: dict[str, Socket] = {}
    assert skip_set(["nobody"], sockets) == set()


def test_room_registry_membership_and_hooks() -> None:
    events: list[tuple[str, ...]] = []

    class Hook:
        def room_joined(self, room: str, socket: Any, created: bool) -> None:
            events.append(("joined", room, socket.id, str(created)))

        def room_left(self, room: str, socket: Any, deleted: bool) -> None:
            events.append(("left", room, socket.id, str(deleted)))

        def room_removed(self, room: str, sockets: Any) -> None:
            events.append(("removed", room, *sorted(s.id for s in sockets)))

    registry = RoomRegistry()
    registry.hook = Hook()  # type: ignore[assignment]
    a, b = Member("a"), Member("b")
    sa: Any = a
    sb: Any = b
    assert registry.add("r", sa, a.send)
    assert not registry.add("r", sa, a.send)  # already a member
    assert registry.add("r", sb, b.send)
    assert len(registry) == 1 and "r" in registry and registry.names() == ["r"]
    assert list(registry.members("r")) == [a, b]
    assert registry.members("nowhere") == {}
    registry.add("s", sb, b.send)
    assert registry.largest(1) == [("r", 2)]
    assert registry.discard("r", sa)
    assert not registry.discard("r", sa)
    assert registry.discard("r", sb)  # the last one out drops the room
    assert "r" not in registry
    assert list(registry.pop("s")) == [b]
    assert registry.pop("s") == {}
    assert events == [
        ("joined", "r", "a", "True"), ("joined", "r", "b", "False"),
        ("joined", "s", "b", "True"), ("left", "r", "a", "False"),
        ("left", "r", "b", "True"), ("removed", "s", "b"),
    ]


class Sneaky(str):
    """A str subclass that says it equals anything: the name check must not trust it."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


def test_every_broadcast_checks_its_event_name_even_in_a_run_of_the_same() -> None:
    from smartsocket import SmartSocket

    room = SmartSocket().room("r")
    with pytest.raises(ValueError):
        room.broadcast("", 0)  # the first broadcast: nothing checked yet
    assert room.broadcast("ok", 1) == 0
    assert room.broadcast("ok", 2) == 0  # the same name: checked once, still fine
    for bad in ("$welcome", "a\nb", "", Sneaky("$x"), 5):
        with pytest.raises(ValueError):
            room.broadcast(bad, 3)  # type: ignore[arg-type]
    assert room.broadcast("ok", 4) == 0
    with pytest.raises(ValueError, match="reserved"):
        room.broadcast("$ok", 5)
