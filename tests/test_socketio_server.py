"""Socket.IO clients against the server: python-socketio's AsyncClient (PyPI) over WebSocket,
a native v1 client beside it, and raw packets from the ``websockets`` library."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import socketio
import websockets

from smartsocket import AuthRequest, SmartSocket, Socket
from smartsocket.protocol import envelope
from smartsocket.testing import connected, running, wait_for


@asynccontextmanager
async def sio_client(
    server: SmartSocket, *, auth: Any = None, headers: dict[str, str] | None = None,
    namespaces: list[str] | None = None,
) -> AsyncIterator[socketio.AsyncClient]:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        f"http://127.0.0.1:{server.port}", transports=["websocket"], auth=auth,
        headers=headers or {}, namespaces=namespaces, wait_timeout=5,
    )
    try:
        yield client
    finally:
        await client.disconnect()


def ws_url(server: SmartSocket, query: str = "EIO=4&transport=websocket") -> str:
    return f"ws://127.0.0.1:{server.port}/socket.io/?{query}"


async def test_events_and_acks_reach_the_same_handlers_as_native_clients() -> None:
    server = SmartSocket()
    seen: list[Any] = []

    @server.on("add")
    def add(socket: Socket, data: list[int]) -> int:
        return sum(data)

    @server.on("note")
    def note(socket: Socket, data: Any) -> None:
        seen.append((type(socket).__name__, data))

    async with running(server), sio_client(server) as client:
        assert await client.call("add", [1, 2, 3], timeout=5) == 6
        await client.emit("note", {"a": 1})
        await wait_for(lambda: seen)
        assert seen == [("SocketIOSocket", {"a": 1})]
        async with connected(server) as native:
            assert await native.call("add", [4, 5]) == 9
        assert server.stats()["socketio"]["connections"] == 1


async def test_several_arguments_map_to_a_tuple_and_back() -> None:
    server = SmartSocket()

    @server.on("move")
    def move(socket: Socket, data: Any) -> Any:
        assert isinstance(data, tuple)
        x, y = data
        return (y, x)

    @server.on("none")
    def none(socket: Socket, data: Any) -> Any:
        return data

    async with running(server), sio_client(server) as client:
        assert await client.call("move", (1, 2), timeout=5) == (2, 1)
        assert await client.call("none", timeout=5) is None


async def test_server_calls_the_client_through_its_ack() -> None:
    server = SmartSocket()
    result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    tasks: set[asyncio.Task[None]] = set()

    async def ask(socket: Socket) -> None:
        result.set_result(await socket.call("ask", {"q": 1}, timeout=5))

    @server.on_connection
    def hello(socket: Socket) -> None:
        # Not awaited here: replies wait until on_connection handlers are done.
        tasks.add(asyncio.get_running_loop().create_task(ask(socket)))

    async with running(server):
        client = socketio.AsyncClient(reconnection=False)

        @client.on("ask")
        def answer(data: Any) -> Any:
            return "a", data["q"] + 1

        await client.connect(f"http://127.0.0.1:{server.port}", transports=["websocket"])
        try:
            assert await asyncio.wait_for(result, 5) == ("a", 2)
        finally:
            await client.disconnect()


async def test_binary_payloads_both_ways() -> None:
    server = SmartSocket()

    @server.on("echo")
    def echo(socket: Socket, data: Any) -> Any:
        return {"got": data, "extra": b"\x00\xff"}

    async with running(server), sio_client(server) as client:
        answer = await client.call("echo", b"\x01\x02\x03", timeout=5)
        assert answer == {"got": b"\x01\x02\x03", "extra": b"\x00\xff"}


async def test_rooms_are_shared_with_native_clients() -> None:
    server = SmartSocket()

    @server.on("join")
    def join(socket: Socket, room: str) -> bool:
        socket.join(room)
        return True

    @server.on("say")
    def say(socket: Socket, text: str) -> None:
        server.room("lobby").broadcast("said", {"text": text, "by": socket.id})

    async with running(server), sio_client(server) as sio, connected(server) as native:
        got: asyncio.Queue[Any] = asyncio.Queue()
        sio.on("said", got.put_nowait)
        native_got: asyncio.Queue[Any] = asyncio.Queue()
        native.on("said", native_got.put_nowait)
        assert await sio.call("join", "lobby", timeout=5) is True
        assert await native.call("join", "lobby") is True
        native.send("say", "hi")
        first = await asyncio.wait_for(got.get(), 5)
        assert first["text"] == "hi"
        assert (await asyncio.wait_for(native_got.get(), 5))["text"] == "hi"
        await sio.emit("say", "hello")
        assert (await asyncio.wait_for(got.get(), 5))["text"] == "hello"
        assert (await asyncio.wait_for(native_got.get(), 5))["text"] == "hello"
        everyone: asyncio.Queue[Any] = asyncio.Queue()
        sio.on("all", everyone.put_nowait)
        assert server.broadcast("all", [1, 2]) == 2
        assert await asyncio.wait_for(everyone.get(), 5) == [1, 2]


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth - 1):
        node.append([])
        node = node[0]
    return root


async def test_a_broadcast_nested_near_the_depth_limit_reaches_the_other_members() -> None:
    # Data the sender encodes just under msgspec's depth limit is decoded again a few frames
    # deeper to translate it for Socket.IO members: its RecursionError came out of the
    # broadcast, and the members after the Socket.IO one missed it.
    server = SmartSocket(rate_limit_messages=0, rate_limit_bytes=0)

    @server.on("join")
    def join(socket: Socket, room: str) -> bool:
        socket.join(room)
        return True

    async with running(server), sio_client(server) as sio:
        assert await sio.call("join", "deep", timeout=5) is True  # first in the fan-out
        async with websockets.connect(server.url) as native:  # raw: no decoding here
            assert str(await native.recv()).startswith('["$welcome"')
            await native.send('["join","deep",1]')
            assert await asyncio.wait_for(native.recv(), 5) == "[1,true]"
            delivered = 0
            for depth in range(1000, 900, -1):
                try:
                    server.room("deep").broadcast("m", nested(depth))
                except RecursionError as exc:  # the caller's own value: too deep to encode
                    assert "while serializing" in str(exc)
                    continue
                delivered += 1
            assert delivered >= 10
            for _ in range(delivered):
                assert str(await asyncio.wait_for(native.recv(), 5)).startswith('["m",[[')
        # The same, encoded elsewhere (a replay, a send from another node) for one socket.
        socket = server.sockets[sio.get_sid()]
        for depth in range(1000, 900, -1):
            try:
                payload = envelope.encode_event("m", nested(depth))
            except RecursionError:
                continue
            socket.send_encoded(payload, False)  # sent, or skipped: never raised
        assert await sio.call("join", "deep", timeout=5) is True  # the session carries on


async def test_server_send_reaches_a_socketio_client_by_id() -> None:
    server = SmartSocket()
    ids: list[str] = []
    server.on_connection(lambda socket: ids.append(socket.id))
    async with running(server), sio_client(server) as client:
        got: asyncio.Queue[Any] = asyncio.Queue()
        client.on("direct", got.put_nowait)
        await wait_for(lambda: ids)
        assert client.get_sid() == ids[0]
        assert server.send(ids[0], "direct", {"n": 1})
        assert await asyncio.wait_for(got.get(), 5) == {"n": 1}


async def test_auth_payload_goes_through_the_auth_hook() -> None:
    server = SmartSocket()
    seen: list[Any] = []

    @server.authenticate
    def check(request: AuthRequest) -> Any:
        seen.append(request.auth)
        return {"user": "ann"} if request.token == "good" else None

    identities: list[Any] = []
    server.on_connection(lambda socket: identities.append(socket.identity))
    async with running(server):
        async with sio_client(server, auth={"token": "good"}):
            await wait_for(lambda: identities)
        assert identities == [{"user": "ann"}]
        client = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []
        client.on("connect_error", errors.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(f"http://127.0.0.1:{server.port}", transports=["websocket"],
                                 auth={"token": "bad"}, wait_timeout=5)
        await client.disconnect()
        assert errors == [{"message": "unauthorized"}]
        # As for native clients: once at the upgrade (headers, query), then with the payload.
        assert [auth for auth in seen if auth is not None] == [{"token": "good"}, {"token": "bad"}]


async def test_api_keys_from_the_auth_payload_or_the_authorization_header() -> None:
    server = SmartSocket(api_keys="k1")
    async with running(server):
        async with sio_client(server, auth={"token": "k1"}) as client:
            assert client.connected
        async with sio_client(server, headers={"Authorization": "Bearer k1"}) as client:
            assert client.connected
        client = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(f"http://127.0.0.1:{server.port}", transports=["websocket"],
                                 auth={"token": "nope"}, wait_timeout=5)
        await client.disconnect()


async def test_disconnect_handlers_run_and_the_server_can_kick() -> None:
    server = SmartSocket()
    gone: list[str] = []
    sockets: list[Socket] = []
    server.on_connection(sockets.append)

    @server.on("disconnect")
    def bye(socket: Socket, reason: str) -> None:
        gone.append(reason)

    async with running(server):
        client = socketio.AsyncClient(reconnection=False)
        reasons: list[Any] = []
        client.on("disconnect", lambda *args: reasons.append(args))
        await client.connect(f"http://127.0.0.1:{server.port}", transports=["websocket"])
        await wait_for(lambda: sockets)
        sockets[0].disconnect()
        await wait_for(lambda: reasons and gone)
        assert server.stats()["connections"] == 0
        async with websockets.connect(ws_url(server)) as ws:  # a client's DISCONNECT
            await ws.recv()
            await ws.send("40")
            await ws.recv()
            await wait_for(lambda: len(sockets) == 2)
            await ws.send("41")
            await wait_for(lambda: len(gone) == 2)
        assert gone[1] == "client namespace disconnect"


async def test_unknown_namespace_is_refused_like_socketio() -> None:
    async with running(SmartSocket()) as server, websockets.connect(ws_url(server)) as ws:
        opened = json.loads(str(await ws.recv())[1:])
        assert opened["upgrades"] == [] and opened["maxPayload"] > 0
        assert opened["pingInterval"] == 25000 and opened["pingTimeout"] == 20000
        await ws.send("40/admin,")
        assert await ws.recv() == '44/admin,{"message":"Invalid namespace"}'
        await ws.send("40")
        answer = str(await ws.recv())
        assert answer.startswith('40{"sid":')


async def test_connect_timeout_closes_a_session_without_connect() -> None:
    server = SmartSocket(socketio_connect_timeout=0.05)
    async with running(server), websockets.connect(ws_url(server)) as ws:
        assert str(await ws.recv()).startswith("0{")
        await asyncio.wait_for(ws.wait_closed(), 5)
        await wait_for(lambda: server.stats()["socketio"]["sessions"] == 0)


async def test_heartbeat_pings_and_closes_a_silent_client() -> None:
    # Pings come fast; the timeout leaves a loaded machine time to answer the first one.
    server = SmartSocket(ping_interval=0.05, ping_timeout=1.0)
    async with running(server), websockets.connect(ws_url(server)) as ws:
        await ws.recv()
        await ws.send("40")
        await ws.recv()
        assert await ws.recv() == "2"
        await ws.send("3")
        assert await ws.recv() == "2"  # the next ping: answered, the session lives on
        await asyncio.wait_for(ws.wait_closed(), 5)  # this one is not answered


async def test_the_native_heartbeat_leaves_socketio_sockets_to_engineio() -> None:
    """``$ping``/``$pong`` is for native clients: a Socket.IO socket gets Engine.IO's pings
    only, and the server's liveness never waits for a ``$pong`` from it."""
    server = SmartSocket(ping_interval=0.05, ping_timeout=1.0)
    async with running(server), websockets.connect(ws_url(server)) as ws:
        await ws.recv()
        await ws.send("40")
        await ws.recv()
        for _ in range(3):  # nothing but Engine.IO pings, over several rounds of both
            assert await ws.recv() == "2"
            await ws.send("3")
        assert not server._liveness.pending


