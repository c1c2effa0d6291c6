"""Users across connections and nodes: ``socket.user``, ``server.to_user``,
``server.disconnect_user``, presence by user (issue 19).

One node with real clients (``smartsocket.Client``, and the ``websockets`` library for the
wire-level flows: ``$auth``, resuming, the take-over), then two nodes in one process on a
MemoryBroker and on the real brokers (Redis, NATS, Redis Cluster; each test cluster with its own
channel prefix).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import websockets

from clusters import BROKERS, require_broker
from smartsocket import AsyncEmitter, Client, SmartSocket, Socket
from smartsocket.cluster import messages
from smartsocket.cluster.brokers import create_adapter
from smartsocket.cluster.node import all_channel, inbox_channel, room_channel
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode
from smartsocket.security import AuthRequest
from smartsocket.server.users import check_user, user_of
from smartsocket.testing import Recorder, running, wait_for

FAST = {"cluster_heartbeat": 0.05, "node_timeout": 0.4}


@dataclass(frozen=True)
class Claims:
    user: str


def make_app(**options: Any) -> SmartSocket:
    """Authenticates ``?token=<user>`` (``{"user": <user>}``), ``?token=claims:<user>`` (an
    object with ``.user``) and ``?token=nobody`` (authenticated, no user)."""
    server = SmartSocket(**options)

    @server.authenticate
    def auth(request: AuthRequest) -> Any:
        token = request.token
        if not token:
            return None
        if token == "nobody":
            return {"name": "anonymous"}
        if token.startswith("claims:"):
            return Claims(token.split(":", 1)[1])
        return {"user": token}

    @server.on("join")
    def join(socket: Socket, room: str) -> None:
        socket.join(room)

    return server


def url(server: SmartSocket, token: str) -> str:
    return f"{server.url}?token={token}"


@asynccontextmanager
async def client(server: SmartSocket, token: str) -> AsyncIterator[Client]:
    c = Client(url(server, token), reconnect=False)
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


async def quiet(server: SmartSocket, c: Client, rec: Recorder, event: str) -> None:
    """``c`` got no ``event`` so far: a direct message sent after it arrives first."""
    marker = Recorder(c, "marker")
    assert c.sid is not None and server.send(c.sid, "marker")
    await marker.next("marker")
    assert rec.pending(event) == 0


async def until(read: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 5) -> None:
    """Poll the async ``read`` until it returns ``expected`` (a cluster view converges)."""
    deadline = time.monotonic() + timeout
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, f"{value!r} != {expected!r}"
        await asyncio.sleep(0.01)


async def members_by_node(server: SmartSocket, room: str) -> list[tuple[str, str]]:
    return sorted((m.node, m.user or "") for m in await server.presence(room))


# the rule: what an authentication result names as the user


def test_the_user_of_an_authentication_result(caplog: pytest.LogCaptureFixture) -> None:
    assert user_of({"user": "alice"}) == "alice"
    assert user_of({"user": 42}) == "42"  # database ids
    assert user_of(Claims("bob")) == "bob"  # auth.TokenClaims: the token's sub
    assert user_of(None) is None
    assert user_of("key:0123abcd") is None  # a bare str names credentials (API keys)
    assert user_of({"name": "x"}) is None and user_of(object()) is None
    caplog.set_level(logging.WARNING, "smartsocket.server")
    assert user_of({"user": ""}) is None and user_of({"user": True}) is None
    assert user_of({"user": 1.5}) is None
    assert "no usable user" in caplog.text
    assert check_user(7) == "7"
    with pytest.raises(ValueError):
        check_user("")
    with pytest.raises(TypeError):
        check_user(False)
    with pytest.raises(TypeError):
        check_user(b"alice")


# one node


async def test_to_user_reaches_every_connection_of_the_user_only() -> None:
    async with (
        running(make_app()) as server,
        client(server, "alice") as a1, client(server, "claims:alice") as a2,
        client(server, "bob") as b, client(server, "nobody") as n,
    ):
        assert a1.sid is not None and a2.sid is not None
        assert server.sockets[a1.sid].user == server.sockets[a2.sid].user == "alice"
        assert n.sid is not None and server.sockets[n.sid].user is None
        recs = {c: Recorder(c, "note") for c in (a1, a2, b, n)}
        assert server.to_user("alice", "note", {"n": 1}) == 2
        assert await recs[a1].next("note") == {"n": 1}
        assert await recs[a2].next("note") == {"n": 1}
        assert server.to_user("bob", "note", b"\x00bin") == 1  # bytes: a binary frame
        assert await recs[b].next("note") == b"\x00bin"
        assert server.to_user("carol", "note", 1) == 0  # nobody: nothing, no error
        for c in (a1, a2, b, n):
            await quiet(server, c, recs[c], "note")
        assert sorted(s.id for s in server.user_sockets("alice")) == sorted([a1.sid, a2.sid])
        with pytest.raises(ValueError):
            server.to_user("alice", "$reserved", 1)  # the event name rules of every send
        with pytest.raises(ValueError):
            server.to_user("", "note", 1)


async def test_disconnect_user_closes_all_of_its_connections_and_the_index_empties() -> None:
    async with (
        running(make_app()) as server,
        client(server, "alice") as a1, client(server, "alice") as a2, client(server, "bob") as b,
    ):
        gone = [Recorder(c, "disconnect") for c in (a1, a2)]
        assert await server.disconnect_user("alice", reason="banned") == 2
        for rec in gone:
            closed = await rec.next("disconnect")
            assert (closed.code, closed.reason) == (CloseCode.KICKED, "banned")
        await wait_for(lambda: not server.user_sockets("alice"))
        assert server._users.names() == ["bob"] and server._users.filed == 1
        assert await b.call("join", "still-here") is None  # bob is unaffected
        assert await server.disconnect_user("alice") == 0
        await b.close()
        await wait_for(lambda: server._users.filed == 0)
        assert len(server._users) == 0


async def test_the_user_from_an_async_hook_and_the_auth_message() -> None:
    async def hook(request: AuthRequest) -> Any:  # async: runs after the upgrade
        return Claims(request.token) if request.token else None

    server = SmartSocket()
    server.authenticate(hook)
    async with running(server):
        ws = await websockets.connect(server.url, subprotocols=["smartsocket.v1"])  # type: ignore[list-item]
        try:
            assert json.loads(await ws.recv())[0] == "$auth_required"
            await ws.send(json.dumps(["$auth", {"token": "dora"}]))
            welcome = json.loads(await ws.recv())
            assert welcome[0] == "$welcome"
            assert server.sockets[welcome[1]["sid"]].user == "dora"
            assert server.to_user("dora", "hi", 1) == 1
            assert json.loads(await ws.recv()) == ["hi", 1]
        finally:
            await ws.close()
        await wait_for(lambda: server._users.filed == 0)


async def test_set_user_files_the_socket_under_its_new_user() -> None:
    server = SmartSocket(api_keys="k1", presence_rooms="p-*")

    @server.on_connection
    def named(socket: Socket) -> None:
        assert socket.user is None  # an API key names no user
        server.set_user(socket, socket.request.query["u"][0])

    @server.on("join")
    def join(socket: Socket, room: str) -> None:
        socket.join(room)

    @server.on("rename")
    def rename(socket: Socket, user: Any) -> None:
        server.set_user(socket, user)

    async with running(server):
        c = Client(f"{server.url}?token=k1&u=7", reconnect=False)
        await c.connect()
        try:
            rec = Recorder(c, "note", "$presence")
            assert server.to_user(7, "note", "int ids are strs") == 1
            assert await rec.next("note") == "int ids are strs"
            await c.call("join", "p-room")
            assert (await rec.next("$presence"))["joined"]["user"] == "7"
            await c.call("rename", "eve")  # presence shows the change
            assert (await rec.next("$presence"))["updated"] == {
                "sid": c.sid, "info": {}, "user": "eve"}
            assert server.to_user("7", "note", 1) == 0 and server.to_user("eve", "note", 2) == 1
            assert await rec.next("note") == 2
            assert await server.room_users("p-room") == ["eve"]
            await c.call("rename", None)
            assert "user" not in (await rec.next("$presence"))["updated"]
            assert len(server._users) == 0 and await server.room_users("p-room") == []
        finally:
            await c.close()


class Peer:
    """A protocol peer over ``websockets`` (JSON), for the resume flows."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def open(cls, server: SmartSocket, query: str) -> Peer:
        ws = await websockets.connect(
            f"{server.url}?{query}", subprotocols=["smartsocket.v1"]  # type: ignore[list-item]
        )
        return cls(ws)

    async def recv(self, timeout: float = 5.0) -> list[Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if message[0] != "$ping":
                return message  # type: ignore[no-any-return]

    async def welcomed(self) -> dict[str, Any]:
        message = await self.recv()
        assert message[0] == "$welcome", message
        self.welcome = message[1]
        return self.welcome

    async def resume(self, old: Peer, seq: int = 0) -> None:
        await self.ws.send(json.dumps(["$resume", {
            "sid": old.welcome["sid"], "token": old.welcome["token"], "offsets": {}, "seq": seq,
        }]))
        assert (await self.welcomed())["recovered"] is True


async def test_a_resumed_session_keeps_its_user_and_nothing_leaks() -> None:
    async with running(make_app(recovery_window=5.0)) as server:
        first = await Peer.open(server, "token=alice")
        sid = (await first.welcomed())["sid"]
        first.ws.transport.abort()  # a lost network: the session is held
        await wait_for(lambda: sid not in server.sockets)
        assert server._users.filed == 0
        again = await Peer.open(server, "token=alice&resume=1")
        await again.resume(first)
        assert server.sockets[sid].user == "alice" and server._users.filed == 1
        assert server.to_user("alice", "note", 1) == 1
        note = await again.recv()
        assert note[:2] == ["note", 1]
        # The take-over: the client resumes while its old connection is still open here.
        third = await Peer.open(server, "token=alice&resume=1")
        await third.resume(again, seq=note[3])  # it had note 1
        assert server._users.filed == 1
        assert [s.id for s in server.user_sockets("alice")] == [sid]
        assert server.to_user("alice", "note", 2) == 1
        assert (await third.recv())[:2] == ["note", 2]
        assert await server.disconnect_user("alice") == 1
        await wait_for(lambda: server._users.filed == 0)
        assert not server.sockets
        for peer in (first, again, third):
            await peer.ws.close()


async def test_a_user_with_another_identity_cannot_resume_a_session() -> None:
    async with running(make_app(recovery_window=5.0)) as server:
        first = await Peer.open(server, "token=alice")
        await first.welcomed()
        first.ws.transport.abort()
        await wait_for(lambda: not server.sockets)
        mallory = await Peer.open(server, "token=mallory&resume=1")
        await mallory.ws.send(json.dumps(["$resume", {
            "sid": first.welcome["sid"], "token": first.welcome["token"]}]))
        welcome = await mallory.welcomed()
        assert welcome["recovered"] is False and welcome["sid"] != first.welcome["sid"]
        assert [s.user for s in server.sockets.values()] == ["mallory"]
        await mallory.ws.close()


async def test_presence_shows_users_on_one_node() -> None:
    async with (
        running(make_app(presence_rooms="p-*")) as server,
        client(server, "alice") as a1, client(server, "alice") as a2,
        client(server, "bob") as b, client(server, "nobody") as n,
    ):
        rec = Recorder(a1, "$presence")
        await a1.call("join", "p-lobby")
        assert (await rec.next("$presence"))["joined"] == {
            "sid": a1.sid, "info": {}, "user": "alice"}
        for c in (a2, b, n):
            await c.call("join", "p-lobby")
        assert (await rec.next("$presence"))["joined"]["user"] == "alice"
        assert (await rec.next("$presence"))["joined"]["user"] == "bob"
        assert "user" not in (await rec.next("$presence"))["joined"]  # no user: no key
        members = await server.presence("p-lobby")
        assert sorted((p.user or "") for p in members) == ["", "alice", "alice", "bob"]
        assert await server.room_users("p-lobby") == ["alice", "bob"]
        records = await server.fetch_sockets("p-lobby")
        assert sorted((r.user or "") for r in records) == ["", "alice", "alice", "bob"]
        await server.disconnect_user("alice")
        await wait_for(lambda: not server.user_sockets("alice"))
        assert await server.room_users("p-lobby") == ["bob"]


# two nodes in this process: on a MemoryBroker, the real Redis, NATS and a Redis Cluster


BROKER_URLS = {
    "memory": None, **BROKERS, "redis-cluster": "redis://127.0.0.1:7101?cluster=1",
}


@asynccontextmanager
async def two_nodes(broker: str, **extra: Any) -> AsyncIterator[list[SmartSocket]]:
    cluster_url = BROKER_URLS[broker] or f"memory://{uuid.uuid4().hex}"
    if broker != "memory":
        require_broker(cluster_url)
    options: dict[str, Any] = {
        "cluster_url": cluster_url, "presence_rooms": "p-*", **FAST, **extra,
    }
    if broker != "memory":
        options["cluster_prefix"] = "t" + uuid.uuid4().hex[:12]
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(running(make_app(**options))) for _ in range(2)
        ]
        await wait_for(lambda: all(len(s.cluster_nodes()) == 2 for s in servers), 10)
        yield servers


