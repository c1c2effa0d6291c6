"""``smartsocket.asgi``: the same SmartSocket API through uvicorn, FastAPI and Starlette, with
real servers on 127.0.0.1 and real clients (``smartsocket.Client`` and ``websockets``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import websockets
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from smartsocket import Client, SmartSocket, Socket
from smartsocket.asgi import SmartSocketASGI
from smartsocket.demo import create_app
from smartsocket.integrations import frame_payload
from smartsocket.testing import Recorder, connected, running, running_asgi, wait_for
from smartsocket.transport import build_frame


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1) + path


async def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await asyncio.to_thread(get)


def fastapi_app(server: SmartSocket) -> tuple[FastAPI, SmartSocketASGI]:
    mount = SmartSocketASGI(server)
    app = FastAPI(lifespan=mount.lifespan)

    @app.get("/api/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    app.mount("/ws", mount)
    return app, mount


async def test_fastapi_mount_serves_events_rooms_and_acks_next_to_http_routes() -> None:
    server = create_app()
    app, _ = fastapi_app(server)
    async with running_asgi(app) as base:
        url = ws_url(base, "/ws/")
        async with connected(url) as alice, connected(url) as bob:
            assert alice.welcome["protocol"] == 1 and alice.sid in server.sockets
            assert await alice.call("echo", {"n": 1}) == {"n": 1}
            assert await alice.call("echo", b"\x00\xff") == b"\x00\xff"  # MessagePack frames
            assert await alice.call("join", {"room": "r"}) == {"room": "r", "members": 1}
            assert await bob.call("join", {"room": "r"}) == {"room": "r", "members": 2}
            chats = Recorder(bob, "chat")
            text = "hello " * 500  # over compression_threshold: still a plain frame for us
            assert await alice.call("chat", {"room": "r", "text": text}) == {"delivered": 1}
            got = await chats.next("chat")
            assert got["text"] == text and got["from"] == alice.sid
            assert await http_get(base + "/api/hello") == (200, b'{"hello":"world"}')
            status, body = await http_get(base + "/ws/smartsocket/stats")
            assert status == 200 and json.loads(body)["connections"] == 2
            status, body = await http_get(base + "/ws/smartsocket/health")
            assert status == 200 and json.loads(body)["status"] == "ok"
            assert (await http_get(base + "/ws/metrics"))[0] == 200
            # The live stats feed (the dashboard's) is there too.
            async with websockets.connect(url + "smartsocket/live") as feed:
                event, welcome = json.loads(await feed.recv())
                assert event == "$welcome" and welcome["live"] is True
                event, stats = json.loads(await feed.recv())
                assert event == "stats" and stats["connections"] == 2
        await wait_for(lambda: not server.sockets)


async def test_acks_both_ways_heartbeat_and_kick() -> None:
    server = SmartSocket(ping_interval=0.1, ping_timeout=1)

    @server.on("ask")
    async def ask(socket: Socket, data: Any) -> Any:
        return await socket.call("question", data, timeout=2)

    @server.on("kick")
    def kick(socket: Socket, data: Any) -> None:
        socket.disconnect()

    app, _ = fastapi_app(server)
    async with running_asgi(app) as base:
        client = Client(ws_url(base, "/ws/"), reconnect=False)
        client.on("question", lambda n: n * 2)
        closed = Recorder(client, "disconnect")
        await client.connect()
        assert await client.call("ask", 21) == 42
        await asyncio.sleep(0.3)  # a few heartbeats: the client answers, nobody is dropped
        assert client.connected and await client.call("ask", 1) == 2
        client.send("kick")
        assert (await closed.next("disconnect")).code == 4000
        await client.close()


async def test_websockets_library_subprotocol_welcome_and_heartbeat_timeout() -> None:
    server = SmartSocket(ping_interval=0.1, ping_timeout=0.2)
    app, _ = fastapi_app(server)
    async with running_asgi(app) as base:
        url = ws_url(base, "/ws/")
        async with websockets.connect(url, subprotocols=["smartsocket.v1"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "smartsocket.v1"
            event, welcome = json.loads(await ws.recv())
            assert event == "$welcome" and welcome["sid"] in server.sockets
            event, value = json.loads(await ws.recv())
            assert event == "$ping"
            await ws.send(json.dumps(["$pong", value]))
            # Silent from now on: closed with 4002 once pingTimeout passes.
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 3)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4002
        async with websockets.connect(url) as ws:  # no subprotocol offered: still v1
            assert ws.subprotocol is None
            assert json.loads(await ws.recv())[0] == "$welcome"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, subprotocols=["chat"]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 400


async def test_authentication_and_origin_checks_apply() -> None:
    server = SmartSocket(api_keys="k1", allowed_origins="https://app.example.com")

    @server.on("whoami")
    def whoami(socket: Socket, data: Any) -> Any:
        return socket.identity

    app, _ = fastapi_app(server)
    async with running_asgi(app) as base:
        url = ws_url(base, "/ws/")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url + "?token=wrong"):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url + "?token=k1", origin="https://evil.example.com"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connected(url, headers={"Authorization": "Bearer k1"}) as client:
            assert (await client.call("whoami")).startswith("key:")
        # No credentials at the upgrade: word that they are needed, no $welcome until $auth.
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())[0] == "$auth_required"
            await ws.send(json.dumps(["$auth", {"token": "k1"}]))
            assert json.loads(await ws.recv())[0] == "$welcome"
        assert server.stats()["raw"]["rejectedConnections"] == 2


async def test_native_and_asgi_sockets_share_rooms() -> None:
    """One SmartSocket, two transports: a broadcast reaches both kinds of member (natively
    compressed, plain over ASGI)."""
    server = create_app()
    app, _ = fastapi_app(server)
    async with (
        running(server),
        running_asgi(app) as base,
        connected(server) as native,
        connected(ws_url(base, "/ws/")) as mounted,
    ):
        for client in (native, mounted):
            await client.call("join", {"room": "mixed"})
        got_native, got_mounted = Recorder(native, "chat"), Recorder(mounted, "chat")
        big = {"items": list(range(3000))}
        assert server.room("mixed").broadcast("chat", big) == 2
        assert await got_native.next("chat") == big
        assert await got_mounted.next("chat") == big
        assert await mounted.call("chat", {"room": "mixed", "text": "hi"}) == {"delivered": 1}
        assert (await got_native.next("chat"))["text"] == "hi"


async def test_message_over_max_message_size_closes_1009() -> None:
    server = create_app(SmartSocket(max_message_size=1024).config)
    app, _ = fastapi_app(server)
    async with running_asgi(app) as base, websockets.connect(ws_url(base, "/ws/")) as ws:
        await ws.recv()  # $welcome
        await ws.send(json.dumps(["echo", "x" * 2000]))
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 3)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_graceful_shutdown_finishes_handlers_then_closes_1001() -> None:
    server = SmartSocket()
    started = asyncio.Event()

    @server.on("slow")
    async def slow(socket: Socket, data: Any) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "done"

    app, mount = fastapi_app(server)
    async with running_asgi(app) as base:
        client = Client(ws_url(base, "/ws/"), reconnect=False)
        closed = Recorder(client, "disconnect")
        await client.connect()
        call = asyncio.ensure_future(client.call("slow"))
        await started.wait()  # running when the shutdown starts (not a guess)
        shutdown = asyncio.ensure_future(mount.shutdown())
        assert await call == "done"
        assert (await closed.next("disconnect")).code == 1001
        await shutdown
        status, body = await http_get(base + "/ws/smartsocket/health")
        assert status == 503 and json.loads(body)["status"] == "closing"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(base, "/ws/")):
                pass
        assert refused.value.response.status_code == 503
        await client.close()


async def test_wrapping_an_app_and_the_asgi_lifespan() -> None:
    """SmartSocketASGI(server, app) as the top-level app: SmartSocket gets / and the
    /smartsocket/* GETs, the wrapped app the rest; lifespan starts and stops both."""
    server = create_app()
    events: list[str] = []

    async def other_ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("not smartsocket")
        await websocket.close()

    def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse("page")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    inner = Starlette(
        routes=[Route("/page", page), WebSocketRoute("/other", other_ws)],
        lifespan=lifespan,
    )
    async with running_asgi(SmartSocketASGI(server, inner)) as base:
        assert events == ["startup"] and server.started
        async with connected(ws_url(base, "/")) as client:
            assert await client.call("echo", 7) == 7
        async with websockets.connect(ws_url(base, "/other")) as ws:
            assert await ws.recv() == "not smartsocket"
        assert await http_get(base + "/page") == (200, b"page")
        assert (await http_get(base + "/smartsocket/health"))[0] == 200
        assert (await http_get(base + "/nowhere"))[0] == 404
        assert (await http_get(base + "/metrics"))[0] == 404  # the wrapped app's path
        async with websockets.connect(ws_url(base, "/smartsocket/live")) as feed:
            assert json.loads(await feed.recv())[1]["live"] is True
    assert events == ["startup", "shutdown"] and not server.started

    # Alone, it answers the lifespan protocol itself; other HTTP paths get 404.
    server = create_app()
    async with running_asgi(SmartSocketASGI(server)) as base:
        assert server.started
        assert (await http_get(base + "/anything"))[0] == 404
        async with connected(ws_url(base, "/")) as client:
            assert await client.call("echo", "x") == "x"
    assert not server.started


async def test_starlette_websocket_route_at_an_exact_path() -> None:
    """``WebSocketRoute("/ws", mount)`` (FastAPI: ``app.router.add_websocket_route``): the
    exact path, no trailing slash."""
    server = create_app()
    mount = SmartSocketASGI(server)

    def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse(f"{len(server.sockets)} connected")

    app = Starlette(
        routes=[Route("/", home), WebSocketRoute("/ws", mount)], lifespan=mount.lifespan
    )
    async with running_asgi(app) as base, connected(ws_url(base, "/ws")) as client:
        assert await client.call("echo", [1]) == [1]
        assert await http_get(base + "/") == (200, b"1 connected")
    assert not server.started


# Without a server: the bridge itself.


def test_frame_payload_strips_each_header_size() -> None:
    for size in (0, 125, 126, 65535, 65536):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for binary in (False, True):
            got, is_binary = frame_payload(build_frame(payload, binary=binary))
            assert bytes(got) == payload and is_binary is binary
    with pytest.raises(ValueError):
        frame_payload(build_frame(b"x", rsv1=True))


async def test_a_reader_too_slow_is_dropped_with_4009() -> None:
    """The queue of a connection whose ASGI send never completes plays the write buffer."""
    server = SmartSocket(write_buffer_high=1024, max_write_buffer=8192)
    mount = SmartSocketASGI(server)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    stuck = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.send":
            await stuck.wait()  # the peer never reads

    scope = {"type": "websocket", "path": "/", "headers": [], "client": ("127.0.0.1", 5)}
    inbox.put_nowait({"type": "websocket.connect"})
    task = asyncio.ensure_future(mount(scope, receive, send))
    await wait_for(lambda: server.sockets)
    socket = next(iter(server.sockets.values()))
    closes: list[str] = []
    socket.on("disconnect", closes.append)
    for _ in range(20):
        socket.send("bulk", "x" * 500)
    await asyncio.wait_for(task, 5)
    assert socket.close_code == 4009 and closes
    assert server.stats()["raw"]["droppedSlow"] == 1
    assert sent[0]["type"] == "websocket.accept"
    await server.close()


async def test_a_peer_that_reads_nothing_is_dropped_after_a_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Natively the close frame is written at once and the peer has CLOSE_TIMEOUT to answer;
    a bridged close waits behind the queue and the host's send, so it has a deadline."""
    import smartsocket.integrations.bridge

    monkeypatch.setattr(smartsocket.integrations.bridge, "CLOSE_TIMEOUT", 0.05)
    server = SmartSocket()
    mount = SmartSocketASGI(server)
    stuck = asyncio.Event()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})

    async def receive() -> dict[str, Any]:
        return await inbox.get()  # the peer never closes either

    async def send(message: dict[str, Any]) -> None:
        if message["type"] != "websocket.accept":
            await stuck.wait()

    task = asyncio.ensure_future(mount({"type": "websocket", "path": "/"}, receive, send))
    await wait_for(lambda: server.sockets)
    socket = next(iter(server.sockets.values()))
    socket.disconnect(4000, "kicked")
    await asyncio.wait_for(task, 2)
    assert socket.close_code == 4000 and not server.sockets
    await server.close()


async def test_http_without_an_app_is_404_and_refusals_without_the_extension_close() -> None:
    server = SmartSocket(api_keys="k")
    mount = SmartSocketASGI(server)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    await mount({"type": "http", "path": "/x", "headers": []}, receive, send)
    assert sent[0]["status"] == 404
    sent.clear()
    scope = {"type": "websocket", "path": "/", "query_string": b"token=bad", "headers": []}
    await mount(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]  # the server answers 403
    await server.close()


async def test_a_mounted_server_resumes_dropped_sessions() -> None:
    server = create_app(SmartSocket(recovery_window=5).config)
    app, _ = fastapi_app(server)
    async with running_asgi(app) as base:
        url = ws_url(base, "/ws/")
        async with connected(url, reconnect_delay=0.3, reconnect_delay_max=0.3) as subject, \
                connected(url) as publisher:
            got: list[str] = []
            subject.on("chat", lambda message: got.append(message["text"]))
            sid = subject.sid
            await subject.call("join", {"room": "r"})
            await publisher.call("join", {"room": "r"})
            assert subject._conn is not None
            subject._conn.abort()  # the network drops: uvicorn's side sees it, not a close
            await wait_for(lambda: sid not in server.sockets)
            for n in range(3):
                await publisher.call("chat", {"room": "r", "text": str(n)})
            await wait_for(lambda: subject.connected, timeout=10)
            await wait_for(lambda: got == ["0", "1", "2"])
            assert subject.recovered and subject.sid == sid
