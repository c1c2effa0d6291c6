"""``smartsocket serve`` as users run it: a real process, a real client, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import websockets

from smartsocket import Client


@asynccontextmanager
async def serve(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "listening on" in line, line + (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        yield proc, line.rsplit(" ", 1)[1].strip()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_runs_the_demo_and_drains_on_sigterm() -> None:
    async with serve() as (proc, url):
        client = Client(url, reconnect=False)
        await client.connect()
        assert await client.call("echo", {"ok": True}) == {"ok": True}
        closed: list[int | None] = []
        client.on("disconnect", lambda exc: closed.append(exc.code))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        await asyncio.sleep(0.05)
        assert closed == [1001]
        await client.close()


async def test_env_vars_configure_the_cli() -> None:
    async with (
        serve(env={"SMARTSOCKET_MAX_MESSAGE_SIZE": "4096"}) as (_, url),
        websockets.connect(url) as ws,
    ):
        welcome = json.loads(await ws.recv())[1]
        assert welcome["maxMessageSize"] == 4096


async def test_invalid_option_fails_at_start_with_its_name() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--port", "0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "MAX_CONNECTIONS": "-3"},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2
    assert b"max_connections" in err


async def test_app_option_runs_a_user_server(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent("""
        from smartsocket import SmartSocket
        server = SmartSocket()

        @server.on("shout")
        def shout(socket, text):
            return text.upper()
    """))
    async with serve("--app", "myapp:server", cwd=tmp_path) as (_, url):
        client = Client(url, reconnect=False)
        await client.connect()
        assert await client.call("shout", "hi") == "HI"
        await client.close()


def run_cli(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartsocket", *args], capture_output=True, text=True, timeout=20
    )


def test_version_and_help() -> None:
    from smartsocket import __version__

    assert run_cli(["--version"]).stdout.strip() == f"smartsocket {__version__}"
    help_text = run_cli(["serve", "--help"]).stdout
    for flag in ("--port", "--enable-compression", "--max-connections", "--app"):
        assert flag in help_text


@pytest.mark.parametrize("spec", ["nomodule", "os:path"])
def test_bad_app_spec(spec: str) -> None:
    result = run_cli(["serve", "--port", "0", "--app", spec])
    assert result.returncode != 0