async def test_an_empty_event_name_is_refused_and_the_session_stays() -> None:
    # Socket.IO allows "" as an event name; SmartSocket's names are never empty (it used to
    # fail inside the server and drop the connection with 1011).
    server = SmartSocket()
    server.on("ping-me", lambda socket, data: "pong")
    async with running(server), websockets.connect(ws_url(server)) as ws:
        await ws.recv()
        await ws.send("40")
        await ws.recv()
        await ws.send('421[""]')
        answer = json.loads(str(await asyncio.wait_for(ws.recv(), 5))[3:])
        assert answer[0]["error"]["code"] == "invalid_name"
        await ws.send('422["ping-me"]')
        assert await asyncio.wait_for(ws.recv(), 5) == '432["pong"]'


@pytest.mark.parametrize(
    "packet",
    ["4x", "42{not json", "42[]", "43", "9", "451-[\"a\"]", '42["connect"]',
     '4212345678901234567890["a"]', '429007199254740992["a"]',  # ack ids: 20 digits, 2**53
     '42["a",' + "[" * 1200 + "]" * 1200 + "]"],  # nested past the decoder's depth
)
async def test_malformed_packets_close_only_their_session(packet: str) -> None:
    server = SmartSocket()
    server.on("ping-me", lambda socket, data: "pong")
    async with running(server), sio_client(server) as healthy:
        async with websockets.connect(ws_url(server)) as ws:
            await ws.recv()
            await ws.send("40")
            await ws.recv()
            await ws.send(packet)
            if packet == '451-["a"]':
                await ws.send("40")  # a text packet before the announced attachment
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert await healthy.call("ping-me", timeout=5) == "pong"