@pytest.fixture(params=sorted(BROKER_URLS))
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_user_on_two_nodes_gets_to_user_on_both_and_is_disconnected_on_both(
    broker: str,
) -> None:
    async with (
        two_nodes(broker) as (a, b),
        client(a, "alice") as on_a, client(b, "alice") as on_b, client(b, "bob") as bob,
    ):
        recs = {c: Recorder(c, "note", "disconnect") for c in (on_a, on_b, bob)}
        assert a.to_user("alice", "note", {"from": "a"}) == 1  # delivered here; b delivers its
        assert await recs[on_a].next("note") == {"from": "a"}
        assert await recs[on_b].next("note") == {"from": "a"}
        assert b.to_user("alice", "note", b"\x01") == 1
        assert await recs[on_a].next("note") == b"\x01"
        assert await recs[on_b].next("note") == b"\x01"
        assert a.to_user("bob", "note", "x") == 0  # bob is on b only
        assert await recs[bob].next("note") == "x"
        for c in (on_a, on_b):
            await quiet(a if c is on_a else b, c, recs[c], "note")
        records = await a.fetch_sockets()
        assert sorted((r.node, r.user) for r in records) == sorted(
            [(a.node_id, "alice"), (b.node_id, "alice"), (b.node_id, "bob")])

        assert await a.disconnect_user("alice", reason="logout") == 2  # counted cluster-wide
        for c in (on_a, on_b):
            closed = await recs[c].next("disconnect")
            assert (closed.code, closed.reason) == (CloseCode.KICKED, "logout")
        await wait_for(lambda: not a.user_sockets("alice") and not b.user_sockets("alice"))
        assert await bob.call("join", "r") is None  # bob is unaffected
        assert await b.disconnect_user("alice") == 0
        assert a._users.filed == 0 and b._users.names() == ["bob"]


