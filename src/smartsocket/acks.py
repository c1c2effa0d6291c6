"""Pending acks of one connection: ids, futures and timeouts. Shared by server and client."""

from __future__ import annotations

import asyncio
from typing import Any

from smartsocket.errors import AckError, AckTimeout
from smartsocket.protocol.envelope import MAX_ACK_ID, AckReply


class AckTracker:
    """Hands out ack ids and resolves the futures waiting for them.

    A timer per call (``call_later``) is cheaper than ``wait_for`` and needs no task.
    """

    __slots__ = ("_loop", "_next_id", "_pending")

    def __init__(self) -> None:
        self._next_id = 0
        self._pending: dict[int, tuple[asyncio.Future[Any], asyncio.TimerHandle | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def create(self, event: str, timeout: float | None) -> tuple[int, asyncio.Future[Any]]:
        """Reserve an id for a call to ``event`` that fails with AckTimeout after ``timeout``."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        ack_id = self._next_id = self._next_id % MAX_ACK_ID + 1
        while ack_id in self._pending:  # only after 2**53 calls with one still pending
            ack_id = self._next_id = self._next_id % MAX_ACK_ID + 1
        future: asyncio.Future[Any] = loop.create_future()
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._expire, ack_id, event, timeout)
        self._pending[ack_id] = (future, timer)
        future.add_done_callback(lambda _: self._discard(ack_id))
        return ack_id, future

    def resolve(self, ack_id: int, result: Any, error: AckError | None = None) -> bool:
        """Deliver a reply; False when ``ack_id`` is not pending (unknown or already expired)."""
        entry = self._pending.pop(ack_id, None)
        if entry is None:
            return False
        future, timer = entry
        if timer is not None:
            timer.cancel()
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        return True

    def forget(self, ack_id: int) -> None:
        """Drop a call that could not be sent (its future is cancelled, never awaited)."""
        entry = self._pending.pop(ack_id, None)
        if entry is not None:
            if entry[1] is not None:
                entry[1].cancel()
            entry[0].cancel()

    def resolve_reply(self, reply: AckReply) -> bool:
        """Deliver a decoded ack reply (an ack error becomes an AckError for the caller)."""
        info = reply.error
        error = None
        if info is not None:
            error = AckError(info.code, info.message, retry_after=info.retry_after)
        return self.resolve(reply.ack_id, reply.result, error)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending call, e.g. because the connection closed."""
        pending, self._pending = self._pending, {}
        for future, timer in pending.values():
            if timer is not None:
                timer.cancel()
            if not future.done():
                future.set_exception(exc)

    def _expire(self, ack_id: int, event: str, timeout: float) -> None:
        entry = self._pending.pop(ack_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(AckTimeout(event, timeout))

    def _discard(self, ack_id: int) -> None:
        # The caller cancelled its await: forget the id so a late reply reports unknown_ack.
        entry = self._pending.get(ack_id)
        if entry is not None and entry[0].done():
            del self._pending[ack_id]
            if entry[1] is not None:
                entry[1].cancel()