async def test_bad_queries_get_engineio_errors() -> None:
    async with running(SmartSocket()) as server:
        for query, code in (("EIO=5&transport=websocket", 5), ("EIO=4&transport=carrier", 0)):
            with pytest.raises(websockets.InvalidStatus) as raised:
                async with websockets.connect(ws_url(server, query)):
                    pass
            assert raised.value.response.status_code == 400
            assert json.loads(raised.value.response.body)["code"] == code


async def test_oversized_message_closes_the_session() -> None:
    server = SmartSocket(max_message_size=1024)
    async with running(server), websockets.connect(ws_url(server), max_size=None) as ws:
        assert json.loads(str(await ws.recv())[1:])["maxPayload"] == 1024
        await ws.send("40")
        await ws.recv()
        await ws.send('42["big","' + "x" * 2000 + '"]')
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009


async def test_the_endpoint_can_be_moved_or_turned_off() -> None:
    async with running(SmartSocket(socketio_path="/rt/")) as server:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(f"http://127.0.0.1:{server.port}", socketio_path="/rt/",
                             transports=["websocket"], wait_timeout=5)
        assert client.connected
        await client.disconnect()
    async with running(SmartSocket(socketio=False)) as server:
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url(server)):
                pass


async def test_engineio_v3_clients_are_admitted_at_the_handshake() -> None:
    server = SmartSocket(api_keys="k1")
    server.on("add", lambda socket, data: sum(data))
    async with running(server):
        async with websockets.connect(ws_url(server, "EIO=3&transport=websocket&token=k1")) as ws:
            opened = json.loads(str(await ws.recv())[1:])
            assert "maxPayload" not in opened
            assert await ws.recv() == "40"  # in "/" at once (Socket.IO v4)
            await ws.send('421["add",[1,2]]')
            assert await ws.recv() == "431[3]"
            await ws.send("2")  # v3: the client pings
            assert await ws.recv() == "3"
        async with websockets.connect(ws_url(server, "EIO=3&transport=websocket")) as ws:
            await ws.recv()
            assert await ws.recv() == '44"unauthorized"'


