"""Every example runs: servers as subprocesses (or imported), real clients, bounded time."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
import websockets

from clusters import BROKERS, answers, free_port, prefix
from outboxdb import database
from smartsocket import AckError, Client, SmartSocket, Socket
from smartsocket.testing import Recorder, connected, running, running_asgi, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@asynccontextmanager
async def example_server(script: str, *args: str) -> AsyncIterator[str]:
    """Run examples/<script> on a free port; yields its ws:// URL. SIGTERM ends it cleanly."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / script), "--host", "127.0.0.1", "--port", "0", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert "listening on" in line, line + (await proc.stderr.read()).decode()
        yield line.rsplit(" ", 1)[1].strip()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def start_script(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / script), *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )


async def read_until(proc: asyncio.subprocess.Process, text: str, timeout: float = 10) -> str:
    """stdout lines of ``proc`` up to the first one containing ``text``."""
    assert proc.stdout is not None
    seen = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
        if not line:
            raise AssertionError(f"{text!r} never came; got {seen}")
        seen.append(line)
        if text in line:
            return "".join(seen)


async def finish(proc: asyncio.subprocess.Process, timeout: float = 15) -> str:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_chat_server_and_client_scripts() -> None:
    async with example_server("chat/server.py") as url:
        bob = await start_script("chat/client.py", url, "--name", "bob", "--room", "lobby")
        await read_until(bob, "joined lobby with: bob")
        alice = await start_script("chat/client.py", url, "--name", "alice", "--room", "lobby")
        assert bob.stdin is not None and alice.stdin is not None
        await read_until(alice, "joined lobby with: alice, bob")
        await read_until(bob, "* alice joined")
        alice.stdin.write(b"hello bob\n")
        await alice.stdin.drain()
        await read_until(bob, "alice: hello bob")
        alice.stdin.close()  # end of input: alice leaves
        await finish(alice)
        await read_until(bob, "* alice left")
        # A newcomer gets the room's recent history.
        async with connected(url) as carol:
            answer = await carol.call("join", {"room": "lobby", "name": "carol"})
            assert [m["text"] for m in answer["history"]] == ["hello bob"]
            assert answer["members"] == ["bob", "carol"]
            with pytest.raises(AckError) as refused:
                await carol.call("join", {"room": "lobby", "name": "  "})
            assert refused.value.code == "bad_name"
        bob.stdin.close()
        await finish(bob)


async def test_lobby_authentication_games_and_ready_check() -> None:
    async with example_server("lobby/server.py") as url:
        # Wrong credentials: HTTP 401 at the upgrade.
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url + "?token=nope"):
                pass
        assert refused.value.response.status_code == 401

        alice = Client(url + "?token=alice-token", reconnect=False)
        alice.on("ready_check", lambda data: True)
        events = Recorder(alice, "player_joined", "game_started")
        await alice.connect()
        game = await alice.call("create_game", {"name": "Chess", "max_players": 2})
        assert game["host"] == "alice" and game["players"] == ["alice"]

        # bob is the player script: joins the open game, answers the ready check.
        bob = await start_script("lobby/player.py", url, "--token", "bob-token")
        await read_until(bob, "joined game 1 (Chess) hosted by alice")
        assert (await events.next("player_joined"))["player"] == "bob"

        async with connected(url, headers={"Authorization": "Bearer carol-token"}) as carol:
            with pytest.raises(AckError) as full:
                await carol.call("join_game", {"game": game["id"]})
            assert full.value.code == "game_full"
            with pytest.raises(AckError) as not_host:
                await carol.call("start_game", {"game": game["id"]})
            assert not_host.value.code == "not_host"

        assert await alice.call("start_game", {"game": game["id"]}) == {
            "players": ["alice", "bob"]
        }
        assert (await events.next("game_started"))["players"] == ["alice", "bob"]
        out = await finish(bob)
        assert "ready check for game 1: ready" in out and "game started with alice, bob" in out
        await alice.close()


async def test_lobby_player_script_can_host() -> None:
    async with example_server("lobby/server.py") as url:
        host = await start_script("lobby/player.py", url, "--token", "carol-token",
                                  "--host-game", "Go")
        await read_until(host, "hosting game 1 (Go)")
        guest = await start_script("lobby/player.py", url, "--token", "alice-token")
        assert "game started with alice, carol" in await finish(guest)
        assert "game started with alice, carol" in await finish(host)


