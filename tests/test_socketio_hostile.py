"""A hostile client against the Socket.IO endpoint, over real sockets: what it tries to make
the server hold or repeat, and that the other clients carry on (docs/socketio.md, "Admission,
limits and close", "Malformed input")."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
import websockets

from smartsocket import AuthRequest, SmartSocket, Socket
from smartsocket.testing import running, wait_for
from test_socketio_polling import RS, base, open_session, params, poll, send


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


def refusing_server(**options: Any) -> SmartSocket:
    server = SmartSocket(**options)
    server.on("echo", lambda socket, data: data)

    @server.authenticate
    def check(request: AuthRequest) -> dict[str, str] | None:
        return {"user": "ann"} if request.token == "right" else None

    return server


async def test_refused_connects_end_the_session_at_the_limit() -> None:
    # Each CONNECT tries credentials, and one POST carries 1,000 packets: without a bound one
    # session was a credential-guessing machine (20,000 guesses in 9 s, measured).
    server = refusing_server(socketio_max_connect_refusals=3)
    async with running(server), aiohttp.ClientSession() as http:
        bystander = await open_session(http, server)
        assert await send(http, server, bystander, '40{"token":"right"}') == 200
        assert (await poll(http, server, bystander)).startswith('40{"sid":')
        # just under: two refusals, then the right token on the same session
        sid = await open_session(http, server)
        assert await send(http, server, sid, '40{"token":"a"}\x1e40{"token":"b"}') == 200
        answer = await poll(http, server, sid)
        assert answer.split(RS) == ['44{"message":"unauthorized"}'] * 2
        assert await send(http, server, sid, '40{"token":"right"}') == 200
        assert (await poll(http, server, sid)).startswith('40{"sid":')
        # over: a burst of guesses gets three answers and the close packet; the rest unread
        sid = await open_session(http, server)
        guesses = RS.join(f'40{{"token":"guess{i}"}}' for i in range(50))
        assert await send(http, server, sid, guesses) == 200
        answer = await poll(http, server, sid)
        assert answer.split(RS) == ['44{"message":"unauthorized"}'] * 3 + ["1"]
        assert server.stats()["socketio"]["connectErrors"] == 5
        async with http.get(base(server), params=params(sid)) as resp:
            assert resp.status == 400  # the session is gone
        assert await send(http, server, bystander, '421["echo",1]') == 200
        assert await poll(http, server, bystander) == "431[1]"


async def test_refused_connects_close_a_websocket_session_at_the_limit() -> None:
    server = refusing_server(socketio_max_connect_refusals=2)
    async with running(server):
        url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(url) as ws:
            assert str(await ws.recv()).startswith("0{")
            for i in range(5):
                await ws.send(f'40{{"token":"guess{i}"}}')
            got = []
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(10):
                    got.append(await asyncio.wait_for(ws.recv(), 5))
            assert got == ['44{"message":"unauthorized"}'] * 2
        assert server.stats()["socketio"]["connectErrors"] == 2


async def test_a_polling_client_that_stops_polling_is_dropped_at_max_write_buffer() -> None:
    # What is queued for a client that never polls is bounded by max_write_buffer (then the
    # session ends: "slow consumer"); the room's other members carry on.
    server = SmartSocket(max_write_buffer=4096, write_buffer_high=1024,
                         rate_limit_messages=0, rate_limit_bytes=0)
    gone: list[str] = []
    server.on("disconnect", lambda socket, reason: gone.append(reason))

    def join(socket: Socket, room: str) -> bool:
        socket.join(room)
        return True

    server.on("join", join)
    async with running(server), aiohttp.ClientSession() as http:
        sids = []
        for _ in range(2):
            sid = await open_session(http, server)
            assert await send(http, server, sid, '40\x1e420["join","r"]') == 200
            assert (await poll(http, server, sid)).endswith("430[true]")  # CONNECT, ack
            sids.append(sid)
        stalled, reader = sids
        await wait_for(lambda: server.room("r").socket_count() == 2)
        # 100-byte events: the stalled session holds at most 4,096 bytes of them
        text = "x" * 80
        for i in range(30):  # just under the limit: about 2,700 bytes queued
            server.room("r").broadcast("m", text)
            if i % 10 == 9:
                assert (await poll(http, server, reader)).count('"m"') == 10
        assert stalled in server._socketio.sessions  # under the limit: still there
        for _ in range(20):  # over it: dropped amid a fan-out, which reaches the others
            assert server.room("r").broadcast("m", text) >= 1
        await wait_for(lambda: stalled not in server._socketio.sessions)
        assert gone == ["slow consumer"]
        assert (await poll(http, server, reader)).count('"m"') == 20
        async with http.get(base(server), params=params(stalled)) as resp:
            assert resp.status == 400
        server.room("r").broadcast("m", "still here")
        assert "still here" in await poll(http, server, reader)


async def connected_session(http: aiohttp.ClientSession, server: SmartSocket) -> str:
    sid = await open_session(http, server)
    assert await send(http, server, sid, "40") == 200
    assert (await poll(http, server, sid)).startswith('40{"sid":')
    return sid


async def test_packets_per_post_at_and_over_the_limit() -> None:
    server = SmartSocket(socketio_max_packets_per_post=5)
    server.on("echo", lambda socket, data: data)
    async with running(server), aiohttp.ClientSession() as http:
        bystander = await connected_session(http, server)
        sid = await connected_session(http, server)
        body = RS.join(f'42{i}["echo",{i}]' for i in range(1, 6))
        assert await send(http, server, sid, body) == 200  # five: at the limit
        assert (await poll(http, server, sid)).split(RS) == [f"43{i}[{i}]" for i in range(1, 6)]
        body = RS.join(f'42{i}["echo",{i}]' for i in range(1, 7))
        async with http.post(base(server), params=params(sid), data=body) as resp:
            assert resp.status == 400  # six: refused whole, the session ends
            assert (await resp.json())["message"] == "Bad request"
        async with http.get(base(server), params=params(sid)) as resp:
            assert resp.status == 400
        assert await send(http, server, bystander, '421["echo",1]') == 200
        assert await poll(http, server, bystander) == "431[1]"


def binary_event(ack_id: int, attachments: int) -> str:
    holders = ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(attachments))
    parts = [f'45{attachments}-{ack_id}["echo",{holders}]']
    parts += [f"b{base64.b64encode(bytes([i])).decode()}" for i in range(attachments)]
    return RS.join(parts)


async def test_attachments_per_packet_at_and_over_the_limit() -> None:
    server = SmartSocket(socketio_max_attachments=2)
    server.on("echo", lambda socket, data: data)
    async with running(server), aiohttp.ClientSession() as http:
        bystander = await connected_session(http, server)
        sid = await connected_session(http, server)
        assert await send(http, server, sid, binary_event(1, 2)) == 200  # at the limit
        answer = (await poll(http, server, sid)).split(RS)
        assert answer[0].startswith("462-1[") and answer[1:] == ["bAA==", "bAQ=="]
        assert await send(http, server, sid, binary_event(2, 3)) == 200  # over it
        assert await poll(http, server, sid) == "1"  # the session ends: parse error
        async with http.get(base(server), params=params(sid)) as resp:
            assert resp.status == 400
        assert await send(http, server, bystander, '421["echo",1]') == 200
        assert await poll(http, server, bystander) == "431[1]"


async def native_refused(server: SmartSocket) -> int | None:
    """How a native WebSocket fares now: None when welcomed, else its close code or HTTP
    status."""
    try:
        async with websockets.connect(server.url) as ws:
            try:
                assert "$welcome" in str(await asyncio.wait_for(ws.recv(), 5))
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code
            return None
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


async def handshake_status(http: aiohttp.ClientSession, server: SmartSocket) -> int:
    async with http.get(base(server), params={"EIO": "4", "transport": "polling"}) as resp:
        return resp.status


async def test_sessions_and_sockets_share_the_per_ip_limit() -> None:
    # Sessions without a socket were counted apart from the sockets, against the same limit:
    # one address held twice max_connections_per_ip (sessions, then as many native sockets).
    server = SmartSocket(max_connections_per_ip=2)
    async with running(server), aiohttp.ClientSession() as http:
        first = await open_session(http, server)
        second = await open_session(http, server)
        assert await handshake_status(http, server) == 429
        assert await native_refused(server) == 1013  # two sessions: the address is full
        assert await send(http, server, first, "40") == 200  # a socket takes its place
        assert (await poll(http, server, first)).startswith('40{"sid":')
        assert await native_refused(server) == 1013  # still two connections
        assert await send(http, server, second, "1") == 200  # the other session leaves
        async with websockets.connect(server.url) as native:  # one slot: just under
            assert "$welcome" in str(await native.recv())
            assert await handshake_status(http, server) == 429  # a socket each: full
            assert await send(http, server, first, "41") == 200  # "/" left: a session again
            assert await native_refused(server) == 1013
        await wait_for(lambda: not server.sockets)
        assert await handshake_status(http, server) == 200


async def test_sessions_without_a_socket_count_against_max_connections() -> None:
    server = SmartSocket(max_connections=2)
    async with running(server), aiohttp.ClientSession() as http:
        sid = await open_session(http, server)
        async with websockets.connect(server.url) as native:
            assert "$welcome" in str(await native.recv())
            assert await native_refused(server) == 503  # a session and a socket: full
            assert await handshake_status(http, server) == 503
            assert await send(http, server, sid, "40") == 200  # its socket: still two
            assert (await poll(http, server, sid)).startswith('40{"sid":')
            assert await handshake_status(http, server) == 503
        await wait_for(lambda: len(server.sockets) == 1)
        assert await handshake_status(http, server) == 200


async def test_packets_no_socket_charges_count_against_the_rate_limits() -> None:
    # Noops ("6" + 100 KB), control packets and binary frames reached no socket's limits:
    # 200 MB of them in 0.9 s kept a session open under rate_limit_bytes=10000. The session
    # charges them at the socket's rates; rate_limit_strikes refusals end it (4008).
    server = SmartSocket(rate_limit_messages=10, rate_limit_burst=10, rate_limit_strikes=5)
    server.on("echo", lambda socket, data: data)
    reasons: list[str] = []
    server.on("disconnect", lambda socket, reason: reasons.append(reason))
    async with running(server), aiohttp.ClientSession() as http:
        server._clock = lambda: 0  # frozen: exactly the bursts pass
        bystander = await connected_session(http, server)
        url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send("40")
            assert str(await ws.recv()).startswith('40{"sid":')
            for _ in range(9):  # the CONNECT took one: the burst is spent, nothing dropped
                await ws.send("6")
            await ws.send('421["echo",1]')  # events are the socket's to charge
            assert await asyncio.wait_for(ws.recv(), 5) == "431[1]"
            assert reasons == []
            for _ in range(6):  # five dropped (strikes), the sixth ends the session
                await ws.send("6" + "x" * 1000)
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert reasons == ["rate limit abuse"]
        assert await send(http, server, bystander, '421["echo",1]') == 200
        assert await poll(http, server, bystander) == "431[1]"


async def test_polling_posts_count_against_the_rate_limits() -> None:
    server = SmartSocket(rate_limit_bytes=1000, rate_limit_strikes=2)  # bytes burst: 2000
    async with running(server), aiohttp.ClientSession() as http:
        server._clock = lambda: 0
        sid = await open_session(http, server)  # before any CONNECT: charged all the same
        noops = RS.join(["6"] * 750)  # 1,499 bytes
        assert await send(http, server, sid, noops) == 200  # under the burst
        assert await send(http, server, sid, noops) == 429  # over it: not read
        assert await send(http, server, sid, "6") == 200  # what still fits
        assert await send(http, server, sid, noops) == 429  # second strike
        assert await send(http, server, sid, noops) == 429  # third: the session ends
        async with http.get(base(server), params=params(sid)) as resp:
            assert resp.status == 200 and await resp.text() == "1"  # the close packet