async def test_stats_and_metrics_count_both_protocols() -> None:
    server = SmartSocket()
    server.on("hi", lambda socket, data: data)
    async with running(server), sio_client(server) as client, connected(server):
        assert await client.call("hi", 1, timeout=5) == 1
        await wait_for(lambda: server.stats()["connections"] == 2)
        section = server.stats()["socketio"]
        assert section["connections"] == 1 and section["packetsIn"] >= 2
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        assert 'smartsocket_protocol_connections{protocol="socketio"} 1.0' in body
        assert 'smartsocket_protocol_connections{protocol="native"} 1.0' in body
        assert "smartsocket_socketio_packets_received_total" in body


async def test_origins_per_ip_and_rate_limits_guard_socketio_too() -> None:
    server = SmartSocket(allowed_origins="https://ok.example", max_connections_per_ip=1,
                         rate_limit_messages=1, rate_limit_burst=1, rate_limit_strikes=2)
    server.on("hi", lambda socket, data: data)
    async with running(server):
        bad = {"Origin": "https://evil.example"}
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(server), additional_headers=bad):
                pass
        assert refused.value.response.status_code == 403
        good = {"Origin": "https://ok.example"}
        async with sio_client(server, headers=good) as client:
            async with websockets.connect(ws_url(server), additional_headers=good) as ws:
                await asyncio.wait_for(ws.wait_closed(), 5)  # a second one from 127.0.0.1
                assert ws.close_code == 1013
            assert await client.call("hi", 1, timeout=5) == 1
            refused = await client.call("hi", 2, timeout=5)  # over 1 event/s
            assert refused["error"]["code"] == "rate_limited"


