"""HTTP long-polling for Socket.IO clients: python-socketio's AsyncClient with its default
transports (polling, then the upgrade) and polling only, and raw requests (aiohttp) and raw
WebSockets (``websockets``) for the Engine.IO rules: payloads, binary, CORS, limits, upgrade."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import socketio
import websockets

from smartsocket import SmartSocket, Socket
from smartsocket.testing import connected, running, wait_for

RS = "\x1e"


def base(server: SmartSocket) -> str:
    return f"http://127.0.0.1:{server.port}/socket.io/"


async def open_session(http: aiohttp.ClientSession, server: SmartSocket, **headers: str) -> str:
    async with http.get(base(server), params={"EIO": "4", "transport": "polling"},
                        headers=headers) as resp:
        assert resp.status == 200
        body = await resp.text()
    assert body.startswith("0")
    return str(json.loads(body[1:])["sid"])


def params(sid: str) -> dict[str, str]:
    return {"EIO": "4", "transport": "polling", "sid": sid}


async def poll(http: aiohttp.ClientSession, server: SmartSocket, sid: str) -> str:
    async with http.get(base(server), params=params(sid)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def send(http: aiohttp.ClientSession, server: SmartSocket, sid: str, body: str | bytes
               ) -> int:
    async with http.post(base(server), params=params(sid), data=body) as resp:
        return resp.status


async def test_python_socketio_with_polling_then_upgrade_and_polling_only() -> None:
    server = SmartSocket()

    @server.on("echo")
    def echo(socket: Socket, data: Any) -> Any:
        return data

    async with running(server):
        for transports, final in ((None, "websocket"), (["polling"], "polling")):
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(f"http://127.0.0.1:{server.port}", transports=transports,
                                 wait_timeout=5)
            try:
                assert await client.call("echo", {"n": 1}, timeout=5) == {"n": 1}
                assert await client.call("echo", b"\x00\x01", timeout=5) == b"\x00\x01"
                await wait_for(lambda c=client, f=final: c.transport() == f)  # type: ignore[misc]
                assert await client.call("echo", (1, 2), timeout=5) == (1, 2)
            finally:
                await client.disconnect()


async def test_polling_members_get_room_broadcasts_with_native_ones() -> None:
    server = SmartSocket()

    @server.on("enter")
    def enter(socket: Socket, room: str) -> bool:
        socket.join(room)
        return True

    async with running(server), connected(server) as native:
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[Any] = asyncio.Queue()
        client.on("news", got.put_nowait)
        await client.connect(f"http://127.0.0.1:{server.port}", transports=["polling"])
        try:
            assert await client.call("enter", "r", timeout=5) is True
            assert await native.call("enter", "r") is True
            assert server.room("r").broadcast("news", {"b": b"\x01"}) == 2
            assert await asyncio.wait_for(got.get(), 5) == {"b": b"\x01"}
        finally:
            await client.disconnect()


async def test_payloads_use_the_record_separator_and_base64_binary() -> None:
    server = SmartSocket()
    server.on("echo", lambda socket, data: data)
    async with running(server), aiohttp.ClientSession() as http:
        sid = await open_session(http, server)
        blob = base64.b64encode(b"\x01\x02").decode()
        # CONNECT, then an event with one attachment, in one POST
        body = RS.join(["40", '451-2["echo",{"_placeholder":true,"num":0}]', "b" + blob])
        assert await send(http, server, sid, body) == 200
        answer = ""
        while "b" + blob not in answer:
            answer += RS + await poll(http, server, sid)
        records = [r for r in answer.split(RS) if r]
        assert records[0].startswith('40{"sid":')
        assert records[1:] == ['461-2[{"_placeholder":true,"num":0}]', "b" + blob]


async def test_cors_headers_and_preflight_honour_allowed_origins() -> None:
    server = SmartSocket(allowed_origins="https://ok.example")
    async with running(server), aiohttp.ClientSession() as http:
        ok = {"Origin": "https://ok.example"}
        async with http.options(base(server), params={"EIO": "4", "transport": "polling"},
                                headers={**ok, "Access-Control-Request-Headers": "x-token"}
                                ) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://ok.example"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert resp.headers["Access-Control-Allow-Headers"] == "x-token"
        async with http.get(base(server), params={"EIO": "4", "transport": "polling"},
                            headers=ok) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://ok.example"
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        async with http.get(base(server), params={"EIO": "4", "transport": "polling"},
                            headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert (await resp.json())["code"] == 4


async def test_unknown_and_closed_sessions_and_oversized_bodies() -> None:
    server = SmartSocket(max_message_size=1000)
    async with running(server), aiohttp.ClientSession() as http:
        async with http.get(base(server), params=params("nope")) as resp:
            assert resp.status == 400
            assert await resp.json() == {"code": 1, "message": "Session ID unknown"}
        sid = await open_session(http, server)
        assert await send(http, server, sid, "4" + "x" * 2000) == 413
        assert await send(http, server, sid, "1") == 200  # the client closes its session
        async with http.get(base(server), params=params(sid)) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == 1
        sid = await open_session(http, server)
        assert await send(http, server, sid, "4\x1e") == 400  # an empty record: malformed
        async with http.get(base(server), params=params(sid)) as resp:
            assert resp.status == 400  # the session closed with it


async def test_a_second_concurrent_get_ends_the_session() -> None:
    server = SmartSocket()
    async with running(server), aiohttp.ClientSession() as http:
        sid = await open_session(http, server)
        held = asyncio.create_task(poll(http, server, sid))
        await wait_for(lambda: server._socketio.sessions[sid].engine.get_pending)
        async with http.get(base(server), params=params(sid)) as resp:
            assert resp.status == 400
        assert await asyncio.wait_for(held, 5) == "1"  # the held GET ends with close
        await wait_for(lambda: server.stats()["socketio"]["sessions"] == 0)


async def test_upgrade_probe_noop_and_upgrade_by_hand() -> None:
    server = SmartSocket()
    server.on("echo", lambda socket, data: data)
    async with running(server), aiohttp.ClientSession() as http:
        sid = await open_session(http, server)
        assert await send(http, server, sid, "40") == 200
        assert (await poll(http, server, sid)).startswith('40{"sid":')
        held = asyncio.create_task(poll(http, server, sid))
        await wait_for(lambda: server._socketio.sessions[sid].engine.get_pending)
        url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        async with websockets.connect(url) as ws:
            await ws.send("2probe")
            assert await ws.recv() == "3probe"
            assert await asyncio.wait_for(held, 5) == "6"  # noop: polling may pause
            await ws.send("5")
            await ws.send('421["echo",7]')
            assert await ws.recv() == "431[7]"
            async with http.get(base(server), params=params(sid)) as resp:
                assert resp.status == 400  # upgraded: polling is over


async def test_a_probe_for_an_unknown_session_is_refused() -> None:
    async with running(SmartSocket()) as server:
        url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket&sid=nope"
        try:
            async with websockets.connect(url):
                raise AssertionError("accepted")
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 400
