"""A real database restart under the outbox consumer, on a throwaway PostgreSQL cluster of our
own (initdb in a temporary directory, a free port): the shared server is never restarted."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outboxdb import Recorder, asyncpg, database, until
from smartsocket.outbox import OutboxConsumer, insert_row

BINDIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))

pytestmark = pytest.mark.skipif(
    not BINDIRS or os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs PostgreSQL's server binaries and root (to run them as the postgres user)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """initdb + pg_ctl as the postgres OS user, in a directory removed afterwards."""

    def __init__(self) -> None:
        self.bindir = Path(BINDIRS[-1])
        self.root = Path(tempfile.mkdtemp(prefix="smartsocket-outbox-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                       capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--no-sync")

    def start(self) -> None:
        opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1"
                f" -c unix_socket_directories={self.root} -c fsync=off")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w",
                  "-l", str(self.root / "log"), "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.init()
        c.start()
        yield c
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


async def insert(dsn: str, values: range) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for i in values:
                await insert_row(conn, "r", "e", i)
    finally:
        await conn.close()


async def test_a_database_restart_mid_stream_loses_nothing(cluster: Cluster) -> None:
    rec = Recorder()
    entered, release = asyncio.Event(), asyncio.Event()

    async def hook(room: str, event: str, data: Any) -> None:
        if data == 30 and not release.is_set():
            entered.set()  # row 30 is in the consumer's hands when the database goes down
            await release.wait()

    rec.hook = hook
    async with database(cluster.url) as dsn:
        consumer = OutboxConsumer(dsn, rec, batch_size=10, poll_interval=5.0,
                                  reconnect_delay=(0.05, 0.3))
        async with consumer:
            await insert(dsn, range(0, 60))
            await asyncio.wait_for(entered.wait(), 30)
            await asyncio.to_thread(cluster.stop)
            release.set()
            await until(lambda: consumer.reconnects >= 2, what="reconnect attempts")
            await asyncio.to_thread(cluster.start)
            await insert(dsn, range(60, 100))
            await until(lambda: rec.room("r")[-1:] == [99], timeout=60)
        got = rec.room("r")
    # Rows 30-39 were the batch in flight: published, but their delete never committed, so the
    # whole batch comes again (at-least-once). Nothing is lost; each run is in order.
    assert got[:40] == list(range(40))
    assert got[40:] == list(range(30, 100))
