"""One timer for the next deadline of every Socket.IO session of an endpoint.

An idle session still has a deadline (its next ping, its ping timeout): a ``TimerHandle`` and
the event loop's own timer for each cost ~370 bytes of its memory. Here every session's
deadline is an entry ``(deadline, seq, sid)`` in one heap, and one timer is armed at the
earliest. Entries are never removed: a session that arms an earlier deadline, or closes,
leaves a stale one behind, skipped when it comes up (the session no longer holds that
deadline, or is gone from ``sessions``). An entry holds the sid, not the session: a closed
session is freed at once. A storm of short sessions leaves many entries of gone sessions
(each for up to its connect timeout): when the heap has doubled since it was last cleaned,
those are dropped (amortized O(1) per entry).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Mapping
from typing import Protocol

_MIN_LIMIT = 1024


class DeadlineOwner(Protocol):
    def deadline_due(self, deadline: float) -> None:
        """``deadline`` came (the owner checks it still holds it)."""


class Deadlines:
    """Deadlines of the sessions in ``sessions`` (by sid), on the running loop's clock."""

    __slots__ = ("_at", "_heap", "_limit", "_seq", "_sessions", "_timer")

    def __init__(self, sessions: Mapping[str, DeadlineOwner]) -> None:
        self._sessions = sessions
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()  # ties in order of arming; sids never compared
        self._timer: asyncio.TimerHandle | None = None
        self._at: float | None = None  # when the timer fires
        self._limit = _MIN_LIMIT  # entries above which gone sessions' are dropped

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def arm(self, sid: str, deadline: float) -> None:
        """Call ``sessions[sid].deadline_due(deadline)`` once ``deadline`` comes."""
        heapq.heappush(self._heap, (deadline, next(self._seq), sid))
        if len(self._heap) > self._limit:
            self._clean()
        if self._at is None or deadline < self._at:
            self._rearm(deadline)

    def _clean(self) -> None:
        sessions = self._sessions
        self._heap = [entry for entry in self._heap if entry[2] in sessions]
        heapq.heapify(self._heap)
        self._limit = max(_MIN_LIMIT, 2 * len(self._heap))

    def _rearm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = self._at = None
        heap = self._heap
        # What the timer was armed for is due, even if the loop's timer fired a little early
        # (libuv's are in milliseconds): the owner's own clock decides what is due. Taken off
        # first: an owner that arms the same deadline again (not due by its clock yet) is
        # served by the next timer, not again in this loop.
        now = max(asyncio.get_running_loop().time(), heap[0][0] if heap else 0.0)
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        sessions = self._sessions
        for deadline, _, sid in due:
            session = sessions.get(sid)
            if session is not None:
                session.deadline_due(deadline)  # may arm again
        if heap and self._at is None:
            self._rearm(heap[0][0])
