"""scripts/redis-cluster: the test run stops the throwaway Redis Cluster it started, and only
that one. Runs on ports of its own, away from the cluster other test runs use (7101-7103) and
from any other run of these tests (see ``cluster_ports``)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "redis-cluster")
# A cluster node listens on its port and on port + 10000 (the cluster bus). Both stay below the
# kernel's ephemeral range (32768 up), where no outgoing connection can take them.
LOWEST, HIGHEST = 20000, 22767


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_ports() -> tuple[int, int, int]:
    """Three ports, each free with its bus port, drawn at random: two runs of these tests at
    once (or a fixed range someone else took) used to meet on one fixed range and fail."""
    draw = random.SystemRandom()
    for _ in range(1000):  # bounded: almost always the first draw
        ports = draw.sample(range(LOWEST, HIGHEST + 1), 3)
        if all(bindable(port) and bindable(port + 10000) for port in ports):
            return ports[0], ports[1], ports[2]
    raise AssertionError(f"no three free cluster ports in {LOWEST}-{HIGHEST}")


pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server is not installed",
)


def answering(ports: tuple[int, ...]) -> list[int]:
    return [
        port for port in ports
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                          text=True, timeout=10).stdout.strip() == "PONG"
    ]


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return cluster_ports()


@pytest.fixture
def env(tmp_path: Path, ports: tuple[int, int, int]) -> Iterator[dict[str, str]]:
    env = {**os.environ, "REDIS_CLUSTER_PORTS": " ".join(map(str, ports)),
           "REDIS_CLUSTER_DIR": str(tmp_path / "rc")}
    assert answering(ports) == [], f"something already listens on {ports}"
    try:
        yield env
    finally:
        for port in answering(ports):
            subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"],
                           capture_output=True, timeout=10)


def script(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def a_live_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_the_last_user_out_stops_the_cluster_it_started(
    env: dict[str, str], ports: tuple[int, int, int]
) -> None:
    first, second = a_live_process(), a_live_process()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert "starting" in script(env, "acquire", str(first.pid))
        script(env, "acquire", str(second.pid))
        script(env, "acquire", dead)  # a run killed before it could release: counts no more
        assert answering(ports) == list(ports)
        script(env, "release", str(first.pid))
        assert answering(ports) == list(ports)  # the second run still uses it
        assert "stopping" in script(env, "release", str(second.pid))
        assert answering(ports) == []
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_a_cluster_found_running_stays_up(
    env: dict[str, str], ports: tuple[int, int, int]
) -> None:
    script(env)  # made by hand (or by anyone else)...
    (Path(env["REDIS_CLUSTER_DIR"]) / "started-here").unlink()  # ...not by a test run
    me = str(os.getpid())
    assert "starting" not in script(env, "acquire", me)
    assert "stopping" not in script(env, "release", me)
    assert answering(ports) == list(ports)
