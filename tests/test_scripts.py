"""scripts/redis-cluster: the test run stops the throwaway Redis Cluster it started, and only
that one. Runs on its own port range, away from the cluster other test runs use (7101-7103)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "redis-cluster")
PORTS = (7291, 7292, 7293)

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server is not installed",
)


def answering() -> list[int]:
    return [
        port for port in PORTS
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                          text=True, timeout=10).stdout.strip() == "PONG"
    ]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "REDIS_CLUSTER_PORTS": " ".join(map(str, PORTS)),
           "REDIS_CLUSTER_DIR": str(tmp_path / "rc")}
    assert answering() == [], f"something already listens on {PORTS}"
    try:
        yield env
    finally:
        for port in answering():
            subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"],
                           capture_output=True, timeout=10)


def script(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def a_live_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_the_last_user_out_stops_the_cluster_it_started(env: dict[str, str]) -> None:
    first, second = a_live_process(), a_live_process()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert "starting" in script(env, "acquire", str(first.pid))
        script(env, "acquire", str(second.pid))
        script(env, "acquire", dead)  # a run killed before it could release: counts no more
        assert answering() == list(PORTS)
        script(env, "release", str(first.pid))
        assert answering() == list(PORTS)  # the second run still uses it
        assert "stopping" in script(env, "release", str(second.pid))
        assert answering() == []
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_a_cluster_found_running_stays_up(env: dict[str, str]) -> None:
    script(env)  # made by hand (or by anyone else)...
    (Path(env["REDIS_CLUSTER_DIR"]) / "started-here").unlink()  # ...not by a test run
    me = str(os.getpid())
    assert "starting" not in script(env, "acquire", me)
    assert "stopping" not in script(env, "release", me)
    assert answering() == list(PORTS)
