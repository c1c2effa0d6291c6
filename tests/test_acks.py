"""The ack tracker on its own: ids, replies, timeouts, cancellation (a loop, no network)."""

from __future__ import annotations

import asyncio

import pytest

from smartsocket.acks import AckTracker
from smartsocket.errors import AckError, AckTimeout
from smartsocket.protocol.envelope import MAX_ACK_ID, AckErrorInfo, AckReply


async def test_ids_count_up_from_one_and_replies_resolve_their_future() -> None:
    acks = AckTracker()
    first, f1 = acks.create("a", None)
    second, f2 = acks.create("b", None)
    assert (first, second) == (1, 2) and len(acks) == 2
    assert acks.resolve(second, {"ok": True})
    assert acks.resolve(first, 7)
    assert await f1 == 7 and await f2 == {"ok": True}
    assert len(acks) == 0


async def test_an_unknown_or_repeated_reply_is_reported() -> None:
    acks = AckTracker()
    ack_id, future = acks.create("a", None)
    assert not acks.resolve(ack_id + 1, None)
    assert acks.resolve(ack_id, None)
    assert not acks.resolve(ack_id, None)  # answered already
    assert await future is None


async def test_an_error_reply_raises_ack_error_with_retry_after() -> None:
    acks = AckTracker()
    ack_id, future = acks.create("a", None)
    info = AckErrorInfo(code="rate_limited", message="slow down", retry_after=1.5)
    reply = AckReply(ack_id=ack_id, result=None, error=info)
    assert acks.resolve_reply(reply)
    with pytest.raises(AckError) as raised:
        await future
    assert raised.value.code == "rate_limited" and raised.value.retry_after == 1.5


async def test_a_result_reply_resolves() -> None:
    acks = AckTracker()
    ack_id, future = acks.create("a", None)
    assert acks.resolve_reply(AckReply(ack_id=ack_id, result=[1, 2]))
    assert await future == [1, 2]


async def test_no_reply_in_time_raises_ack_timeout_and_a_late_reply_is_unknown() -> None:
    acks = AckTracker()
    ack_id, future = acks.create("slow", 0.01)
    with pytest.raises(AckTimeout):
        await future
    assert len(acks) == 0
    assert not acks.resolve(ack_id, "late")


async def test_a_reply_in_time_cancels_the_timer() -> None:
    acks = AckTracker()
    ack_id, future = acks.create("a", 0.02)
    acks.resolve(ack_id, "on time")
    await asyncio.sleep(0.04)  # the timer would have fired by now
    assert future.result() == "on time"


async def test_a_caller_that_stops_waiting_frees_the_id() -> None:
    acks = AckTracker()
    ack_id, future = acks.create("a", 10.0)
    future.cancel()
    await asyncio.sleep(0)  # done callbacks run on the next iteration
    assert len(acks) == 0
    assert not acks.resolve(ack_id, "late")  # the peer is told unknown_ack


async def test_forget_cancels_a_call_that_was_never_sent() -> None:
    acks = AckTracker()
    ack_id, future = acks.create("a", 10.0)
    acks.forget(ack_id)
    acks.forget(ack_id)  # twice is harmless
    assert future.cancelled() and len(acks) == 0


async def test_fail_all_fails_every_pending_call() -> None:
    acks = AckTracker()
    futures = [acks.create("a", 10.0)[1], acks.create("b", None)[1]]
    acks.fail_all(ConnectionError("closed"))
    for future in futures:
        with pytest.raises(ConnectionError):
            await future
    assert len(acks) == 0


async def test_ids_wrap_after_the_largest_and_skip_pending_ones() -> None:
    acks = AckTracker()
    held, _ = acks.create("a", None)  # id 1 stays pending
    assert held == 1
    acks._next_id = MAX_ACK_ID - 1  # jump to the end of the id space
    assert acks.create("b", None)[0] == MAX_ACK_ID
    assert acks.create("c", None)[0] == 2  # 1 is still pending
