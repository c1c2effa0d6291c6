from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clusters import ThrowawayRedis
from smartsocket import SmartSocket
from smartsocket.demo import create_app
from smartsocket.testing import running

# The slowest modules (seconds of test time each, scripts/test's --durations) come first:
# pytest-xdist's --dist loadfile hands whole modules out in this order, so none of them is left
# running alone at the end. Only the order changes: every module passes in any order.
SLOW_FIRST = (
    "test_packaging.py", "test_cli.py", "test_fuzz.py", "test_emitter.py",
    "test_cluster_recovery.py", "test_examples.py", "test_socketio_roundtrip.py",
    "test_slow_consumer.py", "test_slow_subscriber.py", "test_doc_blocks.py",
    "test_cluster_faults.py", "test_cluster_nodes.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the tests of a module keep their order


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
