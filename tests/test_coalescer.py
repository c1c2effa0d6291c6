"""The write coalescer: one flush per loop iteration per connection, frames in order
(a loop and fake connections; no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from smartsocket.transport import WriteCoalescer


class FakeConnection:
    """What the coalescer needs of a connection: frames queued, flushed when told."""

    def __init__(self, coalescer: WriteCoalescer, log: list[tuple[str, list[bytes]]],
                 name: str) -> None:
        self.coalescer = coalescer
        self.log = log
        self.name = name
        self.out: list[bytes] = []

    def send(self, frame: bytes) -> None:
        if not self.out:  # the first frame of the iteration registers the connection
            self.coalescer.add(cast(Any, self))
        self.out.append(frame)

    def flush_pending(self) -> None:
        self.log.append((self.name, self.out))
        self.out = []


def setup(*names: str) -> tuple[list[tuple[str, list[bytes]]], list[FakeConnection]]:
    coalescer = WriteCoalescer(asyncio.get_running_loop())
    log: list[tuple[str, list[bytes]]] = []
    return log, [FakeConnection(coalescer, log, name) for name in names]


async def iteration() -> None:
    """Let the loop run once more (the flush is a ``call_soon`` callback)."""
    await asyncio.sleep(0)


async def test_frames_of_one_iteration_go_out_in_one_flush_in_order() -> None:
    log, (a,) = setup("a")
    for i in range(5):
        a.send(b"%d" % i)
    assert log == []  # nothing is written while the iteration runs
    await iteration()
    assert log == [("a", [b"0", b"1", b"2", b"3", b"4"])]


async def test_every_connection_is_flushed_once_in_the_order_it_was_first_written() -> None:
    log, (a, b, c) = setup("a", "b", "c")
    b.send(b"b1")
    a.send(b"a1")
    b.send(b"b2")
    c.send(b"c1")
    a.send(b"a2")
    await iteration()
    assert log == [("b", [b"b1", b"b2"]), ("a", [b"a1", b"a2"]), ("c", [b"c1"])]


async def test_the_next_iteration_gets_a_flush_of_its_own() -> None:
    log, (a,) = setup("a")
    a.send(b"1")
    await iteration()
    a.send(b"2")
    a.send(b"3")
    await iteration()
    assert log == [("a", [b"1"]), ("a", [b"2", b"3"])]


async def test_a_frame_sent_during_a_flush_waits_for_the_next_iteration() -> None:
    """A write made while flushing (e.g. a handler run by a flush) is not lost, and does
    not make the running flush loop forever."""
    log, (a, b) = setup("a", "b")
    flush_a = a.flush_pending

    def flush_and_write() -> None:
        flush_a()
        b.send(b"late")

    a.flush_pending = flush_and_write  # type: ignore[method-assign]
    a.send(b"first")
    await iteration()
    assert log == [("a", [b"first"])]
    await iteration()
    assert log == [("a", [b"first"]), ("b", [b"late"])]


async def test_nothing_is_scheduled_without_writes() -> None:
    log, _ = setup("a")
    await iteration()
    await iteration()
    assert log == []


async def test_many_frames_many_connections_one_callback() -> None:
    """Under load the batch grows by itself: one scheduled callback per iteration."""
    loop = asyncio.get_running_loop()
    scheduled = 0
    original = loop.call_soon

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal scheduled
        scheduled += 1
        return original(callback, *args, **kwargs)

    log, conns = setup(*(str(i) for i in range(50)))
    loop.call_soon = counting  # type: ignore[method-assign]
    try:
        for _ in range(10):
            for conn in conns:
                conn.send(b"x")
    finally:
        loop.call_soon = original  # type: ignore[method-assign]
    assert scheduled == 1
    await iteration()
    assert [name for name, _ in log] == [str(i) for i in range(50)]
    assert all(frames == [b"x"] * 10 for _, frames in log)
