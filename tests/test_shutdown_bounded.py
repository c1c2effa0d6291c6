"""A node told to stop exits, whatever its broker link is doing (bench/RESULTS.md: a node alive
>10 min after SIGTERM following a cross-node flood). The link's task waits are bounded
(``BrokerAdapter``), and ``server.listen()`` arms an exit watchdog (server/watchdog.py). A
throwaway redis-server (its own port) is paused with SIGSTOP; the shared Redis never is."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clusters import Node, ThrowawayRedis, prefix
from smartsocket.cluster.brokers.base import Outbound
from smartsocket.cluster.brokers.redis import RedisAdapter
from smartsocket.server.watchdog import ExitWatchdog
from smartsocket.testing import wait_for

SECRET = "shutdown-secret-0123456789"
BOUND = 60.0  # generous: a hang is forever, a bounded close takes seconds


class SwallowingAdapter(RedisAdapter):
    """Fault injection: a pipeline that swallows its task's cancellation (what redis-py did
    to the link's writer once), so the writer is back on its loop after being cancelled."""

    async def _send(self, batch: list[Outbound]) -> None:
        try:
            await super()._send(batch)
        except asyncio.CancelledError:
            return


@pytest.mark.asyncio
async def test_the_link_closes_when_its_writer_swallows_the_cancellation(
    redis_server: ThrowawayRedis,
) -> None:
    adapter = SwallowingAdapter(redis_server.url)
    await adapter.start(lambda channel, data: None, lambda connected: None)
    await wait_for(lambda: adapter.connected, 10)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # the pipeline never gets its answer
    assert adapter.publish("x", b"1")
    await wait_for(lambda: not adapter._queue, BOUND)  # the writer took it: blocked in _send
    await asyncio.wait_for(adapter.close(), BOUND)  # hung for good before the fix
    assert not adapter.connected


def post_batches(node: Node, stop: threading.Event) -> None:
    """Batches of publishes to ``node`` until ``stop`` (or the node is gone)."""
    body = json.dumps({"operations": [
        {"op": "publish", "room": "r", "event": "n", "data": n} for n in range(500)
    ]}).encode()
    while not stop.is_set():
        request = urllib.request.Request(
            node.http + "/smartsocket/api/batch", data=body, method="POST",
            headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=BOUND) as response:
                response.read()
        except OSError:
            return


def exit_code_within(proc: subprocess.Popen[bytes], bound: float) -> int | None:
    try:
        return proc.wait(bound)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("recovery", ["0", "30"], ids=["plain", "recovery"])
def test_sigterm_ends_a_node_while_its_broker_is_paused_under_a_flood(
    redis_server: ThrowawayRedis, tmp_path: Path, recovery: str
) -> None:
    node = Node(
        redis_server.url, prefix(), tmp_path / "node.log", "--api-secret", SECRET,
        "--shutdown-timeout", "1", "--cluster-queue", "50", "--recovery-window", recovery,
        "--rate-limit-messages", "0",
    )
    stop = threading.Event()
    flood = threading.Thread(target=post_batches, args=(node, stop), daemon=True)
    try:
        node.wait_ready()
        flood.start()
        _wait_published(node)
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # congested: batches wait for it
        node.proc.send_signal(signal.SIGTERM)
        code = exit_code_within(node.proc, BOUND)
        assert code is not None, f"no exit {BOUND} s after SIGTERM:\n{node.log.read_text()}"
        assert code == 0, node.log.read_text()  # 1: the exit watchdog had to end it
    finally:
        stop.set()
        node.stop()
        flood.join(BOUND)


def _wait_published(node: Node) -> None:
    """Until the flood got through to the broker link (the node published something)."""
    deadline = time.monotonic() + BOUND
    while _stats(node)["cluster"]["published"] < 100:
        assert time.monotonic() < deadline, "the flood never reached the broker link"
        time.sleep(0.02)


def _stats(node: Node) -> dict[str, Any]:
    with urllib.request.urlopen(node.http + "/smartsocket/stats", timeout=10) as response:
        body: dict[str, Any] = json.load(response)
        return body


def test_the_exit_watchdog_ends_a_stop_that_hangs() -> None:
    ended = threading.Event()
    codes: list[int] = []

    def exit(code: int) -> None:
        codes.append(code)
        ended.set()

    watchdog = ExitWatchdog(0.01, exit=exit)
    loop = asyncio.new_event_loop()
    try:
        watchdog.arm(loop)
        assert ended.wait(BOUND)
        assert codes == [1]
    finally:
        watchdog.disarm()
        loop.close()


def test_a_disarmed_exit_watchdog_does_nothing() -> None:
    codes: list[int] = []
    watchdog = ExitWatchdog(3600.0, exit=codes.append)
    loop = asyncio.new_event_loop()
    try:
        watchdog.arm(loop)
        assert watchdog.armed
        watchdog.disarm()
        assert not watchdog.armed and codes == []
    finally:
        loop.close()
