from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clusters import ThrowawayRedis
from smartsocket import SmartSocket
from smartsocket.demo import create_app
from smartsocket.testing import running


@pytest.fixture
async def demo() -> AsyncIterator[SmartSocket]:
    """The demo app (echo/join/leave/chat) on a free port."""
    async with running(create_app()) as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A throwaway redis-server of the test's own (free port, directory under ``tmp_path``), to
    pause (SIGSTOP: ``clusters.paused``), kill, restart or restore; the shared Redis never is.
    Resumed and killed when the test ends, whatever state the test left it in."""
    server = ThrowawayRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.signal(signal.SIGCONT)
        server.kill()
