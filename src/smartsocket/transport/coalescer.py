"""The server's write coalescer: one flush per connection per event-loop iteration."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smartsocket.transport.server_connection import ServerConnection


class WriteCoalescer:
    """Flushes every connection that has queued frames once, at the end of the loop iteration.

    The first frame queued for a connection in an iteration registers it here; ``call_soon``
    runs the flush after the current batch of I/O callbacks, so under load batches grow by
    themselves and under light load no latency is added.
    """

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[ServerConnection] = []
        self._scheduled = False

    def add(self, conn: ServerConnection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        self._scheduled = False
        for conn in dirty:
            conn.flush_pending()
