"""RFC 6455 and protocol v1 conformance, over raw sockets (DESIGN.md: "What picows does and what
we must do"). Each test checks one duty by its exact outcome on the wire, and, where a failure
could leak, that another connection on the same server keeps working."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    RawClient,
    encode_frame,
)
from smartsocket import Client, Config, SmartSocket, Socket
from smartsocket.demo import create_app
from smartsocket.testing import connected, running, wait_for
from smartsocket.transport import closing

pytestmark = pytest.mark.timeout(10)

MAX_SIZE = 1024
# Codes that must never appear on the wire (RFC 6455 7.4.1): no code, no status, abnormal.
NEVER_SENT = (0, 1005, 1006)
OPCODE_NAMES = {
    OP_TEXT: "text",
    OP_BINARY: "binary",
    OP_PING: "ping",
    OP_PONG: "pong",
    OP_CLOSE: "close",
}


# helpers


async def open_ws(server: SmartSocket, path: str = "/") -> RawClient:
    """A raw connection past the upgrade and the ``$welcome`` message."""
    ws = await RawClient.open(server.port)
    try:
        response = await ws.handshake(path)
        assert response.status == 101, response
        welcome = await recv_message(ws)
        assert welcome[0] == "$welcome" and welcome[1]["protocol"] == 1, welcome
    except BaseException:
        ws.close()
        raise
    return ws


@contextlib.asynccontextmanager
async def raw_session(server: SmartSocket) -> AsyncIterator[RawClient]:
    ws = await open_ws(server)
    try:
        yield ws
    finally:
        ws.close()


async def recv_message(ws: RawClient) -> Any:
    """The next message (a whole frame): JSON from a text frame, MessagePack from binary."""
    frame = await ws.recv_frame()
    assert frame.fin and frame.opcode in (OP_TEXT, OP_BINARY), f"expected a message: {frame}"
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3), frame
    if frame.opcode == OP_BINARY:
        return msgspec.msgpack.decode(frame.payload)
    return json.loads(frame.payload)


def check_close_frame(frame: Frame) -> None:
    """What every close frame the server sends must satisfy (RFC 6455 5.5.1, 7.4)."""
    assert frame.opcode == OP_CLOSE, f"expected a close frame, got {frame}"
    assert frame.fin and not frame.masked, frame
    assert len(frame.payload) != 1, frame
    assert frame.close_code not in NEVER_SENT, f"server sent close code {frame.close_code}"
    frame.close_reason.decode("utf-8")  # the reason must be UTF-8


async def expect_close(ws: RawClient, code: int) -> None:
    """The server fails the connection: a close frame with ``code``; once we answer it, the
    server drops TCP (well before its own close timeout)."""
    frame = await ws.recv_frame()
    check_close_frame(frame)
    assert frame.close_code == code, f"expected close {code}, got {frame.close_code} {frame}"
    ws.send_close(code)
    await ws.wait_closed(timeout=1.0)


async def expect_error(ws: RawClient, code: str) -> dict[str, Any]:
    """The next message is ``["$error", {"code": code, "message": ...}]``."""
    message = await recv_message(ws)
    assert isinstance(message, list) and len(message) == 2, message
    assert message[0] == "$error", message
    info = message[1]
    assert info["code"] == code, message
    assert isinstance(info["message"], str), message
    return info


async def assert_echo(ws: RawClient, ack_id: int = 99) -> None:
    """The connection still works: an echo gets its ack."""
    ws.send_text(json.dumps(["echo", "still here", ack_id]))
    assert await recv_message(ws) == [ack_id, "still here"]


async def assert_client_works(client: Client) -> None:
    assert await client.call("echo", {"ok": True}, timeout=2) == {"ok": True}


def echo_json(size: int, ack_id: int = 1) -> bytes:
    """An ``["echo", "xx..", ack_id]`` text message of exactly ``size`` bytes."""
    skeleton = f'["echo","",{ack_id}]'.encode()
    return f'["echo","{"x" * (size - len(skeleton))}",{ack_id}]'.encode()


def split(data: bytes, *cuts: int) -> list[bytes]:
    """``data`` cut at the given offsets."""
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def send_fragments(ws: RawClient, opcode: int, parts: list[bytes]) -> None:
    """One message as ``len(parts)`` frames: ``opcode`` first, then continuations."""
    for index, part in enumerate(parts):
        ws.send_frame(opcode if index == 0 else OP_CONTINUATION, part, fin=index == len(parts) - 1)


# fixtures


@pytest.fixture
async def ws(demo: SmartSocket) -> AsyncIterator[RawClient]:
    """A raw connection to the demo app, past ``$welcome``."""
    async with raw_session(demo) as client:
        yield client


@pytest.fixture
async def bystander(demo: SmartSocket) -> AsyncIterator[Client]:
    """A smartsocket.Client on the same server, which must not notice the raw client's fate."""
    async with connected(demo) as client:
        await assert_client_works(client)
        yield client


