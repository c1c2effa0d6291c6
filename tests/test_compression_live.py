"""permessage-deflate on live connections: negotiation, both directions, broadcasts, abuse."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from rawws import OP_CONTINUATION, OP_TEXT, RawClient
from smartsocket import Client, Config, SmartSocket, Socket, compression
from smartsocket.demo import create_app
from smartsocket.testing import Recorder, running

CHAT = {"room": "lobby", "text": "The quick brown fox jumps over the lazy dog. " * 20}


def deflate(data: bytes) -> bytes:
    """What a client with no context takeover puts on the wire (RFC 7692 7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


@pytest.fixture
async def server() -> AsyncIterator[SmartSocket]:
    async with running(create_app()) as srv:
        yield srv


def raw(srv: SmartSocket) -> dict[str, Any]:
    return srv.stats()["raw"]  # type: ignore[no-any-return]


async def test_websockets_client_negotiates_and_both_ways_compress(server: SmartSocket) -> None:
    async with websockets.connect(server.url, subprotocols=["smartsocket.v1"]) as ws:  # type: ignore[list-item]
        header = ws.response.headers["Sec-WebSocket-Extensions"]
        assert header.startswith("permessage-deflate") and "server_no_context_takeover" in header
        json.loads(await ws.recv())  # $welcome (small: sent plain)
        before = raw(server)
        await ws.send(json.dumps(["echo", CHAT, 1]))
        assert json.loads(await ws.recv()) == [1, CHAT]
        after = raw(server)
        # websockets compressed its message and we inflated it; our reply was compressed once.
        inflated = after["bytesIn"] - before["bytesIn"]
        assert after["bytesInWire"] - before["bytesInWire"] < inflated / 3
        assert after["compressedMessagesOut"] == before["compressedMessagesOut"] + 1
        stats = server.stats()["transmission"]
        assert float(stats["bandwidthSaved"].rstrip("%")) > 50


async def test_python_client_compresses_only_when_it_pays(server: SmartSocket) -> None:
    client = Client(server.url, reconnect=False)
    await client.connect()
    assert client._conn is not None and client._conn.deflater is not None
    before = raw(server)
    assert await client.call("echo", "small") == "small"  # under the threshold: plain
    noise = os.urandom(2000)  # incompressible: the 10% rule keeps it plain
    assert await client.call("echo", noise) == noise
    mid = raw(server)
    assert mid["compressedMessagesOut"] == before["compressedMessagesOut"]
    assert mid["bytesInWire"] - before["bytesInWire"] == mid["bytesIn"] - before["bytesIn"]
    assert await client.call("echo", CHAT) == CHAT
    after = raw(server)
    assert after["compressedMessagesOut"] == mid["compressedMessagesOut"] + 1
    assert after["bytesInWire"] - mid["bytesInWire"] < (after["bytesIn"] - mid["bytesIn"]) / 3
    await client.close()


async def test_broadcast_compresses_once_for_every_member(
    server: SmartSocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = compression.compress_once

    def counting(payload: Any, **kwargs: Any) -> bytes | None:
        calls.append(len(payload))
        return real(payload, **kwargs)

    monkeypatch.setattr(compression, "compress_once", counting)
    clients = [Client(server.url, reconnect=False) for _ in range(3)]
    plain = Client(server.url, reconnect=False, compression=False)
    for c in [*clients, plain]:
        await c.connect()
        await c.call("join", {"room": "lobby"})
    recs = [Recorder(c, "chat") for c in [*clients, plain]]
    sender = Client(server.url, reconnect=False)
    await sender.connect()
    await sender.call("join", {"room": "lobby"})
    before = raw(server)
    assert await sender.call("chat", CHAT) == {"delivered": 4}
    for rec in recs:
        assert (await rec.next("chat"))["text"] == CHAT["text"]
    assert len(calls) == 1  # one compression served the three deflate members
    after = raw(server)
    assert after["compressedMessagesOut"] - before["compressedMessagesOut"] == 3
    for c in [*clients, plain, sender]:
        await c.close()


async def test_fragmented_compressed_message_and_plain_frames_on_a_deflate_connection(
    server: SmartSocket,
) -> None:
    ws = await RawClient.open(server.port)
    response = await ws.handshake(extra={"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert "permessage-deflate" in response.headers["sec-websocket-extensions"]
    await ws.recv_frame()  # $welcome
    body = deflate(json.dumps(["echo", CHAT, 1]).encode())
    # RSV1 only on the first frame (RFC 7692 6.1); continuations carry the rest.
    ws.send_frame(OP_TEXT, body[:10], fin=False, rsv1=True)
    ws.send_frame(OP_CONTINUATION, body[10:40], fin=False)
    ws.send_frame(OP_CONTINUATION, body[40:], fin=True)
    frame = await ws.recv_frame()
    assert frame.rsv1  # the reply is compressed too
    reply = zlib.decompressobj(-15).decompress(frame.payload + b"\x00\x00\xff\xff")
    assert json.loads(reply) == [1, CHAT]
    ws.send_text(json.dumps(["echo", "plain is fine", 2]))  # RSV1 clear: not compressed
    frame = await ws.recv_frame()
    assert not frame.rsv1 and json.loads(frame.payload) == [2, "plain is fine"]
    ws.close()


async def expect_close_code(ws: RawClient, code: int) -> None:
    while True:
        frame = await ws.recv_frame()
        if frame.opcode == 8:
            assert frame.close_code == code, frame
            return


async def test_bad_deflate_stream_closes_1007_and_others_carry_on(server: SmartSocket) -> None:
    bystander = Client(server.url, reconnect=False)
    await bystander.connect()
    ws = await RawClient.open(server.port)
    await ws.handshake(extra={"Sec-WebSocket-Extensions": "permessage-deflate"})
    await ws.recv_frame()
    ws.send_frame(OP_TEXT, b"\xff\xff\xff\xff not deflate", rsv1=True)
    await expect_close_code(ws, 1007)
    ws.close()
    assert await bystander.call("echo", CHAT) == CHAT
    await bystander.close()


async def test_zip_bomb_closes_1009_without_inflating_it() -> None:
    server = create_app(Config(max_message_size=64 * 1024))
    async with running(server):
        bystander = Client(server.url, reconnect=False)
        await bystander.connect()
        ws = await RawClient.open(server.port)
        await ws.handshake(extra={"Sec-WebSocket-Extensions": "permessage-deflate"})
        await ws.recv_frame()
        bomb = deflate(b'["echo","' + b"A" * (50 * 1024 * 1024) + b'",1]')
        assert len(bomb) < 64 * 1024  # small on the wire, 50 MB inflated
        ws.send_frame(OP_TEXT, bomb, rsv1=True)
        await expect_close_code(ws, 1009)
        ws.close()
        assert await bystander.call("echo", "unaffected") == "unaffected"
        await bystander.close()


async def test_context_takeover_mode_keeps_a_compressor_per_connection() -> None:
    server = create_app(Config(compression_context_takeover=True, compression_max_window_bits=12))
    sockets: list[Socket] = []
    server.on_connection(sockets.append)
    async with running(server), websockets.connect(server.url) as ws:
        header = ws.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" not in header
        await ws.recv()
        for i in range(1, 4):  # each reply refers back to the previous ones
            await ws.send(json.dumps(["echo", CHAT, i]))
            assert json.loads(await ws.recv()) == [i, CHAT]
        assert sockets[0]._conn is not None
        deflater = sockets[0]._conn.deflater
        assert deflater is not None and not deflater.stateless and deflater.window_bits <= 12
        await ws.send(json.dumps(["join", {"room": "r"}, 9]))
        await ws.recv()
        server.room("r").broadcast("chat", CHAT)  # an OWN-mode member in a broadcast
        assert json.loads(await ws.recv()) == ["chat", CHAT]


async def test_compression_off_declines_offers() -> None:
    async with running(create_app(Config(enable_compression=False))) as server:
        async with websockets.connect(server.url) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.recv()
            await ws.send(json.dumps(["echo", CHAT, 1]))
            assert json.loads(await ws.recv()) == [1, CHAT]
        client = Client(server.url, reconnect=False)
        await client.connect()
        assert client._conn is not None and client._conn.deflater is None
        assert await client.call("echo", CHAT) == CHAT
        await client.close()


async def test_binary_payloads_compress_too(server: SmartSocket) -> None:
    client = Client(server.url, reconnect=False)
    await client.connect()
    blob = {"data": b"\x00\x01" * 2000}
    before = raw(server)
    assert await client.call("echo", blob) == blob
    assert raw(server)["compressedMessagesOut"] == before["compressedMessagesOut"] + 1
    await client.close()
