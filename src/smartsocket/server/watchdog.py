"""``ExitWatchdog``: a process told to stop (SIGTERM, SIGINT) exits, even when something it
awaits while closing never ends.

The graceful close is bounded step by step (``Lifecycle.close``: handlers up to
``shutdown_timeout``, the close handshakes, the broker link), but a process also ends its event
loop (every task left is cancelled and awaited) and the interpreter; a task that ignores
cancellation, or a read that never returns, would keep it alive for good (seen once after a
cross-node flood: a node alive >10 min after SIGTERM). The watchdog is a timer thread, so it
fires even when the event loop is stuck: it logs every thread's stack and the event loop's
tasks (what it was waiting for) and ends the process with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger("smartsocket.server")

# Past ``shutdown_timeout``: the close handshakes (2.5 s at most), the broker link's flush,
# task and disconnect (1 s each), the listener (1 s): Lifecycle.close, with room to spare.
EXIT_MARGIN = 10.0


class ExitWatchdog:
    """Armed when the stop signal arrives; ends the process ``grace`` seconds later unless
    ``disarm``-ed first (``exit`` is ``os._exit``; tests pass their own)."""

    def __init__(self, grace: float, exit: Callable[[int], object] = os._exit) -> None:
        self.grace = grace
        self._exit = exit
        self._timer: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            return
        self._loop = loop
        self._timer = threading.Timer(self.grace, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _fire(self) -> None:
        logger.error(
            "still not stopped %.1f s after the stop signal: exiting (status 1); it was "
            "waiting for:\n%s", self.grace, self.report(),
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(1)

    def report(self) -> str:
        """Every thread's stack, then the event loop's tasks (best effort: the loop runs in
        another thread and may change them meanwhile)."""
        out = io.StringIO()
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):  # no stderr
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        loop = self._loop
        if loop is not None:
            try:
                for task in list(asyncio.all_tasks(loop)):
                    out.write(f"{task!r}\n")
                    task.print_stack(limit=8, file=out)
            except RuntimeError:  # the set changed while read
                out.write("(the tasks changed while read)\n")
        return out.getvalue()
