"""Long-polling without sticky sessions: two nodes behind a round-robin proxy (tests/rrproxy.py,
no affinity, WebSocket upgrades refused), python-socketio on ``transports=["polling"]``.
Requests for a session held by the other node are forwarded through the cluster
(server/socketio/relay.py): events, acks both ways and broadcasts both ways still work."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
import socketio

from rrproxy import RoundRobin, round_robin
from smartsocket import SmartSocket, Socket
from smartsocket.testing import running, wait_for

CLUSTERS = {
    "memory": lambda: f"memory://{uuid.uuid4().hex}",
    "redis": lambda: "redis://127.0.0.1:6379/0",
}


def app(server: SmartSocket) -> None:
    @server.on("echo")
    def echo(socket: Socket, data: Any) -> Any:
        return data

    @server.on("enter")
    async def enter(socket: Socket, room: str) -> bool:
        socket.join(room)
        return await server.room(room).subscribed()

    @server.on("shout")
    def shout(socket: Socket, data: dict[str, str]) -> int:
        return server.room(data["room"]).broadcast("news", data["text"], exclude=socket)

    @server.on("ask")
    async def ask(socket: Socket, data: Any) -> Any:
        return await socket.call("question", data, timeout=10)


@asynccontextmanager
async def two_nodes(kind: str) -> AsyncIterator[tuple[SmartSocket, SmartSocket, RoundRobin]]:
    options: dict[str, Any] = {
        "cluster_url": CLUSTERS[kind](), "cluster_prefix": "rr" + uuid.uuid4().hex[:10],
        "cluster_heartbeat": 0.05, "node_timeout": 1.0,
    }
    a, b = SmartSocket(**options), SmartSocket(**options)
    app(a)
    app(b)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(a))
        await stack.enter_async_context(running(b))
        await wait_for(lambda: len(a.cluster_nodes()) == 2 and len(b.cluster_nodes()) == 2)
        assert a.port is not None and b.port is not None
        proxy = await stack.enter_async_context(round_robin([a.port, b.port]))
        yield a, b, proxy


@asynccontextmanager
async def polling_client(port: int) -> AsyncIterator[
    tuple[socketio.AsyncClient, asyncio.Queue[Any]]
]:
    client = socketio.AsyncClient(reconnection=False)
    got: asyncio.Queue[Any] = asyncio.Queue()
    client.on("news", lambda *args: got.put_nowait(args))
    client.on("question", lambda data: {"answer": data})
    await client.connect(f"http://127.0.0.1:{port}", transports=["polling"], wait_timeout=10)
    try:
        yield client, got
    finally:
        await client.disconnect()


@pytest.mark.parametrize("kind", sorted(CLUSTERS))
async def test_polling_through_a_round_robin_proxy(kind: str) -> None:
    async with two_nodes(kind) as (a, b, proxy), polling_client(proxy.port) as (one, got_one):
        port = proxy.port
        assert one.transport() == "polling"
        for n in range(6):  # alternate nodes: half of them forward
            assert await one.call("echo", {"n": n}, timeout=10) == {"n": n}
        holder = a if one.get_sid() in a.sockets else b
        assert one.get_sid() in holder.sockets
        assert await one.call("ask", 21, timeout=10) == {"answer": 21}  # server -> client ack
        assert await one.call("enter", "r", timeout=10) is True
        a.room("r").broadcast("news", "from a")
        b.room("r").broadcast("news", "from b")
        got = {(await asyncio.wait_for(got_one.get(), 10))[0] for _ in range(2)}
        assert got == {"from a", "from b"}
        async with polling_client(port) as (two, got_two):
            assert await two.call("enter", "r", timeout=10) is True
            await one.call("shout", {"room": "r", "text": "one"}, timeout=10)
            assert (await asyncio.wait_for(got_two.get(), 10))[0] == "one"
            await two.emit("shout", {"room": "r", "text": "two"})
            assert (await asyncio.wait_for(got_one.get(), 10))[0] == "two"
        assert a.port in proxy.served and b.port in proxy.served  # no affinity at all


async def test_unknown_node_sid_and_upgrade_elsewhere() -> None:
    async with two_nodes("memory") as (a, b, _), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{a.port}/socket.io/"
        params = {"EIO": "4", "transport": "polling", "sid": "nonode.abc"}
        async with http.get(url, params=params) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == 1  # Session ID unknown
        # A session of b, polled on a: forwarded, answered with b's open queue.
        async with http.get(f"http://127.0.0.1:{b.port}/socket.io/",
                            params={"EIO": "4", "transport": "polling"}) as resp:
            sid = (await resp.text())[1:].split('"sid":"')[1].split('"')[0]
        assert sid.startswith(b.cluster_nodes()[0] + ".")
        async with http.post(url, params={**params, "sid": sid}, data=b"40") as resp:
            assert resp.status == 200 and await resp.text() == "ok"
        async with http.get(url, params={**params, "sid": sid}) as resp:
            assert resp.status == 200 and (await resp.text()).startswith("40{")
        # Closed (an Engine.IO close packet, through a): polled again through a, it is unknown.
        async with http.post(url, params={**params, "sid": sid}, data=b"1") as resp:
            assert resp.status == 200
        await wait_for(lambda: b.stats()["socketio"]["sessions"] == 0)
        async with http.get(url, params={**params, "sid": sid}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 1
