"""A hostile client against the Socket.IO endpoint, over real sockets: what it tries to make
the server hold or repeat, and that the other clients carry on (docs/socketio.md, "Admission,
limits and close", "Malformed input")."""

from __future__ import annotations

import asyncio

import aiohttp
import websockets

from smartsocket import SmartSocket
from smartsocket.testing import running
from test_socketio_polling import open_session, poll, send


def probe_url(server: SmartSocket, sid: str) -> str:
    return f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket&sid={sid}"


async def test_a_second_probe_is_refused_and_the_first_still_upgrades() -> None:
    # A second probe used to take the session's place of the first, whose upgrade was then
    # forgotten: the first WebSocket stayed open for good, outside every timeout and limit,
    # one more per round from one session.
    server = SmartSocket()
    server.on("echo", lambda socket, data: data)
    async with running(server), aiohttp.ClientSession() as http:
        sid = await open_session(http, server)
        assert await send(http, server, sid, "40") == 200
        assert (await poll(http, server, sid)).startswith('40{"sid":')
        async with websockets.connect(probe_url(server, sid)) as first:
            await first.send("2probe")
            assert await first.recv() == "3probe"
            for _ in range(3):
                async with websockets.connect(probe_url(server, sid)) as second:
                    await asyncio.wait_for(second.wait_closed(), 5)
                    assert second.close_code == 1008
            await first.send("5")  # the first probe is still the one
            await first.send('421["echo",7]')
            assert await asyncio.wait_for(first.recv(), 5) == "431[7]"
            async with websockets.connect(probe_url(server, sid)) as late:
                await asyncio.wait_for(late.wait_closed(), 5)  # upgraded: no more probes
                assert late.close_code == 1008


async def test_a_failed_probe_is_closed_and_polling_carries_on() -> None:
    server = SmartSocket()
    server.on("echo", lambda socket, data: data)
    async with running(server), aiohttp.ClientSession() as http:
        sid = await open_session(http, server)
        assert await send(http, server, sid, "40") == 200
        await poll(http, server, sid)
        async with websockets.connect(probe_url(server, sid)) as probe:
            await probe.send("2nonsense")  # not the probe: the upgrade fails
            await asyncio.wait_for(probe.wait_closed(), 5)
        assert await send(http, server, sid, '421["echo",1]') == 200
        assert await poll(http, server, sid) == "431[1]"