@pytest.fixture
async def small() -> AsyncIterator[SmartSocket]:
    """The demo app with ``max_message_size=1024``."""
    async with running(create_app(Config(max_message_size=MAX_SIZE))) as server:
        yield server


# 1. RSV bits


@pytest.mark.parametrize(
    ("opcode", "rsv"),
    [
        (OP_TEXT, "rsv2"),
        (OP_TEXT, "rsv3"),
        (OP_BINARY, "rsv2"),
        (OP_BINARY, "rsv3"),
        (OP_TEXT, "rsv1"),  # permessage-deflate was not negotiated
        (OP_BINARY, "rsv1"),
        (OP_PING, "rsv1"),  # control frames never carry RSV bits
        (OP_PING, "rsv2"),
        (OP_PONG, "rsv3"),
        (OP_CLOSE, "rsv1"),
    ],
    ids=lambda v: OPCODE_NAMES.get(v, v),
)
async def test_rsv_bits_fail_the_connection(
    ws: RawClient, bystander: Client, opcode: int, rsv: str
) -> None:
    payload = b'["echo", 1, 1]' if opcode in (OP_TEXT, OP_BINARY) else b"\x03\xe8"
    if opcode == OP_BINARY:
        payload = msgspec.msgpack.encode(["echo", 1, 1])
    ws.send_frame(opcode, payload, **{rsv: True})
    await expect_close(ws, 1002)
    await assert_client_works(bystander)


@pytest.mark.parametrize("rsv", ["rsv1", "rsv2", "rsv3"])
async def test_rsv_bits_on_a_continuation_fail_the_connection(ws: RawClient, rsv: str) -> None:
    first, second = split(b'["echo", 1, 1]', 5)
    ws.send_frame(OP_TEXT, first, fin=False)
    ws.send_frame(OP_CONTINUATION, second, **{rsv: True})
    await expect_close(ws, 1002)


# 2. Fragmentation


async def test_fragmented_text_with_interleaved_pings(ws: RawClient, bystander: Client) -> None:
    parts = split(b'["echo", "fragmented hello", 1]', 4, 15)
    ws.send_frame(OP_TEXT, parts[0], fin=False)
    ws.send_frame(OP_PING, b"p1")
    assert await ws.recv_frame() == Frame(OP_PONG, b"p1")
    ws.send_frame(OP_CONTINUATION, parts[1], fin=False)
    ws.send_frame(OP_PING, b"p2")
    assert await ws.recv_frame() == Frame(OP_PONG, b"p2")
    ws.send_frame(OP_CONTINUATION, parts[2])
    assert await recv_message(ws) == [1, "fragmented hello"]
    await assert_echo(ws)
    await assert_client_works(bystander)


async def test_fragmented_text_with_empty_fragments(ws: RawClient) -> None:
    send_fragments(ws, OP_TEXT, [b"", b'["echo", ', b"", b'"x", 2]', b""])
    assert await recv_message(ws) == [2, "x"]


