"""``smartsocket.integrations.aiohttp``: the same SmartSocket API inside an aiohttp
application, with a real aiohttp server on 127.0.0.1 and real clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web

from smartsocket import Client, SmartSocket, Socket
from smartsocket.demo import create_app
from smartsocket.integrations.aiohttp import setup, websocket_handler
from smartsocket.testing import Recorder, connected, running_aiohttp, wait_for


def application(server: SmartSocket, path: str = "/ws") -> web.Application:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    app.router.add_get("/api/hello", hello)
    setup(app, server, path)
    return app


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1) + path


async def test_events_rooms_acks_and_http_routes() -> None:
    server = create_app()
    async with running_aiohttp(application(server)) as base:
        url = ws_url(base, "/ws")
        async with connected(url) as alice, connected(url) as bob:
            assert alice.sid in server.sockets
            assert await alice.call("echo", {"n": 1}) == {"n": 1}
            assert await alice.call("echo", b"\x00\xff") == b"\x00\xff"
            await alice.call("join", {"room": "r"})
            await bob.call("join", {"room": "r"})
            chats = Recorder(bob, "chat")
            text = "hello " * 500
            assert await alice.call("chat", {"room": "r", "text": text}) == {"delivered": 1}
            assert (await chats.next("chat"))["text"] == text
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/api/hello") as response:
                    assert await response.json() == {"hello": "world"}
                async with http.get(base + "/ws/smartsocket/stats") as response:
                    assert (await response.json())["connections"] == 2
                async with http.get(base + "/ws/smartsocket/health") as response:
                    assert response.status == 200
                async with http.get(base + "/ws") as response:  # not an upgrade
                    assert response.status == 426
                async with http.get(base + "/ws/metrics") as response:
                    assert response.status == 200
            async with websockets.connect(url + "/smartsocket/live") as feed:
                event, welcome = json.loads(await feed.recv())
                assert event == "$welcome" and welcome["live"] is True
                event, stats = json.loads(await feed.recv())
                assert event == "stats" and stats["connections"] == 2
        await wait_for(lambda: not server.sockets)


async def test_server_calls_client_kick_and_subprotocol() -> None:
    server = SmartSocket(ping_interval=0.1, ping_timeout=0.2)

    @server.on("ask")
    async def ask(socket: Socket, data: Any) -> Any:
        return await socket.call("question", data, timeout=2)

    @server.on("kick")
    def kick(socket: Socket, data: Any) -> None:
        socket.disconnect(4000, "bye")

    async with running_aiohttp(application(server)) as base:
        url = ws_url(base, "/ws")
        client = Client(url, reconnect=False)
        client.on("question", lambda n: n * 2)
        closed = Recorder(client, "disconnect")
        await client.connect()
        assert await client.call("ask", 21) == 42
        client.send("kick")
        assert (await closed.next("disconnect")).code == 4000
        await client.close()

        async with websockets.connect(url, subprotocols=["smartsocket.v1"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "smartsocket.v1"
            assert json.loads(await ws.recv())[0] == "$welcome"
            with pytest.raises(websockets.ConnectionClosed) as info:  # never answers $ping
                while True:
                    await asyncio.wait_for(ws.recv(), 3)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4002
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, subprotocols=["chat"]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 400


async def test_authentication_origin_and_message_size() -> None:
    server = create_app(
        SmartSocket(api_keys="k1", allowed_origins="https://app.example.com",
                    max_message_size=1024).config
    )
    async with running_aiohttp(application(server, "/live/")) as base:
        url = ws_url(base, "/live")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url + "?token=wrong"):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url + "?token=k1", origin="https://evil.example.com"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with websockets.connect(url + "?token=k1") as ws:
            assert json.loads(await ws.recv())[0] == "$welcome"
            await ws.send(json.dumps(["echo", "x" * 2000]))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 3)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_app_shutdown_finishes_handlers_then_closes_1001() -> None:
    server = SmartSocket()
    started = asyncio.Event()

    @server.on("slow")
    async def slow(socket: Socket, data: Any) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "done"

    client = None
    async with running_aiohttp(application(server)) as base:
        client = Client(ws_url(base, "/ws"), reconnect=False)
        closed = Recorder(client, "disconnect")
        await client.connect()
        call = asyncio.ensure_future(client.call("slow"))
        await started.wait()  # running when the shutdown starts (not a guess)
    # Leaving running_aiohttp ran the app's shutdown: the call got its answer first.
    assert await call == "done"
    assert (await closed.next("disconnect")).code == 1001
    assert not server.started
    await client.close()


async def test_bare_handler_in_your_own_routes() -> None:
    server = create_app()
    app = web.Application()
    app.router.add_get("/rt/{name}", websocket_handler(server))
    async with running_aiohttp(app) as base:
        async with connected(ws_url(base, "/rt/x"), reconnect=False) as client:
            assert await client.call("echo", 5) == 5
        assert server.started  # started by its first connection
    await server.close()
