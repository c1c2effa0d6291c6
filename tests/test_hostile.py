"""Hostile clients (issue 14): raw frames on 127.0.0.1 against one server, one test per attack.

Bounds are asserted on what the server counts (close codes, its counters, bytes an assembler
holds, allocations traced by tracemalloc), never on RSS or time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tracemalloc
from typing import Any

import pytest

from rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Frame, RawClient, encode_frame
from smartsocket import Client, SmartSocket, Socket
from smartsocket.protocol.assembler import MessageAssembler
from smartsocket.testing import running, wait_for

KEY = "k3y"
QUIET = {"ping_interval": 600.0, "ping_timeout": 600.0}  # no $ping during a test


async def open_ws(port: int, *, rcvbuf: int | None = None, welcome: bool = True) -> RawClient:
    if rcvbuf is None:
        ws = await RawClient.open(port)
    else:  # a peer that will not read: a tiny receive window
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        # Each small frame leaves at once (Nagle would batch them: one server read, one pong).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        ws = await RawClient.open_socket(sock)
    assert (await ws.handshake()).status == 101
    if welcome:
        assert json.loads((await ws.recv_frame()).payload)[0] == "$welcome"
    return ws


async def frames_until_close(ws: RawClient, timeout: float = 5.0) -> tuple[list[Frame], Frame]:
    """Every frame up to the close frame, and the close frame."""
    frames = []
    while True:
        frame = await ws.recv_frame(timeout)
        if frame.opcode == OP_CLOSE:
            return frames, frame
        frames.append(frame)


def echo_server(**options: Any) -> SmartSocket:
    server = SmartSocket(**{**QUIET, **options})
    server.on("echo", lambda socket, data: data)
    return server


# 1. PING flood ----------------------------------------------------------------------------------


@pytest.mark.parametrize("authenticated", [True, False])
async def test_ping_flood_from_a_peer_that_does_not_read_is_dropped(authenticated: bool) -> None:
    """Pongs go through the same write path as every frame: a peer that sends PINGs and never
    reads is dropped as a slow consumer (4009) once max_write_buffer is queued, before it has
    authenticated too. (picows' send_pong bypassed the check: 2 GB in 9 s.)"""
    options: dict[str, Any] = {
        "max_write_buffer": 4096, "write_buffer_high": 1024,
        "rate_limit_frames": 0,  # not throttled: each ping is read and answered at once
    }
    if not authenticated:
        options["api_keys"] = KEY
    async with running(echo_server(**options)) as server:
        assert server._stats is not None
        ws = await open_ws(server.port, rcvbuf=4096, welcome=authenticated)
        ws.pause_reading()
        # The kernel must not absorb the flood first: Linux grows a socket's send buffer up to
        # tcp_wmem's maximum (~4 MB, ~30,000 pongs) before our own buffer grows at all, and how
        # many pings a pong answers depends on how the loop's reads batch them; a loaded run
        # sent 100,000 pings without a drop. A fixed SO_SNDBUF on the server's side leaves the
        # drop to what the server queues.
        await wait_for(lambda: server._connections.open)
        (peer,) = server._connections.open
        assert peer._conn is not None and peer._conn._raw is not None
        kernel = peer._conn._raw.get_extra_info("socket")
        kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        payload = b"p" * 125  # the largest control frame: the largest pong
        sent = 0
        while not server._stats.dropped_slow and sent < 20_000:
            ws.send_frame(OP_PING, payload)
            sent += 1
            await asyncio.sleep(0)  # one ping per read: one pong per loop iteration
        assert server._stats.dropped_slow == 1, f"not dropped after {sent} pings"
        assert not server._connections.open  # gone, admitted or not
        ws.close()


async def test_pings_sent_together_get_one_pong_for_the_latest() -> None:
    """RFC 6455 5.5.3: with pongs still unsent, answering the latest ping is enough; a burst
    of pings read at once costs one pong, not one each."""
    async with running(echo_server()) as server:
        ws = await open_ws(server.port)
        burst = b"".join(
            encode_frame(OP_PING, b"%d" % i) for i in range(1000)
        )
        ws.send_raw(burst)
        pongs = []
        while not pongs or pongs[-1] != b"999":
            frame = await ws.recv_frame()
            assert frame.opcode == OP_PONG
            pongs.append(frame.payload)
        assert len(pongs) < 100, f"{len(pongs)} pongs for one burst of 1000 pings"
        ws.send_text(json.dumps(["echo", "after", 1]))  # the connection still works
        assert json.loads((await ws.recv_frame()).payload) == [1, "after"]
        ws.close()


async def test_frame_flood_is_not_read_past_the_frame_budget() -> None:
    """Every inbound frame costs a Python call: past rate_limit_frames per second the server
    stops reading the connection (TCP backpressure) until its budget refills; nothing is
    dropped, the frames are read later, and a neighbour is served meanwhile."""
    async with running(echo_server(rate_limit_frames=1000)) as server:
        ws = await open_ws(server.port)
        neighbour = await open_ws(server.port)
        conn = next(s for s in server._sockets.values())._conn
        ws.send_raw(b"".join(encode_frame(OP_PING, b"%d" % i) for i in range(1500)))
        await wait_for(lambda: conn.throttled, 5)  # type: ignore[union-attr]
        neighbour.send_text(json.dumps(["echo", "meanwhile", 1]))
        assert json.loads((await neighbour.recv_frame()).payload) == [1, "meanwhile"]
        while (await ws.recv_frame(5)).payload != b"1499":  # every ping read in the end
            pass
        await wait_for(lambda: not conn.throttled, 5)  # type: ignore[union-attr]  # refilled
        ws.close()
        neighbour.close()


# 2. Fragment flood ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x"], ids=["empty", "1-byte"])
async def test_fragment_flood_is_closed_with_1009(payload: bytes) -> None:
    """A message may come in at most max_fragments frames; empty continuations count too
    (before, an endless run of them was never refused)."""
    async with running(echo_server(max_fragments=64)) as server:
        ws = await open_ws(server.port)
        ws.send_frame(OP_TEXT, b'["echo", "', fin=False)
        for _ in range(200):
            ws.send_frame(0, payload, fin=False)
        frames, close = await frames_until_close(ws)
        assert close.close_code == 1009 and frames == []
        ws.close()


async def test_fragment_limit_default_and_messages_under_it() -> None:
    async with running(echo_server()) as server:
        assert server.config.max_fragments == 1024
        ws = await open_ws(server.port)
        text = b'["echo", "' + b"y" * 1000 + b'", 7]'
        ws.send_frame(OP_TEXT, text[:1], fin=False)  # 1024 frames exactly: fine
        for i in range(1, 1023):
            ws.send_frame(0, text[i : i + 1], fin=False)
        ws.send_frame(0, text[1023:], fin=True)
        assert json.loads((await ws.recv_frame()).payload) == [7, "y" * 1000]
        ws.send_frame(OP_TEXT, b"[", fin=False)  # 1025 frames: refused
        for _ in range(1024):
            ws.send_frame(0, b"", fin=False)
        _, close = await frames_until_close(ws)
        assert close.close_code == 1009
        ws.close()


def test_a_fragmented_message_holds_its_bytes_only() -> None:
    """Counted, not guessed: 20,000 1-byte fragments hold 20,000 bytes in one buffer. (One
    bytes object per fragment plus a list slot cost ~40 bytes per payload byte.)"""
    assembler = MessageAssembler(max_size=1 << 20, max_fragments=None)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assembler.feed(2, False, False, False, False, b"x")
        for _ in range(19_999):
            assembler.feed(0, False, False, False, False, b"x")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert assembler.buffered == 20_000 and assembler.fragments == 20_000
    assert held < 2 * 20_000 + 4096, f"{held} bytes held for 20,000 payload bytes"


# 3. Error floods --------------------------------------------------------------------------------

GARBAGE = {
    "malformed": b"not json at all",
    "unknown ack id": b'[123456, "answer"]',
    "reserved name": b'["$nope", 1]',
    "invalid name": b'["a\\u202eb", 1]',
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_error_flood_is_closed_by_the_error_rate_rule(kind: str) -> None:
    """The error-rate rule: more than error_limit invalid messages within 10 s: close 1008,
    having answered at most error_limit + 1 of them (rate limits off here, so the rule alone
    stops it)."""
    async with running(echo_server(error_limit=20, rate_limit_messages=0,
                                   rate_limit_bytes=0)) as server:
        server._clock = lambda: 0  # frozen: no refill, a deterministic count
        ws = await open_ws(server.port)
        ws.send_raw(b"".join(
            encode_frame(OP_TEXT, GARBAGE[kind]) for _ in range(1000)
        ))
        frames, close = await frames_until_close(ws)
        assert close.close_code == 1008
        assert len(frames) == 21  # the 21st error closes
        assert server._stats is not None and server._stats.error_closes == 1
        ws.close()


async def test_error_flood_before_authentication_is_closed_too() -> None:
    async with running(echo_server(api_keys=KEY, error_limit=10)) as server:
        server._clock = lambda: 0
        ws = await open_ws(server.port, welcome=False)
        for i in range(100):
            ws.send_text(json.dumps(["echo", i, i + 1]))
        frames, close = await frames_until_close(ws)
        # $auth_required first (sent at once to a socket without credentials), then one
        # `unauthorized` per message up to the limit and the one that crosses it.
        assert json.loads(frames[0].payload)[0] == "$auth_required"
        assert close.close_code == 1008 and len(frames) == 12
        assert all(json.loads(f.payload)[2]["code"] == "unauthorized" for f in frames[1:])
        ws.close()


@pytest.mark.parametrize("kind", ["malformed", "unknown ack id"])
async def test_every_inbound_message_counts_against_the_rate_limit(kind: str) -> None:
    """Garbage and ack replies are charged like events: past the burst they get rate_limited,
    and rate_limit_strikes refusals close with 4008 (error-rate rule off here)."""
    async with running(echo_server(error_limit=0, rate_limit_messages=10, rate_limit_burst=10,
                                   rate_limit_strikes=30)) as server:
        server._clock = lambda: 0  # frozen: exactly the burst passes
        ws = await open_ws(server.port)
        ws.send_raw(b"".join(
            encode_frame(OP_TEXT, GARBAGE[kind]) for _ in range(500)
        ))
        frames, close = await frames_until_close(ws)
        assert close.close_code == 4008
        codes = [json.loads(f.payload)[1]["code"] for f in frames]
        assert codes.count("rate_limited") == 31  # the 31st strike closes
        assert len(codes) == 41  # 10 answered, then only refusals
        ws.close()


# 4. Accept backlog ------------------------------------------------------------------------------


def listen_queue(port: int) -> int:
    """The backlog of the socket listening on ``port``: ``ss`` shows it as Send-Q."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
@pytest.mark.parametrize("backlog", [None, 1500])
async def test_listen_backlog_is_what_was_asked(backlog: int | None) -> None:
    options = {} if backlog is None else {"backlog": backlog}
    async with running(echo_server(**options)) as server:
        from smartsocket.transport import effective_backlog

        wanted = server.config.backlog
        assert wanted == (4096 if backlog is None else backlog)
        assert listen_queue(server.port) == effective_backlog(wanted) > 100


async def test_a_storm_of_simultaneous_connects_is_served_whole() -> None:
    """Heads are served a few per loop iteration (and accepts bounded per iteration): every
    one of a burst still gets its 101 and $welcome, in a bounded time, nothing is lost."""
    async with running(echo_server(max_connections_per_ip=0)) as server:
        clients = await asyncio.gather(*(RawClient.open(server.port) for _ in range(300)))
        responses = await asyncio.gather(*(ws.handshake(timeout=20) for ws in clients))
        assert all(r.status == 101 for r in responses)
        welcomes = await asyncio.gather(*(ws.recv_frame(20) for ws in clients))
        assert all(json.loads(f.payload)[0] == "$welcome" for f in welcomes)
        assert len(server._sockets) == 300
        for ws in clients:
            ws.close()


async def test_closed_connections_leave_no_reference_cycles() -> None:
    """A closed connection is freed by reference counting: no Socket or ServerConnection left
    for the cyclic collector (whose full passes over thousands of them stalled the loop)."""
    import gc

    from smartsocket.transport import ServerConnection

    async with running(echo_server()) as server:
        for _ in range(3):  # warm-up: one-time caches
            ws = await open_ws(server.port)
            ws.close()
        await wait_for(lambda: not server._connections.open)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                ws = await open_ws(server.port)
                ws.send_text(json.dumps(["echo", 1, 1]))
                await ws.recv_frame()
                ws.close()
            await wait_for(lambda: not server._connections.open)
            await asyncio.sleep(0)
            gc.collect()
            leaked = [o for o in gc.garbage if isinstance(o, Socket | ServerConnection)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert leaked == []


def test_backlog_is_capped_by_somaxconn(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from smartsocket.transport import effective_backlog, listener

    limit = tmp_path / "somaxconn"
    limit.write_text("512\n")
    monkeypatch.setattr(listener, "SOMAXCONN", str(limit))
    assert effective_backlog(4096) == 512 and effective_backlog(100) == 100
    monkeypatch.setattr(listener, "SOMAXCONN", str(tmp_path / "missing"))
    assert effective_backlog(4096) == 4096


# 9-12. HTTP edges -------------------------------------------------------------------------------


def upgrade_lines(connection: str = "Upgrade", *extra: str) -> list[str]:
    return [
        "GET / HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", f"Connection: {connection}",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", *extra,
    ]


@pytest.mark.parametrize("connection", ["keep-alive, Upgrade", "upgrade,keep-alive", "UPGRADE"])
async def test_connection_header_needs_only_the_upgrade_token(connection: str) -> None:
    async with running(echo_server()) as server:
        ws = await RawClient.open(server.port)
        response = await ws.request_lines(upgrade_lines(connection))
        assert response.status == 101
        assert json.loads((await ws.recv_frame()).payload)[0] == "$welcome"
        ws.close()
        ws = await RawClient.open(server.port)
        response = await ws.request_lines(upgrade_lines("keep-alive"))  # no token: refused
        assert response.status == 400
        ws.close()


async def test_subprotocol_offer_on_two_header_lines() -> None:
    async with running(echo_server()) as server:
        ws = await RawClient.open(server.port)
        response = await ws.request_lines(upgrade_lines(
            "Upgrade", "Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: smartsocket.v1",
        ))
        assert response.status == 101
        assert response.headers["sec-websocket-protocol"] == "smartsocket.v1"
        ws.close()


async def test_health_answers_http_1_0_and_head() -> None:
    async with running(echo_server()) as server:
        ws = await RawClient.open(server.port)
        get = await ws.request_lines(["GET /smartsocket/health HTTP/1.0"])
        assert get.status == 200 and json.loads(get.body)["status"] == "ok"
        ws.close()
        ws = await RawClient.open(server.port)
        head = await ws.request_lines(
            ["HEAD /smartsocket/health HTTP/1.1", "Host: x"], head_only=True
        )
        assert head.status == 200 and head.headers["content-type"] == "application/json"
        assert int(head.headers["content-length"]) == len(get.body)
        assert await ws.read_until_eof() == b""  # no body
        ws.close()
        ws = await RawClient.open(server.port)  # an upgrade must still be GET HTTP/1.1
        lines = upgrade_lines()
        lines[0] = "GET / HTTP/1.0"
        assert (await ws.request_lines(lines)).status == 400
        ws.close()


async def test_request_headers_over_16k_get_431() -> None:
    async with running(echo_server()) as server:
        ws = await RawClient.open(server.port)
        response = await ws.request_lines(upgrade_lines("Upgrade", "Cookie: " + "c" * 20_000))
        assert response.status == 431 and b"16 KiB" in response.body
        ws.close()
        ws = await RawClient.open(server.port)  # just under the limit: still served
        response = await ws.request_lines(upgrade_lines("Upgrade", "Cookie: " + "c" * 15_000))
        assert response.status == 101
        ws.close()


# 13. Names --------------------------------------------------------------------------------------

NOT_PRINTABLE = ["\u0085", "\u202e", "\u200b", "\u2028", "\x00", "\u00a0", "\ue000"]


def test_naming_rule() -> None:
    from smartsocket.protocol.names import name_problem

    for good in ("chat", "room 1", "café", "日本語", "عربي", "game:42/x", "🎉"):
        assert name_problem("room", good, 128) is None, good
    for bad in ("", "a\ud800", "x\u2029", "\ufeffbom", "\u200ex", "a\tb", "\x7f"):
        assert name_problem("room", bad, 128) is not None, repr(bad)
    assert name_problem("room", "x" * 129, 128) is not None
    assert name_problem("room", 5, 128) is not None


@pytest.mark.parametrize("char", NOT_PRINTABLE, ids=[f"U+{ord(c):04X}" for c in NOT_PRINTABLE])
async def test_one_naming_rule_for_rooms_and_events(char: str) -> None:
    server = echo_server()

    @server.on("join")
    def join(socket: Socket, room: str) -> list[str]:
        socket.join(room)
        return sorted(socket.rooms)

    async with running(server):
        client = Client(server.url, reconnect=False)
        await client.connect()
        assert await client.call("join", "lobby ok") == ["lobby ok"]
        with pytest.raises(Exception) as refused:
            await client.call("join", f"a{char}b")
        assert getattr(refused.value, "code", None) == "invalid_name"
        with pytest.raises(ValueError):  # the Python client applies the same rule
            await client.call(f"ev{char}")
        with pytest.raises(ValueError):  # and the server when it sends
            server.broadcast(f"ev{char}", 1)
        await client.close()


# 14. Deterministic rate limits ------------------------------------------------------------------


async def test_rate_limit_reads_the_injected_clock() -> None:
    """The server's limits read ``server._clock`` (integer ns): the same answers whatever the
    clock's origin (tests/test_security.py::test_token_bucket covers the bucket itself)."""
    for origin in (0, 400 * 86_400 * 10**9):
        now = [origin]
        async with running(echo_server(rate_limit_messages=10, rate_limit_burst=2)) as server:
            server._clock = lambda clock=now: clock[0]  # type: ignore[misc]
            ws = await open_ws(server.port)
            for i in range(3):
                ws.send_text(json.dumps(["echo", i, i + 1]))
            replies = [json.loads((await ws.recv_frame()).payload) for _ in range(3)]
            assert replies[:2] == [[1, 0], [2, 1]]
            assert replies[2][2]["code"] == "rate_limited" and replies[2][2]["retryAfter"] == 0.1
            now[0] += 100_000_000  # 0.1 s: exactly one token
            ws.send_text(json.dumps(["echo", 3, 4]))
            assert json.loads((await ws.recv_frame()).payload) == [4, 3]
            ws.close()