async def test_a_declared_namespace_has_its_own_handlers_and_hooks() -> None:
    server = SmartSocket()
    admin = server.namespace("/admin")
    assert server.namespace("/admin") is admin
    seen: list[tuple[str, str]] = []
    server.on_connection(lambda socket: seen.append(("app", socket.namespace)))
    admin.on_connection(lambda socket: seen.append(("admin", socket.namespace)))
    server.on("who", lambda socket, data: "app")
    admin.on("who", lambda socket, data: ("admin", data))
    gone: list[str] = []
    admin.on("disconnect", lambda socket, reason: gone.append(reason))

    @admin.on("greet")
    def greet(socket: Socket, data: Any) -> None:
        socket.send("greeted", (1, 2))

    async with running(server):
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[Any] = asyncio.Queue()
        client.on("greeted", lambda *args: got.put_nowait(args), namespace="/admin")
        await client.connect(f"http://127.0.0.1:{server.port}", namespaces=["/", "/admin"],
                             transports=["websocket"], wait_timeout=5)
        try:
            assert await client.call("who", 1, timeout=5) == "app"
            assert await client.call("who", 1, namespace="/admin", timeout=5) == ("admin", 1)
            await client.emit("greet", namespace="/admin")
            assert await asyncio.wait_for(got.get(), 5) == (1, 2)
            unknown = await client.call("nothing", namespace="/admin", timeout=5)
            assert unknown["error"]["code"] == "unknown_event"  # no fallback to the app's
            assert sorted(seen) == [("admin", "/admin"), ("app", "/")]
            assert server.stats()["socketio"]["connections"] == 2
            await client.disconnect()
            await wait_for(lambda: gone)
        finally:
            await client.disconnect()


