"""The Python client: reconnect, offline buffer, heartbeat, backoff."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import pytest
import websockets

from smartsocket import Client, ConnectionClosed, OfflineBufferFull, SmartSocket, Socket
from smartsocket.backoff import backoff_delay
from smartsocket.demo import create_app
from smartsocket.testing import Recorder, running, wait_for


def test_backoff_is_one_function_for_every_part() -> None:
    from smartsocket.client import backoff as client_backoff
    from smartsocket.cluster.brokers import base

    # the client's old import path still works; the broker links use the same function
    assert client_backoff.backoff_delay is backoff_delay is base.backoff_delay


def test_backoff_grows_caps_and_jitters() -> None:
    plain = [backoff_delay(n, base=1, maximum=30, jitter=0) for n in range(1, 8)]
    assert plain == [1, 2, 4, 8, 16, 30, 30]
    rng = random.Random(1)
    spread = [backoff_delay(3, base=1, maximum=30, jitter=0.5, rng=rng) for _ in range(200)]
    assert all(2 <= d <= 6 for d in spread)
    assert max(spread) - min(spread) > 2  # really spread, not a constant
    assert backoff_delay(100, base=1, maximum=30, jitter=0.5) <= 30
    with pytest.raises(ValueError):
        backoff_delay(0, base=1, maximum=2)


async def test_reconnects_after_server_restart_and_flushes_offline_buffer() -> None:
    first = create_app()
    received: list[Any] = []
    async with running(first) as server:
        port = server.port
        client = Client(server.url, reconnect_delay=0.05, reconnect_delay_max=0.2)
        rec = Recorder(client, "connect", "disconnect", "reconnecting")
        await client.connect()
        await rec.next("connect")
        first_sid = client.sid
    # The server is gone: the client notices and keeps trying; sends wait in the buffer.
    closed = await rec.next("disconnect")
    assert isinstance(closed, ConnectionClosed) and closed.code == 1001
    assert await rec.next("reconnecting") == 1
    assert not client.connected
    client.send("echo", "sent while down 1")
    client.send("echo", "sent while down 2")
    pending_call = asyncio.ensure_future(client.call("echo", "call while down", timeout=10))

    second = create_app().__class__(port=port, host="127.0.0.1")
    second.on("echo", lambda socket, data: received.append(data) or data)
    await second.start()
    try:
        await rec.next("connect", timeout=10)
        assert client.connected and client.sid != first_sid
        assert await pending_call == "call while down"
        await wait_for(lambda: len(received) == 3)
        assert received == ["sent while down 1", "sent while down 2", "call while down"]
    finally:
        await client.close()
        await second.close()


async def test_offline_buffer_is_bounded() -> None:
    async with running(create_app()) as server:
        client = Client(server.url, reconnect_delay=5, reconnect_delay_max=5, max_buffered=2)
        await client.connect()
    await wait_for(lambda: not client.connected)
    client.send("echo", 1)
    client.send("echo", 2)
    with pytest.raises(OfflineBufferFull):
        client.send("echo", 3)
    await client.close()


async def test_gives_up_after_max_attempts() -> None:
    async with running(create_app()) as server:
        client = Client(
            server.url, reconnect_delay=0.01, reconnect_delay_max=0.02, max_reconnect_attempts=3
        )
        rec = Recorder(client, "reconnecting", "reconnect_failed")
        await client.connect()
    assert [await rec.next("reconnecting") for _ in range(3)] == [1, 2, 3]
    await rec.next("reconnect_failed")
    assert rec.pending("reconnecting") == 0
    await client.close()


async def test_no_reconnect_after_kick_or_close() -> None:
    server = SmartSocket()
    sockets: list[Socket] = []
    server.on_connection(sockets.append)
    async with running(server):
        client = Client(server.url, reconnect_delay=0.01, reconnect_delay_max=0.02)
        rec = Recorder(client, "disconnect", "reconnecting")
        await client.connect()
        sockets[0].disconnect()  # 4000: kicked by the application
        assert (await rec.next("disconnect")).code == 4000
        await asyncio.sleep(0.1)
        assert rec.pending("reconnecting") == 0
        await client.close()


async def test_first_connect_failure_raises() -> None:
    async with running(SmartSocket()) as server:
        url = server.url
    with pytest.raises(OSError):
        await Client(url).connect()


async def test_detects_a_silent_server_and_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    """An independent peer (the websockets library) welcomes, then never speaks again."""
    connections = 0

    async def silent(ws: Any) -> None:
        nonlocal connections
        connections += 1
        welcome = {"sid": f"s{connections}", "token": "t", "protocol": 1,
                   "pingInterval": 100, "pingTimeout": 100}
        await ws.send(json.dumps(["$welcome", welcome]))
        await ws.wait_closed()

    protocols = ["smartsocket.v1"]
    async with websockets.serve(silent, "127.0.0.1", 0, subprotocols=protocols) as ws_server:  # type: ignore[arg-type]
        port = ws_server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/", reconnect_delay=0.01, reconnect_delay_max=0.02)
        rec = Recorder(client, "connect", "disconnect")
        await client.connect()
        assert client.sid == "s1"
        caplog.set_level(logging.WARNING, "smartsocket.client")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await rec.next("disconnect", timeout=10)
        # The client's watchdog dropped the link (the server never closes it), and not before
        # pingInterval + pingTimeout = 0.2 s of silence (a lower bound: no machine is too slow).
        assert any(r.getMessage().startswith("no traffic from ") for r in caplog.records)
        assert loop.time() - started >= 0.15
        await rec.next("connect")  # first connect
        await rec.next("connect", timeout=10)  # reconnected
        assert client.sid == "s2"
        await client.close()


async def test_client_measures_latency_with_ping() -> None:
    async with running(create_app()) as server:
        client = Client(server.url)
        await client.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        rtt = await client.ping()
        # In seconds, and within the time the ping took here (not a guess at machine speed).
        assert 0 <= rtt <= loop.time() - started and client.latency == rtt
        await client.close()
        with pytest.raises(ConnectionClosed):
            await client.ping()