async def test_fragmented_binary_messagepack(ws: RawClient) -> None:
    data = bytes(range(256)) * 2
    encoded = msgspec.msgpack.encode(["echo", data, 2])
    send_fragments(ws, OP_BINARY, split(encoded, 3, 300))
    frame = await ws.recv_frame()
    assert frame.opcode == OP_BINARY and frame.fin, frame
    assert msgspec.msgpack.decode(frame.payload) == [2, data]
    await assert_echo(ws)


async def test_one_frame_split_on_the_wire(ws: RawClient) -> None:
    await ws.send_in_pieces(encode_frame(OP_TEXT, b'["echo", "in pieces", 3]'), 5)
    assert await recv_message(ws) == [3, "in pieces"]


async def test_continuation_without_a_message(ws: RawClient, bystander: Client) -> None:
    ws.send_frame(OP_CONTINUATION, b'["echo", 1, 1]')
    await expect_close(ws, 1002)
    await assert_client_works(bystander)


@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
async def test_new_data_frame_while_a_message_is_open(
    ws: RawClient, bystander: Client, second: int
) -> None:
    ws.send_frame(OP_TEXT, b'["echo", ', fin=False)
    ws.send_frame(second, b'["echo", 1, 1]')
    await expect_close(ws, 1002)
    await assert_client_works(bystander)


# 3. UTF-8


@pytest.mark.parametrize(
    "payload",
    [
        b'["echo", "\xff", 1]',  # invalid byte inside a JSON string
        b"\xc3\x28 not json",  # invalid and not JSON either
        b'["echo", "\xed\xa0\x80", 1]',  # UTF-16 surrogate U+D800 encoded in UTF-8
        b'["echo", "\xc0\xaf", 1]',  # overlong encoding of "/"
        b'["echo", "\xf4\x90\x80\x80", 1]',  # above U+10FFFF
    ],
    ids=["bad-byte", "not-json", "surrogate", "overlong", "too-large"],
)
async def test_invalid_utf8_in_one_frame(ws: RawClient, bystander: Client, payload: bytes) -> None:
    ws.send_text(payload)
    await expect_close(ws, 1007)
    await assert_client_works(bystander)


@pytest.mark.parametrize(
    "parts",
    [
        [b'["echo", "\xff', b'", 1]'],  # bad byte in the first fragment
        [b'["echo", "ok', b"\xed\xa0\x80", b'", 1]'],  # surrogate in a middle fragment
        [b'["echo", "ok', b'", 1]\xff'],  # bad byte in the last fragment
        [b'["echo", "\xe2\x82', b'", 1]'],  # a code point cut short by the next fragment
        [b'["echo", 1, 1]', b"\xe2\x82"],  # the message ends inside a code point
    ],
    ids=["first", "middle-surrogate", "last", "cut-short", "truncated-at-end"],
)
async def test_invalid_utf8_in_fragments(
    ws: RawClient, bystander: Client, parts: list[bytes]
) -> None:
    send_fragments(ws, OP_TEXT, parts)
    await expect_close(ws, 1007)
    await assert_client_works(bystander)


async def test_invalid_utf8_fails_fast_before_the_message_ends(ws: RawClient) -> None:
    ws.send_frame(OP_TEXT, b'["echo", "\xff', fin=False)  # no more fragments follow
    await expect_close(ws, 1007)


async def test_code_points_split_across_fragments(ws: RawClient) -> None:
    text = "é€😀"
    encoded = json.dumps(["echo", text, 4], ensure_ascii=False).encode()
    start = encoded.index(text.encode())
    # Cut inside "é" (2 bytes), inside "€" (3 bytes) and inside "😀" (4 bytes).
    parts = split(encoded, start + 1, start + 3, start + 7)
    send_fragments(ws, OP_TEXT, parts)
    assert await recv_message(ws) == [4, text]


# 4. Message size