async def test_presence_by_user_across_nodes(broker: str) -> None:
    async with (
        two_nodes(broker) as (a, b),
        client(a, "alice") as a1, client(b, "alice") as a2, client(b, "bob") as bob,
        client(a, "nobody") as n,
    ):
        rec = Recorder(a1, "$presence")
        await a1.call("join", "p-game")
        await rec.next("$presence")
        await a2.call("join", "p-game")
        assert (await rec.next("$presence"))["joined"] == {
            "sid": a2.sid, "info": {}, "user": "alice"}  # from node b, with the user
        await bob.call("join", "p-game")
        assert (await rec.next("$presence"))["joined"]["user"] == "bob"
        await n.call("join", "p-game")
        assert "user" not in (await rec.next("$presence"))["joined"]
        expected = sorted([
            (a.node_id, "alice"), (b.node_id, "alice"), (b.node_id, "bob"), (a.node_id, ""),
        ])
        for node in (a, b):  # b learns of a's last join by a delta: eventually
            await until(lambda node=node: members_by_node(node, "p-game"), expected)
            assert await node.room_users("p-game") == ["alice", "bob"]
        # a room without presence: presence() asks every node, users are there too
        await a1.call("join", "plain")
        await bob.call("join", "plain")
        assert await b.room_users("plain") == ["alice", "bob"]
        # bob leaves (his connection closes): every node's view follows
        await b.disconnect_user("bob")
        left = await rec.next("$presence")
        assert left["left"]["user"] == "bob"
        await until(lambda: a.room_users("p-game"), ["alice"])
        await until(lambda: b.room_users("p-game"), ["alice"])


