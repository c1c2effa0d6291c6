"""The server API over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import msgspec
import pytest
import websockets

from smartsocket import AckError, AckTimeout, ConnectionClosed, SmartSocket, Socket
from smartsocket.testing import Recorder, connected, running, wait_for


class Move(msgspec.Struct):
    x: int
    y: int


async def test_sync_and_async_handlers_ack() -> None:
    server = SmartSocket()

    @server.on("add")
    def add(socket: Socket, data: list[int]) -> int:
        return sum(data)

    @server.on("slow")
    async def slow(socket: Socket, data: Any) -> Any:
        await asyncio.sleep(0.01)
        return {"slow": data}

    async with running(server), connected(server) as client:
        assert await client.call("add", [1, 2, 3]) == 6
        assert await client.call("slow", 5) == {"slow": 5}


async def test_handler_exception_becomes_ack_error_and_connection_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = SmartSocket()
    errors: list[BaseException] = []

    @server.on("boom")
    def boom(socket: Socket, data: Any) -> None:
        raise RuntimeError("kaboom")

    @server.on("aboom")
    async def aboom(socket: Socket, data: Any) -> None:
        raise RuntimeError("async kaboom")

    @server.on("refuse")
    def refuse(socket: Socket, data: Any) -> None:
        raise AckError("nope", "not allowed")

    @server.on("echo")
    def echo(socket: Socket, data: Any) -> Any:
        return data

    @server.on("error")
    def on_error(socket: Socket, exc: BaseException) -> None:
        errors.append(exc)

    caplog.set_level(logging.ERROR, "smartsocket")
    async with running(server), connected(server) as client:
        for event in ("boom", "aboom"):
            with pytest.raises(AckError) as info:
                await client.call(event)
            assert info.value.code == "internal_error"
            assert "kaboom" not in info.value.message  # internals are not leaked
        with pytest.raises(AckError) as info:
            await client.call("refuse")
        assert (info.value.code, info.value.message) == ("nope", "not allowed")
        assert await client.call("echo", "still here") == "still here"
    assert "kaboom" in caplog.text
    assert [str(e) for e in errors] == ["kaboom", "async kaboom"]


async def test_typed_payload_validation() -> None:
    server = SmartSocket()

    @server.on("move")
    def move(socket: Socket, data: Move) -> int:
        return data.x * data.y

    async with running(server), connected(server) as client:
        errors = Recorder(client, "error")
        assert await client.call("move", {"x": 3, "y": 4}) == 12
        with pytest.raises(AckError) as info:
            await client.call("move", {"x": 3, "y": "four"})
        assert info.value.code == "invalid_payload"
        assert "$.y" in info.value.message
        client.send("move", {"x": 1})  # no ack wanted: the error arrives as $error
        err = await errors.next("error")
        assert err["code"] == "invalid_payload" and err["event"] == "move"
        assert "y" in err["message"]


async def test_socket_level_handlers_and_on_connection() -> None:
    server = SmartSocket()
    seen: list[str] = []

    @server.on_connection
    def on_connection(socket: Socket) -> None:
        socket.data["user"] = "ann"
        socket.on("whoami", lambda data: socket.data["user"])
        socket.on("disconnect", lambda reason: seen.append(f"gone {socket.id}"))

    @server.on("whoami")
    def server_level(socket: Socket, data: Any) -> str:
        return "server-level"  # shadowed by the socket-level handler

    async with running(server):
        async with connected(server) as client:
            assert await client.call("whoami") == "ann"
            sid = client.sid
        await wait_for(lambda: seen)
        assert seen == [f"gone {sid}"]
        assert server.sockets == {}


async def test_async_on_connection_holds_events_until_done() -> None:
    server = SmartSocket()

    @server.on_connection
    async def on_connection(socket: Socket) -> None:
        await asyncio.sleep(0.05)  # e.g. loading the user from a database
        socket.on("ready", lambda data: "registered late")

    async with running(server), connected(server) as client:
        assert await client.call("ready") == "registered late"


async def test_server_to_client_call_and_timeout() -> None:
    server = SmartSocket(message_timeout=0.2)
    sockets: list[Socket] = []
    server.on_connection(sockets.append)
    async with running(server), connected(server) as client:
        client.on("question", lambda data: data * 2)

        @client.on("async_question")
        async def answer(data: int) -> int:
            await asyncio.sleep(0.01)
            return data + 1

        client.on("client_refuses", lambda data: (_ for _ in ()).throw(AckError("no", "x")))
        sock = sockets[0]
        # Answered calls get a generous timeout of their own: message_timeout (0.2 s) is
        # crossed only by the call that is never answered (a loaded machine can stall 0.2 s).
        assert await sock.call("question", 21, timeout=30) == 42
        assert await sock.call("async_question", 1, timeout=30) == 2
        with pytest.raises(AckError) as info:
            await sock.call("client_refuses", timeout=30)
        assert info.value.code == "no"
        with pytest.raises(AckError) as info:
            await sock.call("unhandled", timeout=30)
        assert info.value.code == "unknown_event"

        async def hang(data: Any) -> None:
            await asyncio.sleep(10)

        client.on("hang", hang)
        with pytest.raises(AckTimeout):
            await sock.call("hang")  # message_timeout is the default
        with pytest.raises(AckTimeout):
            await sock.call("hang", timeout=0.1)


async def test_call_fails_when_connection_closes() -> None:
    server = SmartSocket()
    sockets: list[Socket] = []
    server.on_connection(sockets.append)
    async with running(server):
        client = await _connect(server)

        async def hang(data: Any) -> None:
            await asyncio.sleep(10)

        client.on("hang", hang)
        pending = asyncio.ensure_future(sockets[0].call("hang", timeout=5))
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(ConnectionClosed):
            await pending
        with pytest.raises(ConnectionClosed):
            await sockets[0].call("anything")


async def _connect(server: SmartSocket) -> Any:
    from smartsocket import connect

    return await connect(server.url, reconnect=False)


async def test_rooms_broadcast_exclude_and_membership() -> None:
    server = SmartSocket()
    sockets: dict[str, Socket] = {}

    @server.on("join")
    def join(socket: Socket, room: str) -> list[str]:
        socket.join(room)
        sockets[socket.id] = socket
        return sorted(socket.rooms)

    async with running(server):
        async with connected(server) as a, connected(server) as b, connected(server) as c:
            recs = {x.sid: Recorder(x, "news") for x in (a, b, c)}
            for client in (a, b, c):
                assert await client.call("join", "r1") == ["r1"]
            assert await c.call("join", "r2") == ["r1", "r2"]
            room = server.room("r1")
            assert room.socket_count() == len(room) == 3
            assert {s.id for s in room.sockets} == {a.sid, b.sid, c.sid}
            assert set(server.rooms) == {"r1", "r2"}

            assert room.broadcast("news", {"n": 1}, exclude=sockets[a.sid]) == 2
            assert server.room("r2").broadcast("news", {"n": 2}) == 1
            assert room.broadcast("news", {"n": 3}, exclude=[a.sid, b.sid]) == 1
            assert await recs[b.sid].next("news") == {"n": 1}
            assert await recs[c.sid].next("news") == {"n": 1}
            assert await recs[c.sid].next("news") == {"n": 2}
            assert await recs[c.sid].next("news") == {"n": 3}
            assert server.broadcast("news", "all") == 3
            for rec in recs.values():
                assert await rec.next("news") == "all"
            await asyncio.sleep(0.05)
            assert recs[a.sid].pending("news") == 0 and recs[b.sid].pending("news") == 0

            sockets[c.sid].leave("r2")
            assert "r2" not in server.rooms  # empty rooms are dropped
            server.remove_room("r1")
            assert server.room("r1").socket_count() == 0
            assert sockets[a.sid].rooms == frozenset()
        await wait_for(lambda: not server.sockets)
        assert len(server.rooms) == 0


async def test_send_to_one_socket_binary_and_disconnect() -> None:
    server = SmartSocket()
    sockets: list[Socket] = []
    server.on_connection(sockets.append)
    async with running(server), connected(server, reconnect=False) as client:
        rec = Recorder(client, "blob", "text", "disconnect")
        sockets[0].send("blob", {"raw": b"\x00\xff"})
        sockets[0].send("text", "hello")
        assert await rec.next("blob") == {"raw": b"\x00\xff"}
        assert await rec.next("text") == "hello"
        sockets[0].disconnect(4000, "bye")
        closed = await rec.next("disconnect")
        assert isinstance(closed, ConnectionClosed)
        assert (closed.code, closed.reason) == (4000, "bye")


async def test_on_message_hook_sees_every_event() -> None:
    server = SmartSocket()
    seen: list[tuple[str, Any]] = []
    server.on_message(lambda socket, event, data: seen.append((event, data)))
    server.on("echo", lambda socket, data: data)
    async with running(server), connected(server) as client:
        await client.call("echo", 1)
        client.send("unhandled", 2)
        await wait_for(lambda: len(seen) == 2)
    assert seen == [("echo", 1), ("unhandled", 2)]


async def test_invalid_names_are_refused_locally() -> None:
    server = SmartSocket()
    sockets: list[Socket] = []
    server.on_connection(sockets.append)
    async with running(server), connected(server):
        with pytest.raises(ValueError):
            sockets[0].send("$welcome", 1)
        with pytest.raises(ValueError):
            server.room("r").broadcast("", 1)
        with pytest.raises(AckError) as info:  # LimitExceeded: an ack error inside handlers
            sockets[0].join("")
        assert info.value.code == "invalid_name"


async def test_independent_websockets_client_speaks_v1(demo: SmartSocket) -> None:
    async with websockets.connect(demo.url, subprotocols=["smartsocket.v1"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "smartsocket.v1"
        name, welcome = json.loads(await ws.recv())
        assert name == "$welcome" and welcome["protocol"] == 1 and welcome["sid"]
        await ws.send(json.dumps(["join", {"room": "x"}, 1]))
        assert json.loads(await ws.recv()) == [1, {"room": "x", "members": 1}]
        await ws.send(json.dumps(["echo", [1, "two"], 2]))
        assert json.loads(await ws.recv()) == [2, [1, "two"]]
        await ws.send(msgspec.msgpack.encode(["echo", b"\x01\x02", 3]))
        assert msgspec.msgpack.decode(await ws.recv()) == [3, b"\x01\x02"]


async def test_heartbeat_measures_latency_and_drops_silent_clients() -> None:
    server = SmartSocket(ping_interval=0.05, ping_timeout=0.1)
    async with running(server):
        async with connected(server) as client:
            await wait_for(lambda: server.stats()["raw"]["latencySamples"] > 0)
            assert client.connected
        # A peer that never answers $ping is closed with 4002.
        async with websockets.connect(server.url) as ws:
            await ws.recv()  # $welcome
            with pytest.raises(websockets.ConnectionClosed) as info:
                for _ in range(50):
                    await asyncio.wait_for(ws.recv(), 1)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4002


async def test_closed_sockets_leave_no_heartbeat_or_abuse_state() -> None:
    """The $ping in flight (Liveness) and the abuse buckets (AbuseRules) of a socket live
    outside it: both forget a socket once it is gone."""
    server = SmartSocket(
        ping_interval=0.05, ping_timeout=0.1, rate_limit_messages=1, rate_limit_burst=1,
    )
    server._clock = lambda: 0  # frozen: the one token is spent for good
    abuse = server._socket_context.abuse
    async with running(server):
        async with websockets.connect(server.url) as ws:
            await ws.recv()  # $welcome
            await ws.send("not an envelope")  # refused: the error-rate rule counts it
            assert (await _not_ping(ws))[0] == "$error"
            await ws.send(json.dumps(["chat", 1]))  # over the rate: a strike
            assert (await _not_ping(ws))[1]["code"] == "rate_limited"
            assert list(abuse.errors) == list(abuse.strikes) == list(server.sockets.values())
            await wait_for(lambda: server._liveness.pending)  # pinged, never answers
        await wait_for(lambda: not server.sockets)
        assert not abuse.errors and not abuse.strikes
        await wait_for(lambda: not server._liveness.pending)  # its ping's check forgets it


async def _not_ping(ws: Any) -> Any:
    """The next message that is not a $ping (the heartbeat runs fast in these tests)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message[0] != "$ping":
            return message