async def test_one_frame_over_the_limit(small: SmartSocket) -> None:
    async with raw_session(small) as ws, raw_session(small) as other:
        ws.send_text(echo_json(MAX_SIZE + 1))
        await expect_close(ws, 1009)
        await assert_echo(other)


async def test_fragments_under_the_limit_totalling_over_it(small: SmartSocket) -> None:
    async with raw_session(small) as ws, raw_session(small) as other:
        message = echo_json(MAX_SIZE + 1)
        send_fragments(ws, OP_TEXT, split(message, 400, 800))
        await expect_close(ws, 1009)
        await assert_echo(other)


async def test_binary_fragments_over_the_limit(small: SmartSocket) -> None:
    async with raw_session(small) as ws:
        message = msgspec.msgpack.encode(["echo", b"x" * MAX_SIZE, 1])
        send_fragments(ws, OP_BINARY, split(message, 500))
        await expect_close(ws, 1009)


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
async def test_message_exactly_at_the_limit(small: SmartSocket, fragmented: bool) -> None:
    async with raw_session(small) as ws:
        message = echo_json(MAX_SIZE, ack_id=5)
        assert len(message) == MAX_SIZE
        if fragmented:
            send_fragments(ws, OP_TEXT, split(message, 300, 700))
        else:
            ws.send_text(message)
        reply = await recv_message(ws)
        assert reply[0] == 5 and len(reply[1]) == MAX_SIZE - len(b'["echo","",5]')
        await assert_echo(ws)


# 5. Close handshake


async def test_close_is_answered_then_tcp_dropped(ws: RawClient, bystander: Client) -> None:
    ws.send_close(1000, b"bye")
    frame = await ws.recv_frame()
    check_close_frame(frame)
    assert frame.close_code == 1000
    await ws.wait_closed(timeout=1.0)  # the server drops TCP itself, not after a timeout
    await assert_client_works(bystander)


async def test_empty_close_is_answered_with_1000(ws: RawClient) -> None:
    ws.send_close()
    frame = await ws.recv_frame()
    check_close_frame(frame)
    assert frame.close_code == 1000
    await ws.wait_closed(timeout=1.0)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 4000, 4999])
async def test_valid_close_code_is_echoed(ws: RawClient, code: int) -> None:
    ws.send_close(code, b"done")
    frame = await ws.recv_frame()
    check_close_frame(frame)
    assert frame.close_code == code
    await ws.wait_closed(timeout=1.0)


# Bytes the peer sends after its close frame (RFC 6455 5.5.1 forbids it, but a frame may be in
# flight, and the fuzzing sends them) used to be left unread when the server dropped TCP right
# after its answer: Linux then sends a reset instead of a FIN (RFC 1122 4.2.2.13), and a reset may
# destroy our close frame before the peer reads it (RFC 9293 3.10.7.4). Each round: the close
# frame, a frame too big for the server's first read, a ping; the close frame must arrive, then a
# clean EOF. Without the fix nearly every round ended in a reset.
CLOSE_THEN_DATA_ROUNDS = 100