async def test_an_outside_publisher_reaches_a_user_with_the_plain_message(broker: str) -> None:
    """What an emitter does: its own broker connection publishes ``SendToUser`` on the
    cluster's all channel (``all_channel(prefix)``)."""
    async with two_nodes(broker) as (a, b), client(a, "alice") as on_a, client(b, "alice") as on_b:
        recs = [Recorder(c, "note") for c in (on_a, on_b)]
        prefix = a.config.cluster_prefix
        assert all_channel(prefix) == a._cluster.all_channel
        assert inbox_channel(prefix, "n1") == a._cluster.inbox("n1")
        assert room_channel(prefix, "a b") == a._cluster.room_channel("a b")
        body = messages.SendToUser("alice", envelope.encode_event("note", "from outside"), False)
        assert a.config.cluster_url is not None
        emitter = create_adapter(a.config.cluster_url)
        await emitter.start(lambda channel, data: None, lambda connected: None)
        try:
            await wait_for(lambda: emitter.publish(
                all_channel(prefix), messages.encode("emitter", body)))
            for rec in recs:
                assert await rec.next("note") == "from outside"
        finally:
            await emitter.close()


@pytest.mark.parametrize("broker_name", ["redis", "nats"])
async def test_an_emitter_reaches_and_disconnects_a_user_on_both_nodes(broker_name: str) -> None:
    """``AsyncEmitter.to_user`` / ``disconnect_user`` (issue 18 meets issue 19): a process
    without a server reaches every connection of a user, on every node."""
    async with (
        two_nodes(broker_name) as (a, b),
        client(a, "alice") as on_a, client(b, "alice") as on_b, client(b, "bob") as bob,
    ):
        recs = {c: Recorder(c, "note", "disconnect") for c in (on_a, on_b, bob)}
        assert a.config.cluster_url is not None
        async with AsyncEmitter(a.config.cluster_url, prefix=a.config.cluster_prefix) as emitter:
            with pytest.raises(ValueError):
                await emitter.to_user("", "note", 1)  # checked before anything is sent
            await emitter.to_user("alice", "note", {"n": 1})
            assert await recs[on_a].next("note") == {"n": 1}
            assert await recs[on_b].next("note") == {"n": 1}
            await emitter.disconnect_user("alice", reason="banned")
            for c in (on_a, on_b):
                closed = await recs[c].next("disconnect")
                assert (closed.code, closed.reason) == (CloseCode.KICKED, "banned")
            await wait_for(lambda: not a.user_sockets("alice") and not b.user_sockets("alice"))
        assert recs[bob].pending("note") == 0 and bob.connected


async def test_a_session_resumed_on_another_node_keeps_its_user() -> None:
    """Recovery on Redis: alice's connection drops on node a and resumes on node b; the user
    goes with it, and a's index keeps nothing of it."""
    async with two_nodes("redis", recovery_window=5.0) as (a, b):
        first = await Peer.open(a, "token=alice")
        sid = (await first.welcomed())["sid"]
        first.ws.transport.abort()
        await wait_for(lambda: sid not in a.sockets)
        again = await Peer.open(b, "token=alice&resume=1")
        await again.resume(first)
        assert b.sockets[sid].user == "alice" and b._users.filed == 1
        assert a._users.filed == 0
        assert a.to_user("alice", "note", "via a") == 0  # b delivers it
        assert (await again.recv())[:2] == ["note", "via a"]
        assert await a.disconnect_user("alice", reason="logout") == 1
        await wait_for(lambda: b._users.filed == 0)
        await first.ws.close()
        await again.ws.close()