async def test_graceful_close_finishes_handlers_then_sends_1001() -> None:
    server = SmartSocket()
    finished: list[str] = []
    started = asyncio.Event()

    @server.on("work")
    async def work(socket: Socket, data: Any) -> str:
        started.set()
        await asyncio.sleep(0.2)
        finished.append("done")
        return "done"

    async with running(server):
        client = await _connect(server)
        rec = Recorder(client, "disconnect")
        pending = asyncio.ensure_future(client.call("work"))
        await started.wait()  # the handler runs: the close must wait for it (not a guess)
        await server.close(timeout=10)
        assert await pending == "done"  # the reply went out before the close
        closed = await rec.next("disconnect")
        assert closed.code == 1001
        assert finished == ["done"]
        await client.close()


async def test_max_connections_refuses_with_503() -> None:
    server = SmartSocket(max_connections=1)
    async with running(server), connected(server):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(server.url):
                pass
        assert info.value.response.status_code == 503


async def test_stats_count_traffic() -> None:
    server = SmartSocket()
    server.on("echo", lambda socket, data: data)
    async with running(server), connected(server) as client:
        for _ in range(10):
            await client.call("echo", "x" * 100)
        stats = server.stats()
        raw = stats["raw"]
        assert stats["connections"] == 1 and stats["totalConnections"] == 1
        assert raw["messagesIn"] == 10
        assert raw["messagesOut"] == 11  # 10 acks + $welcome
        assert raw["bytesIn"] == sum(
            len(json.dumps(["echo", "x" * 100, i], separators=(",", ":"))) for i in range(1, 11)
        )
        assert stats["transmission"]["bandwidthSaved"] == "0.0%"