@pytest.mark.parametrize("fast_transport", [True, False], ids=["aiofastnet", "asyncio"])
async def test_close_followed_by_more_data_ends_with_the_close_frame_and_no_reset(
    fast_transport: bool,
) -> None:
    trailer = encode_frame(OP_BINARY, b"x" * 70_000) + encode_frame(OP_PING, b"after close")
    async with running(create_app(Config(fast_transport=fast_transport))) as server:
        for round_ in range(CLOSE_THEN_DATA_ROUNDS):
            ws = await open_ws(server)
            try:
                ws.send_raw(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big")) + trailer)
                try:
                    frame = await ws.recv_frame()
                except EOFError:
                    raise AssertionError(
                        f"round {round_}: no close frame before EOF ({ws.lost_error!r})"
                    ) from None
                check_close_frame(frame)
                assert frame.close_code == 1000
                await ws.wait_closed(timeout=1.0)
                assert ws.lost_error is None, f"round {round_}: reset ({ws.lost_error!r})"
            finally:
                ws.close()
        await wait_for(lambda: not server._connections.open, 2.0)


async def test_answered_close_is_released_when_the_peer_closes_its_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server half-closes after its answer and keeps the connection (counted, closing)
    only until the peer's FIN: an ordinary close is over in one round trip, not a timeout."""
    # With a close timeout far beyond the waits below, a release can only be the peer's FIN
    # (no assertion on how long it took: a slow machine must not fail this test).
    monkeypatch.setattr(closing, "CLOSE_TIMEOUT", 120.0)
    async with running(create_app(Config())) as server:
        ws = await open_ws(server)
        ws.send_close(1000)
        check_close_frame(await ws.recv_frame())
        await ws.wait_closed(timeout=30.0)  # FIN right after the close frame; RawClient answers
        await wait_for(lambda: not server._connections.open, 30.0)
        assert ws.lost_error is None


async def test_answered_close_of_a_peer_that_keeps_its_side_open_ends_at_close_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that never closes its side cannot hold the connection past CLOSE_TIMEOUT (it is
    aborted then); until then it counts as open, and what it sends is read and dropped."""
    monkeypatch.setattr(closing, "CLOSE_TIMEOUT", 1.0)
    async with running(create_app(Config())) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await wait_for(lambda: len(server._connections.open) == 1, 1.0)
        writer.write(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        started = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 1.0)  # up to EOF: our side stays open
        assert rest.endswith(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"), masked=False))
        writer.write(encode_frame(OP_TEXT, b"ignored") * 100)  # read and dropped
        await asyncio.sleep(0.1)
        # Closing, still counted (checked only while the timer cannot have run yet: a stalled
        # machine makes this assertion vacuous, never false).
        counted = len(server._connections.open) == 1
        assert counted or time.monotonic() - started >= closing.CLOSE_TIMEOUT
        await wait_for(lambda: not server._connections.open, 30.0)
        # Not before the timer (no upper bound: how late depends on the machine).
        assert time.monotonic() - started >= closing.CLOSE_TIMEOUT
        writer.close()


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2999, 5000, 65535])
async def test_invalid_close_code(ws: RawClient, bystander: Client, code: int) -> None:
    ws.send_close(code)
    await expect_close(ws, 1002)
    await assert_client_works(bystander)


async def test_one_byte_close_payload(ws: RawClient) -> None:
    ws.send_frame(OP_CLOSE, b"\x03")
    await expect_close(ws, 1002)


async def test_close_reason_not_utf8(ws: RawClient, bystander: Client) -> None:
    # RFC 6455 5.5.1/8.1: the reason is UTF-8; bad UTF-8 fails the connection. 1007 (data not
    # consistent with its type, 7.4.1) is the precise code; Autobahn 7.5.1 accepts 1002 or 1007.
    ws.send_close(1000, b"bad \xff reason")
    await expect_close(ws, 1007)
    await assert_client_works(bystander)


async def test_application_close_reason_stays_utf8() -> None:
    # A close frame carries at most 123 bytes of reason: a long reason must be cut on a code
    # point boundary (RFC 6455 5.5.1: the reason is UTF-8).
    server = SmartSocket()

    @server.on("kick")
    def kick(socket: Socket, data: Any) -> None:
        socket.disconnect(4000, "é" * 100)  # 200 bytes of UTF-8

    async with running(server), raw_session(server) as ws:
        ws.send_text(b'["kick", null]')
        frame = await ws.recv_frame()
        check_close_frame(frame)
        assert frame.close_code == 4000
        assert 0 < len(frame.payload) <= 125


# What picows checks for us (DESIGN.md); kept here so a picows upgrade cannot lose them.


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(OP_TEXT, b'["echo", 1, 1]', masked=False),  # clients must mask
        encode_frame(OP_PING, b"x" * 126),  # control frames carry at most 125 bytes
        encode_frame(OP_PING, b"x", fin=False),  # control frames are never fragmented
        encode_frame(0x3, b"x"),  # reserved data opcode
        encode_frame(0xB, b"x"),  # reserved control opcode
    ],
    ids=["unmasked", "long-ping", "fragmented-ping", "opcode-3", "opcode-11"],
)
async def test_frame_errors_caught_by_picows(
    ws: RawClient, bystander: Client, frame: bytes
) -> None:
    ws.send_raw(frame)
    await expect_close(ws, 1002)
    await assert_client_works(bystander)


# 6. Handshake and plain HTTP


async def test_subprotocol_is_selected_from_the_offer(demo: SmartSocket) -> None:
    ws = await RawClient.open(demo.port)
    try:
        response = await ws.handshake(protocol="foo, smartsocket.v1")
        assert response.status == 101
        assert response.headers.get("sec-websocket-protocol") == "smartsocket.v1"
        assert (await recv_message(ws))[0] == "$welcome"
        await assert_echo(ws)
    finally:
        ws.close()


async def test_offer_without_our_subprotocol_is_refused(demo: SmartSocket) -> None:
    ws = await RawClient.open(demo.port)
    try:
        response = await ws.handshake(protocol="foo, bar")
        assert response.status == 400
        await ws.read_until_eof(timeout=1.0)
    finally:
        ws.close()


async def test_no_subprotocol_offer_means_v1(demo: SmartSocket) -> None:
    ws = await RawClient.open(demo.port)
    try:
        response = await ws.handshake()
        assert response.status == 101
        assert "sec-websocket-protocol" not in response.headers
        welcome = await recv_message(ws)
        assert welcome[0] == "$welcome" and welcome[1]["protocol"] == 1
        await assert_echo(ws)
    finally:
        ws.close()


@pytest.mark.parametrize("version", ["8", "14", ""])
async def test_wrong_websocket_version(demo: SmartSocket, version: str) -> None:
    ws = await RawClient.open(demo.port)
    try:
        response = await ws.handshake(version=version)
        assert response.status == 426
        assert response.headers.get("sec-websocket-version") == "13"
        await ws.read_until_eof(timeout=1.0)
    finally:
        ws.close()


async def test_upgrade_to_an_unknown_path(demo: SmartSocket) -> None:
    ws = await RawClient.open(demo.port)
    try:
        response = await ws.handshake("/nope")
        assert response.status == 404
    finally:
        ws.close()


@pytest.mark.parametrize("path", ["/smartsocket", "/smartsocket/"])
async def test_upgrade_on_the_smartsocket_path(demo: SmartSocket, path: str) -> None:
    ws = await open_ws(demo, path)
    try:
        await assert_echo(ws)
    finally:
        ws.close()


async def get_json(server: SmartSocket, path: str) -> tuple[int, Any]:
    ws = await RawClient.open(server.port)
    try:
        response = await ws.request(path)
    finally:
        ws.close()
    assert response.headers.get("content-type", "").startswith("application/json"), response
    return response.status, json.loads(response.body)


async def test_health(demo: SmartSocket) -> None:
    status, body = await get_json(demo, "/smartsocket/health")
    assert status == 200
    assert body["status"] == "ok"


async def test_stats(demo: SmartSocket, ws: RawClient) -> None:
    await assert_echo(ws)
    status, body = await get_json(demo, "/smartsocket/stats")
    assert status == 200
    assert {"connections", "totalConnections", "uptime", "transmission"} <= body.keys()
    assert body["connections"] == 1 and body["totalConnections"] >= 1
    assert set(body["transmission"]) >= {
        "totalMessages",
        "averageLatency",
        "averageSpeed",
        "averageCompression",
        "totalDataTransmitted",
        "totalCompressed",
        "bandwidthSaved",
    }


# 7. Protocol-level bad input: an $error, and the connection keeps working


BAD_TEXT = {
    "not-json": (b"hello", "bad_message"),
    "object": (b'{"event": "echo"}', "bad_message"),
    "string": (b'"echo"', "bad_message"),
    "empty-array": (b"[]", "bad_message"),
    "five-items": (b'["echo", 1, 2, 3, 4]', "bad_message"),
    "null-meta": (b'["echo", 1, null, null]', "bad_message"),
    "key-without-ack": (b'["echo", 1, null, "k"]', "bad_message"),
    "bool-head": (b"[true, 1]", "bad_message"),
    "null-head": (b"[null, 1]", "bad_message"),
    "ack-id-0": (b'["echo", 1, 0]', "bad_message"),
    "ack-id-negative": (b'["echo", 1, -1]', "bad_message"),
    "ack-id-float": (b'["echo", 1, 1.5]', "bad_message"),
    "ack-id-2**53": (b'["echo", 1, 9007199254740992]', "bad_message"),
    "ack-id-string": (b'["echo", 1, "1"]', "bad_message"),
    "reply-id-0": (b'[0, "x"]', "bad_message"),
    "reply-id-2**53": (b'[9007199254740992, "x"]', "bad_message"),
    "reply-without-result": (b"[5]", "bad_message"),
    "empty-name": (b'["", 1]', "bad_message"),
    "reserved-$": (b'["$foo", 1]', "reserved_event"),
    "reserved-$welcome": (b'["$welcome", 1]', "reserved_event"),
    "reserved-disconnect": (b'["disconnect", 1]', "reserved_event"),
    "reserved-connect": (b'["connect", 1]', "reserved_event"),
    "reserved-error": (b'["error", 1]', "reserved_event"),
    "unknown-ack": (b'[12345, "x"]', "unknown_ack"),
}


@pytest.mark.parametrize(("payload", "code"), BAD_TEXT.values(), ids=BAD_TEXT.keys())
async def test_bad_text_message(
    ws: RawClient, bystander: Client, payload: bytes, code: str
) -> None:
    ws.send_text(payload)
    await expect_error(ws, code)
    await assert_echo(ws)
    await assert_client_works(bystander)


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", b"\x93\xa4echo", msgspec.msgpack.encode({"a": 1}), msgspec.msgpack.encode([])],
    ids=["invalid-byte", "truncated", "map", "empty-array"],
)
async def test_bad_messagepack(ws: RawClient, bystander: Client, payload: bytes) -> None:
    ws.send_binary(payload)
    await expect_error(ws, "bad_message")
    await assert_echo(ws)
    await assert_client_works(bystander)


async def test_event_without_handler_gets_an_ack_error(ws: RawClient) -> None:
    ws.send_text(b'["nohandler", 1, 7]')
    reply = await recv_message(ws)
    assert reply[:2] == [7, None] and len(reply) == 3, reply
    assert reply[2]["code"] == "unknown_event" and isinstance(reply[2]["message"], str)
    await assert_echo(ws)


async def test_event_without_handler_and_ack_is_ignored(ws: RawClient) -> None:
    ws.send_text(b'["nohandler", 1]')
    await assert_echo(ws)  # nothing came before the echo's ack


async def test_messagepack_event_gets_a_messagepack_ack(ws: RawClient) -> None:
    ws.send_binary(msgspec.msgpack.encode(["echo", {"a": 1}, 3]))
    frame = await ws.recv_frame()
    assert frame.opcode == OP_BINARY, f"expected a binary (MessagePack) ack, got {frame}"
    assert msgspec.msgpack.decode(frame.payload) == [3, {"a": 1}]


# 8. Ping/pong


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))], ids=["empty", "5", "125"])
async def test_ping_gets_a_pong_with_the_same_payload(ws: RawClient, payload: bytes) -> None:
    ws.send_frame(OP_PING, payload)
    assert await ws.recv_frame() == Frame(OP_PONG, payload)
    await assert_echo(ws)


async def test_unsolicited_pong_is_ignored(ws: RawClient) -> None:
    ws.send_frame(OP_PONG, b"nobody asked")
    await assert_echo(ws)