def test_namespace_names_are_checked() -> None:
    server = SmartSocket()
    for bad in ("/", "admin", "/a,b"):
        with pytest.raises(ValueError, match="namespace"):
            server.namespace(bad)


async def test_sessions_without_a_socket_count_against_the_per_ip_limit() -> None:
    server = SmartSocket(max_connections_per_ip=2)
    async with running(server), websockets.connect(ws_url(server)) as first:
        await first.recv()
        async with websockets.connect(ws_url(server)) as second:
            await second.recv()
            async with websockets.connect(ws_url(server)) as third:
                await asyncio.wait_for(third.wait_closed(), 5)
                assert third.close_code == 1013
            async with aiohttp.ClientSession() as http:
                query = {"EIO": "4", "transport": "polling"}
                async with http.get(f"http://127.0.0.1:{server.port}/socket.io/",
                                    params=query) as resp:
                    assert resp.status == 429
        async with websockets.connect(ws_url(server)) as again:  # the second one left
            assert str(await again.recv()).startswith("0{")


async def test_engineio_v3_over_polling() -> None:
    server = SmartSocket()
    async with running(server), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{server.port}/socket.io/"
        async with http.get(url, params={"EIO": "3", "transport": "polling"}) as resp:
            body = await resp.text()
        length, _, rest = body.partition(":")
        opened = json.loads(rest[1 : int(length)])
        assert opened["upgrades"] == ["websocket"] and "maxPayload" not in opened
        assert rest[int(length):] == "2:40"  # in "/" at once (Socket.IO v4)


@pytest.mark.parametrize("offsets", [True, False])
async def test_recovery_on_offsets_on_room_events(offsets: bool) -> None:
    """With recovery on, room events carry their offset as a last argument (Socket.IO's
    connection-state recovery; python-socketio has no recovery and sees it as an extra
    argument, as with Socket.IO's own server); ``socketio_recovery=False`` leaves it out."""
    server = SmartSocket(recovery_window=30, socketio_recovery=offsets)

    @server.on("enter")
    def enter(socket: Socket, room: str) -> None:
        socket.join(room)
        server.room(room).broadcast("numbered", {"n": 1})
        socket.send("direct", "plain")

    async with running(server), sio_client(server) as client:
        got: asyncio.Queue[Any] = asyncio.Queue()
        client.on("numbered", lambda *args: got.put_nowait(args))
        client.on("direct", lambda *args: got.put_nowait(args))
        await client.call("enter", "r", timeout=5)
        numbered = await asyncio.wait_for(got.get(), 5)
        if offsets:
            assert numbered[0] == {"n": 1} and len(numbered) == 2
            assert isinstance(numbered[1], str)
        else:
            assert numbered == ({"n": 1},)
        assert await asyncio.wait_for(got.get(), 5) == ("plain",)  # sent to one: no offset


async def test_broadcasts_and_sends_from_another_node_reach_socketio_clients() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    fast = {"cluster_heartbeat": 0.05, "node_timeout": 1.0}
    a, b = SmartSocket(cluster_url=url, **fast), SmartSocket(cluster_url=url, **fast)

    @b.on("enter")
    async def enter(socket: Socket, room: str) -> bool:
        socket.join(room)
        return await b.room(room).subscribed()

    async with running(a), running(b), sio_client(b) as client:
        await wait_for(lambda: len(a.cluster_nodes()) == 2)
        got: asyncio.Queue[Any] = asyncio.Queue()
        client.on("news", lambda *args: got.put_nowait(args))
        assert await client.call("enter", "r", timeout=5) is True
        a.room("r").broadcast("news", {"from": "a"})
        assert await asyncio.wait_for(got.get(), 5) == ({"from": "a"},)
        assert a.send(client.get_sid(), "news", "direct") is not False
        assert await asyncio.wait_for(got.get(), 5) == ("direct",)