async def test_metrics_disabled() -> None:
    server = SmartSocket(enable_metrics=False)
    server.on("echo", lambda socket, data: data)
    async with running(server), connected(server) as client:
        assert await client.call("echo", 1) == 1
        assert server.stats()["metrics"] == "disabled"


async def test_async_with_and_serve_until_close() -> None:
    server = SmartSocket(port=0, host="127.0.0.1")
    server.on("echo", lambda socket, data: data)
    async with server:
        assert server.port != 0 and server.url.endswith(f":{server.port}/")
        async with connected(server) as client:
            assert await client.call("echo", "in context") == "in context"
    assert server._life.server is None  # closed on exit

    runner = asyncio.ensure_future(server.serve())
    await wait_for(lambda: server._life.server is not None)
    async with connected(server) as client:
        assert await client.call("echo", "serving") == "serving"
    await server.close()
    await asyncio.wait_for(runner, 5)  # serve() returns once closed


async def test_on_message_hooks_may_take_fewer_arguments_and_be_async(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rule of every registration: fewer arguments than it is called with are fine."""
    server = SmartSocket()
    server.on("echo", lambda socket, data: data)
    seen: list[tuple[Any, ...]] = []
    server.on_message(lambda: seen.append(()))
    server.on_message(lambda socket, event: seen.append((event,)))

    @server.on_message
    async def audit(socket: Socket, event: str, data: Any) -> None:
        seen.append((event, data))

    async with running(server), connected(server) as client:
        with caplog.at_level(logging.ERROR, logger="smartsocket"):
            assert await client.call("echo", 1) == 1
            await wait_for(lambda: len(seen) == 3)
    assert sorted(seen, key=len) == [(), ("echo",), ("echo", 1)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _needs_four(a: Any, b: Any, c: Any, d: Any) -> None: ...


def _needs_keyword(socket: Any, *, flag: bool) -> None: ...


def test_every_registration_refuses_a_handler_it_cannot_call() -> None:
    """Refused when registered, saying what the handler will be called with; never a
    TypeError logged on every message later."""
    from smartsocket import Client

    server = SmartSocket()
    registrations: list[tuple[Any, str]] = [
        (lambda fn: server.on("chat", fn), "(socket, data)"),
        (lambda fn: server.on("disconnect", fn), "(socket, reason)"),
        (server.on_connection, "(socket)"),
        (server.on_message, "(socket, event, data)"),
        (server.authenticate, "(request: AuthRequest)"),
        (lambda fn: Client("ws://127.0.0.1:1/").on("news", fn), "(data)"),
    ]
    for register, called_with in registrations:
        for fn in (_needs_four, _needs_keyword):
            with pytest.raises(TypeError, match=re.escape(f"called with {called_with}")):
                register(fn)
    server.on("chat", lambda socket, data, extra=None: data)  # a default is fine