def load_example(relative: str) -> ModuleType:
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_fastapi_mount_example() -> None:
    example = load_example("fastapi_mount/app.py")
    async with running_asgi(example.app) as base:
        url = base.replace("http://", "ws://", 1) + "/ws/"
        async with connected(url) as client, aiohttp.ClientSession() as http:
            announcements = Recorder(client, "announcement")
            await client.call("join", {"room": "news"})
            async with http.get(base + "/api/rooms") as response:
                assert await response.json() == {"news": 1}
            async with http.post(base + "/api/rooms/news/announce",
                                 json={"text": "deploy at 5"}) as response:
                assert await response.json() == {"delivered": 1}
            assert await announcements.next("announcement") == {
                "room": "news", "text": "deploy at 5"
            }
            assert await client.call("echo", "still here") == "still here"


async def test_bench_script_runs() -> None:
    """examples/bench_mounts.py (the figures in docs/deployment.md), in a very short run."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "bench_mounts.py"), "--duration", "0.2",
        "--clients", "2", "--inflight", "2",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )
    out = await finish(proc, timeout=60)
    for mode in ("native", "uvicorn", "aiohttp"):
        assert f"| {mode} |" in out, out


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:6379", "nats://127.0.0.1:4222"])
async def test_two_node_cluster_example(broker: str) -> None:
    proc = await start_script("cluster/two_nodes.py", "--cluster-url", broker)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "Ben got 'hello from node A' from Ann" in text
    assert "Ann got 'hi Ann, this is node B' from Ben" in text


def joinable(**options: object) -> SmartSocket:
    """A server whose clients join rooms with a ``join`` call (acked once subscribed)."""
    server = SmartSocket(**options)  # type: ignore[arg-type]

    @server.on("join")
    async def join(socket: Socket, room: str) -> bool:
        socket.join(room)
        return await server.room(room).subscribed()

    return server


async def test_fastapi_emitter_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """One FastAPI endpoint publishes through AsyncEmitter to a server it shares Redis with."""
    cluster = {"cluster_url": BROKERS["redis"], "cluster_prefix": prefix()}
    monkeypatch.setenv("SMARTSOCKET_CLUSTER_URL", cluster["cluster_url"])
    monkeypatch.setenv("SMARTSOCKET_CLUSTER_PREFIX", cluster["cluster_prefix"])
    example = load_example("fastapi_emitter.py")
    async with running(joinable(**cluster)) as server, connected(server) as client, \
            running_asgi(example.app) as base, aiohttp.ClientSession() as http:
        messages = Recorder(client, "message")
        assert await client.call("join", "news")
        async with http.post(base + "/rooms/news/messages", json={"text": "deploy at 5"}) as r:
            assert r.status == 202
        assert await messages.next("message") == {"room": "news", "text": "deploy at 5"}
        async with http.post(base + "/rooms/%E2%80%AE/messages", json={"text": "x"}) as r:
            assert r.status == 400  # a room name the servers refuse (U+202E)


async def test_django_outbox_example() -> None:
    """The Django view saves a note and its outbox row in one transaction; a server with
    ``outbox_url`` publishes it; a note the database refuses is never published."""
    async with database() as dsn:
        env = {**ENV, "DATABASE_URL": dsn}
        script = str(EXAMPLES / "django_outbox" / "app.py")
        migrate = await asyncio.create_subprocess_exec(sys.executable, script, "migrate_notes",
                                                       env=env, stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE)
        await finish(migrate)
        port = free_port()
        django = await asyncio.create_subprocess_exec(
            sys.executable, script, "runserver", f"127.0.0.1:{port}", "--noreload",
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            await wait_for(lambda: answers(port), timeout=30)
            async with running(joinable(outbox_url=dsn)) as server, \
                    connected(server) as client, aiohttp.ClientSession() as http:
                notes = Recorder(client, "note.added")
                assert await client.call("join", "board:team")
                url = f"http://127.0.0.1:{port}/boards/team/notes"
                async with http.post(url, json={"text": "hello"}) as r:
                    assert r.status == 201
                    first = (await r.json())["id"]
                assert await notes.next("note.added", timeout=20) == {"id": first,
                                                                      "text": "hello"}
                async with http.post(url, json={"text": "x" * 201}) as r:
                    assert r.status == 400  # the CHECK refused it: rolled back
                async with http.post(url, json={"text": "again"}) as r:
                    second = (await r.json())["id"]
                assert await notes.next("note.added", timeout=20) == {"id": second,
                                                                      "text": "again"}
                assert notes.pending("note.added") == 0
        finally:
            django.terminate()
            await django.wait()
