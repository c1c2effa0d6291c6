"""Deployment files stay consistent with the code (Docker cannot run here: the files are
checked against the config and the CLI, and their commands are run where they can be), and
the operations they rely on work: SIGTERM drains, SIGHUP reopens the log file, the health
check answers."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusters import prefix, require_broker
from smartsocket import Client, Config
from smartsocket.cli import build_parser
from smartsocket.config import env_names, option_fields
from smartsocket.demo import create_app
from smartsocket.testing import Recorder, connected, running

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_FILES = [
    ROOT / "Dockerfile",
    ROOT / "docker-compose.yml",
    *sorted((ROOT / "deploy").iterdir()),
]
KNOWN_ENV = {name for f in option_fields() for name in env_names(f.name)}

# Upper bound for a server process to start, answer or exit: a loaded 2-core machine took
# over 10 s just to start one (imports alone: 5 s). A bound, never a sleep.
PROCESS = 30.0


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((ROOT / "deploy" / "smartsocket.service").read_text())
    return parser


def test_every_env_var_the_deploy_files_set_is_a_config_option() -> None:
    """Docker, compose, systemd and the env file only use variables the server reads."""
    for path in DEPLOY_FILES:
        for var in re.findall(r"\bSMARTSOCKET_[A-Z0-9_]+", path.read_text()):
            assert var in KNOWN_ENV, f"{path.name} uses {var}, which no option reads"
    for name, service in compose()["services"].items():
        for var in service.get("environment") or {}:
            assert var in KNOWN_ENV, f"compose service {name} sets unknown {var}"
    for line in (ROOT / "deploy" / "smartsocket.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split("=", 1)[0] in KNOWN_ENV, line
    for value in unit()["Service"].get("Environment", "").splitlines():
        assert value.split("=", 1)[0] in KNOWN_ENV, value


def test_dockerfile_slim_non_root_healthcheck_and_cli() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms and all("-slim" in f for f in froms)
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert len(health) == 1 and "healthcheck.py" in health[0]
    entrypoint = json.loads(next(a for w, a in instructions if w == "ENTRYPOINT"))
    cmd = json.loads(next(a for w, a in instructions if w == "CMD"))
    assert entrypoint == ["smartsocket"]
    build_parser().parse_args(cmd)  # flags the CLI knows
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    # The files the build copies exist, and .dockerignore does not hide them.
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for word, args in instructions:
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] not in ignored, source
    assert {".git", ".venv", "tests"} <= ignored


def test_compose_two_nodes_and_redis() -> None:
    services = compose()["services"]
    assert {"redis", "node1", "node2"} <= set(services)
    host_ports = set()
    shutdown = Config().shutdown_timeout
    for name in ("node1", "node2"):
        node = services[name]
        assert node["build"] == "."
        host_ports.add(node["ports"][0].split(":")[0])
        grace = int(node["stop_grace_period"].rstrip("s"))
        timeout = float(node["environment"].get("SMARTSOCKET_SHUTDOWN_TIMEOUT", shutdown))
        assert grace > timeout + 2, "docker stop would kill the node before it drains"
    assert len(host_ports) == 2


def test_deployment_doc_says_what_the_compose_file_does() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    section = doc.split("## docker compose", 1)[1].split("\n## ", 1)[0]
    url = compose()["services"]["node1"]["environment"]["SMARTSOCKET_CLUSTER_URL"]
    assert f"SMARTSOCKET_CLUSTER_URL={url}" in section
    assert "independent" not in section and "unused" not in section


async def test_compose_nodes_share_rooms_through_redis() -> None:
    """The compose nodes' settings (Redis on 127.0.0.1 instead of the `redis` service): a
    client on each node joins a room of the demo app, and a chat on one reaches the other."""
    env = dict(compose()["services"]["node1"]["environment"])
    url = env["SMARTSOCKET_CLUSTER_URL"]
    env["SMARTSOCKET_CLUSTER_URL"] = url.replace("//redis:", "//127.0.0.1:")
    require_broker(env["SMARTSOCKET_CLUSTER_URL"])
    env["SMARTSOCKET_CLUSTER_PREFIX"] = prefix()  # the Redis is shared: our own channels
    nodes = [create_app(Config.from_env(env, port=0, host="127.0.0.1")) for _ in range(2)]
    async with (
        running(nodes[0]) as one, running(nodes[1]) as two,
        connected(one) as ann, connected(two) as bob,
    ):
        await ann.call("join", {"room": "compose", "name": "Ann"})
        await bob.call("join", {"room": "compose", "name": "Bob"})
        chats = Recorder(bob, "chat")
        await ann.call("chat", {"room": "compose", "text": "across nodes"})
        message = await chats.next("chat")
        assert message["text"] == "across nodes" and message["name"] == "Ann"


def test_systemd_unit() -> None:
    service = unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/smartsocket")
    build_parser().parse_args(command[1:])
    assert "-HUP" in service["ExecReload"]
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > Config().shutdown_timeout + 2
    assert service["User"] != "root"
    # The commented --log-file variant is a command the CLI accepts too.
    logged = re.search(r"# With a log file: ExecStart=(\S+) (.*)", (
        ROOT / "deploy" / "smartsocket.service").read_text())
    assert logged is not None
    build_parser().parse_args(shlex.split(logged.group(2)))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_finds_only_the_missing_binary() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(ROOT / "deploy" / "smartsocket.service")],
        capture_output=True, text=True, timeout=30,
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/opt/smartsocket/venv/bin/smartsocket" not in line
    ]
    assert not problems, problems


@asynccontextmanager
async def serve(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), PROCESS)).decode()
        assert "listening on" in line, line + (await proc.stderr.read()).decode()
        yield proc, line.rsplit(" ", 1)[1].strip()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def healthcheck(port: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "deploy" / "healthcheck.py"),
        env={**os.environ, "SMARTSOCKET_PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), PROCESS)


async def test_healthcheck_follows_the_server() -> None:
    async with serve() as (proc, url):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert await healthcheck(port) == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), PROCESS) == 0
    assert await healthcheck(port) == 1


async def test_log_file_is_reopened_on_sighup(tmp_path: Path) -> None:
    """Log rotation: rename the file, SIGHUP, and new lines go to a new file at the path."""
    log = tmp_path / "smartsocket.log"
    rotated = tmp_path / "smartsocket.log.1"
    async with serve("--log-file", str(log), "--log-level", "DEBUG") as (proc, url):
        assert "listening on" in log.read_text()
        log.rename(rotated)
        proc.send_signal(signal.SIGHUP)
        for _ in range(500):
            if log.exists():
                break
            await asyncio.sleep(0.01)
        assert "reopened log file" in log.read_text()
        client = Client(url, reconnect=False)
        await client.connect()
        sid = client.sid
        assert sid is not None
        await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), PROCESS) == 0
        assert proc.stderr is not None
        assert b"listening" not in await proc.stderr.read()  # logs went to the file only
    new, old = log.read_text(), rotated.read_text()
    assert sid in new and "closed" in new
    assert sid not in old and "listening on" in old
