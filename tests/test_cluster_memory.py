"""Cluster node logic with nodes in one process sharing a MemoryBroker (fast), plus the
single-node behaviour of the cluster API and the node-to-node message format."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import pytest

from smartsocket import AckError, AckTimeout, Client, ConnectionClosed, SmartSocket, Socket
from smartsocket.cluster import MemoryAdapter, MemoryBroker, messages
from smartsocket.cluster.node import channel_token
from smartsocket.cluster.operations import node_of
from smartsocket.cluster.presence import Replica
from smartsocket.testing import Recorder, connected, running, wait_for

FAST = {"cluster_heartbeat": 0.05, "node_timeout": 0.4}


def make_app(**options: Any) -> SmartSocket:
    server = SmartSocket(**options)

    @server.on("join")
    def join(socket: Socket, data: dict[str, Any]) -> None:
        socket.presence = data.get("presence", {})
        socket.join(data["room"])

    @server.on("leave")
    def leave(socket: Socket, room: str) -> None:
        socket.leave(room)

    return server


@asynccontextmanager
async def nodes(count: int, **options: Any) -> AsyncIterator[list[SmartSocket]]:
    url = f"memory://{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(running(make_app(cluster_url=url, **FAST, **options)))
            for _ in range(count)
        ]
        await wait_for(lambda: all(len(s.cluster_nodes()) == count for s in servers))
        yield servers


async def joined(client: Client, room: str, **presence: Any) -> None:
    await client.call("join", {"room": room, "presence": presence})


async def test_room_broadcast_exclude_and_server_broadcast() -> None:
    async with nodes(2) as (a, b), connected(a) as ca, connected(a) as ca2, connected(b) as cb:
        recs = [Recorder(c, "msg", "all") for c in (ca, ca2, cb)]
        for client in (ca, ca2, cb):
            await joined(client, "lobby")
        assert a.room("lobby").broadcast("msg", {"n": 1}) == 2  # local deliveries
        for rec in recs:
            assert await rec.next("msg") == {"n": 1}
        # exclude by socket and by the id of a socket on the other node
        a.room("lobby").broadcast("msg", 2, exclude=[a.sockets[ca.sid or ""], cb.sid or ""])
        assert await recs[1].next("msg") == 2
        b.room("lobby").broadcast("msg", 3, exclude=ca2.sid)
        assert await recs[0].next("msg") == 3 and await recs[2].next("msg") == 3
        assert recs[0].pending("msg") == recs[2].pending("msg") == 0
        assert recs[1].pending("msg") == 0
        # a broadcast to a room this node has no member of still reaches the others
        await cb.call("leave", "lobby")
        await joined(cb, "only-b")
        assert a.room("only-b").broadcast("msg", 4) == 0
        assert await recs[2].next("msg") == 4
        b.broadcast("all", "everyone", exclude=cb.sid)
        assert await recs[0].next("all") == "everyone" and await recs[1].next("all") == "everyone"


async def test_large_payload_is_compressed_once_at_the_origin() -> None:
    async with nodes(2) as (a, b), connected(a) as ca, connected(b) as cb:
        rec = Recorder(cb, "big")
        await joined(ca, "r")
        await joined(cb, "r")
        calls: list[int] = []
        from smartsocket import compression

        original = compression.compress_once

        def counting(payload: Any, **kw: Any) -> Any:
            calls.append(len(payload))
            return original(payload, **kw)

        compression.compress_once = counting  # type: ignore[assignment]
        try:
            text = "hello cluster " * 200
            a.room("r").broadcast("big", text)
            assert await rec.next("big") == text
        finally:
            compression.compress_once = original
        assert len(calls) == 1  # the origin compressed; node b used its bytes
        assert b.stats()["raw"]["compressedMessagesOut"] == 1


async def test_operations_on_remote_sockets() -> None:
    async with nodes(2) as (a, b), connected(b) as cb:
        sid = cb.sid or ""
        assert node_of(sid) == b.node_id
        rec = Recorder(cb, "direct", "room-msg", "disconnect")
        cb.on("question", lambda data: {"answer": data * 2})
        assert a.send(sid, "direct", {"hi": 1})
        assert await rec.next("direct") == {"hi": 1}
        assert await a.call(sid, "question", 21, timeout=2) == {"answer": 42}
        with pytest.raises(AckError) as info:
            await a.call(sid, "no-handler", timeout=2)
        assert info.value.code == "unknown_event"
        cb.on("slow", lambda data: asyncio.sleep(5))
        with pytest.raises(AckTimeout):
            await a.call(sid, "slow", timeout=0.2)
        assert await a.join(sid, "remote-room")
        assert b.room("remote-room").socket_count() == 1
        a.room("remote-room").broadcast("room-msg", "x")
        assert await rec.next("room-msg") == "x"
        assert [r.sid for r in await a.fetch_sockets("remote-room")] == [sid]
        assert await a.leave(sid, "remote-room")
        assert await a.socket_count("remote-room") == 0
        ghost = f"{b.node_id}.nobody"
        assert not await a.join(ghost, "x")
        assert not a.send("not-a-cluster-id", "x")
        with pytest.raises(ConnectionClosed):
            await a.call(ghost, "x", timeout=1)
        assert await a.disconnect(sid, 4000, "bye")
        closed = await rec.next("disconnect")
        assert closed.code == 4000
        await wait_for(lambda: not b.sockets)


async def test_fetch_sockets_counts_and_server_events() -> None:
    async with nodes(3) as (a, b, c), connected(a) as ca, connected(b) as cb, connected(c) as cc:
        await joined(cb, "g", name="bee")
        records = await a.fetch_sockets()
        assert sorted(r.sid for r in records) == sorted([ca.sid, cb.sid, cc.sid])
        bee = next(r for r in records if r.sid == cb.sid)
        assert (bee.node, bee.rooms, bee.presence) == (b.node_id, ["g"], {"name": "bee"})
        assert await c.socket_count() == 3 and await c.socket_count("g") == 1
        got: list[Any] = []
        b.on_server_event("reload", lambda data, node: got.append((data, node)))

        @c.on_server_event("reload")
        async def on_reload(data: dict[str, int]) -> None:
            got.append(("c", data))

        a.on_server_event("reload", lambda data: got.append("self!"))
        assert a.emit_to_servers("reload", {"v": 2})
        await wait_for(lambda: len(got) == 2)
        assert ({"v": 2}, a.node_id) in got and ("c", {"v": 2}) in got


async def test_presence_across_nodes_and_node_death() -> None:
    async with (
        nodes(3, presence_rooms="game:*") as (a, b, c),
        connected(a) as ca, connected(b) as cb, connected(c) as cc,
    ):
        ra, rc = Recorder(ca, "$presence"), Recorder(cc, "$presence")
        await joined(ca, "game:1", name="ann")
        assert await ra.next("$presence") == {
            "room": "game:1", "joined": {"sid": ca.sid, "info": {"name": "ann"}}
        }
        await joined(cb, "game:1", name="bob")
        assert (await ra.next("$presence"))["joined"]["info"] == {"name": "bob"}
        # c is no member: presence() asks every node
        listed = await c.room("game:1").presence()
        assert sorted((p.sid, p.node, p.info["name"]) for p in listed) == sorted(
            [(ca.sid, a.node_id, "ann"), (cb.sid, b.node_id, "bob")]
        )
        # c joins: its replica is filled by a snapshot; a hears c's join
        await joined(cc, "game:1", name="cy")
        assert (await ra.next("$presence"))["joined"]["sid"] == cc.sid
        await wait_for(lambda: len(c._cluster.presence_state.replicas["game:1"].listing()) == 2)
        names = sorted(p.info["name"] for p in await c.room("game:1").presence())
        assert names == ["ann", "bob", "cy"]
        await cb.call("leave", "game:1")
        assert (await ra.next("$presence"))["left"]["sid"] == cb.sid
        await joined(cb, "game:1", name="bob2")
        await ra.next("$presence")
        # node b dies without a word: silent past node_timeout, it is dropped
        assert b._cluster._task is not None
        b._cluster._task.cancel()
        adapter = b._cluster.adapter
        assert isinstance(adapter, MemoryAdapter)
        adapter.broker.detach(adapter)
        assert (await ra.next("$presence", timeout=2))["left"]["sid"] == cb.sid
        await wait_for(lambda: b.node_id not in a.cluster_nodes())
        assert sorted(p.info["name"] for p in await a.room("game:1").presence()) == [
            "ann", "cy"]
        assert await a.socket_count() == 2
        while rc.pending("$presence"):
            await rc.next("$presence")


async def test_broker_outage_degrades_counts_and_recovers() -> None:
    async with nodes(2) as (a, b), connected(a) as ca, connected(a) as ca2, connected(b) as cb:
        for client in (ca, ca2, cb):
            await joined(client, "r")
        ra2, rb = Recorder(ca2, "m"), Recorder(cb, "m")
        adapter = a._cluster.adapter
        assert isinstance(adapter, MemoryAdapter)
        broker = adapter.broker
        broker.down()
        assert a.degraded and b.degraded
        assert a.room("r").broadcast("m", 1) == 2  # local delivery goes on
        assert await ra2.next("m") == 1
        stats = a.stats()
        assert stats["cluster"]["status"] == "degraded"
        assert stats["raw"]["clusterPublishFailed"] >= 1
        broker.up()
        await wait_for(lambda: not a.degraded and not b.degraded)
        a.room("r").broadcast("m", 2)  # the room channel was resubscribed
        assert await rb.next("m") == 2
        assert rb.pending("m") == 0  # 1 was lost (and counted), never replayed


async def test_unknown_version_is_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async with nodes(2) as (a, b), connected(b) as cb:
        await joined(cb, "r")
        body = messages.Broadcast("r", b'["m",1]', False)
        raw = msgspec.msgpack.encode(
            messages.Envelope(99, a.node_id, msgspec.Raw(msgspec.msgpack.encode(body)))
        )
        rec = Recorder(cb, "m")
        caplog.set_level(logging.WARNING, "smartsocket.cluster")
        b._cluster._receive(b._cluster.room_channel("r"), raw)
        b._cluster._receive(b._cluster.room_channel("r"), b"\xc1garbage")
        assert b._cluster.dropped_version == 1 and b._cluster.dropped_invalid == 1
        # nested past the decoder's depth: its RecursionError used to escape into the broker
        # link's reader (a Redis link broke and reconnected, per message)
        delta = msgspec.msgpack.encode(messages.PresenceDelta("r", "s", True, "@@", b""))
        deep = delta.replace(b"\xa2@@", b"\x91" * 1200 + b"\xc0")
        b._cluster._receive(b._cluster.room_channel("r"), messages.encode("zz", msgspec.Raw(deep)))
        assert b._cluster.dropped_invalid == 2
        assert "version 99" in caplog.text
        b._cluster._receive(b._cluster.room_channel("r"), messages.encode("zz", body))
        assert await rec.next("m") == 1
        assert rec.pending("m") == 0


def test_messages_round_trip_and_channel_tokens() -> None:
    body = messages.Broadcast("room", b"payload", True, b"deflated", True, ["s1"])
    env = messages.decode_envelope(messages.encode("node1", body))
    assert (env.v, env.src) == (messages.VERSION, "node1")
    assert messages.decode_body(env) == body
    assert channel_token("plain-name_1") == "plain-name_1"
    tokens = {channel_token(n) for n in ("a.b", "a b", "a*b", "~x", "é", "a>b")}
    assert len(tokens) == 6 and all("." not in t and " " not in t for t in tokens)


def test_presence_replica_prefers_newer_information() -> None:
    replica = Replica()
    assert replica.apply("n", "s1", 5, {"v": 1})
    # an older snapshot does not undo a newer delta...
    joined, left = replica.snapshot("n", 3, [])
    assert (joined, left) == ([], []) and len(replica.listing()) == 1
    assert replica.apply("n", "s1", 7, None)  # left
    joined, left = replica.snapshot("n", 6, [("s1", {"v": 1})])  # ...nor a stale one resurrect
    assert joined == [] and replica.listing() == []
    joined, left = replica.snapshot("n", 9, [("s2", {})])
    assert [entry[0] for entry in joined] == ["s2"]
    assert not replica.apply("n", "s3", 8, {})  # older than the snapshot floor


async def test_single_node_has_the_same_api() -> None:
    server = make_app(presence_rooms="*")
    async with running(server), connected(server) as client, connected(server) as other:
        rec = Recorder(client, "$presence", "direct")
        client.on("q", lambda data: data + 1)
        sid = client.sid or ""
        assert "." not in sid and server.cluster_nodes() == [server.node_id]
        assert server.send(sid, "direct", 1) and await rec.next("direct") == 1
        assert await server.call(sid, "q", 1) == 2
        assert await server.join(sid, "r")
        assert (await rec.next("$presence"))["joined"]["sid"] == sid
        assert [m.sid for m in await server.room("r").presence()] == [sid]
        assert len(await server.fetch_sockets()) == 2 and await server.socket_count("r") == 1
        assert not server.emit_to_servers("x", 1)
        assert not await server.join("nobody", "r")
        await other.call("join", {"room": "r"})
        assert (await rec.next("$presence"))["joined"]["sid"] == other.sid
        await other.close()
        assert (await rec.next("$presence"))["left"]["sid"] == other.sid
        assert "cluster" not in server.stats()


async def test_room_presence_flag_and_remove_room() -> None:
    async with nodes(2) as (a, b), connected(a) as ca, connected(b) as cb:
        for server in (a, b):
            server.room("vip", presence=True)
        ra = Recorder(ca, "$presence")
        await joined(ca, "vip", n=1)
        await ra.next("$presence")
        await joined(cb, "vip", n=2)
        assert (await ra.next("$presence"))["joined"]["info"] == {"n": 2}
        b.remove_room("vip")
        assert (await ra.next("$presence"))["left"]["sid"] == cb.sid
        await wait_for(lambda: b._cluster.room_channel("vip") not in b._cluster.adapter.channels)  # type: ignore[union-attr]


def test_memory_broker_by_name() -> None:
    assert MemoryBroker.named("x") is MemoryBroker.named("x")


async def test_set_presence_updates_members_on_one_node() -> None:
    server = make_app(presence_rooms="lobby")
    async with running(server), connected(server) as ann, connected(server) as bob:
        rec = Recorder(ann, "$presence")
        await joined(ann, "lobby", name="ann")
        await rec.next("$presence")
        await joined(bob, "lobby", name="bob")
        assert (await rec.next("$presence"))["joined"]["info"] == {"name": "bob"}
        assert bob.sid is not None
        server.sockets[bob.sid].set_presence({"name": "bob", "away": True})
        assert await rec.next("$presence") == {
            "room": "lobby", "updated": {"sid": bob.sid, "info": {"name": "bob", "away": True}}
        }
        listed = await server.room("lobby").presence()
        assert {m.sid: m.info for m in listed}[bob.sid] == {"name": "bob", "away": True}
        server.sockets[ann.sid or ""].set_presence({"name": "ann"})  # the same info: still told
        assert (await rec.next("$presence"))["updated"]["sid"] == ann.sid


async def test_a_stalled_event_loop_does_not_drop_the_nodes_it_did_not_read() -> None:
    """A node's loop blocked for longer than ``node_timeout`` (a long handler, a busy
    machine): the heartbeats that came in meanwhile are not read yet when its liveness round
    runs, late. Their senders only look silent: the round does not count its own lateness.
    Before, the first round after the stall dropped every other node (and their presence)."""
    import time

    async with nodes(2) as (a, b):
        stalled_at = time.monotonic()
        time.sleep(2 * FAST["node_timeout"])  # noqa: ASYNC251 (the stall is the point)

        def heard_since(server: SmartSocket, other: SmartSocket) -> bool:
            known = server._cluster.liveness.nodes.get(other.node_id)
            return known is not None and known.last_seen > stalled_at + 0.1

        await wait_for(lambda: heard_since(a, b) and heard_since(b, a), timeout=10)
        assert a.stats()["cluster"]["nodesDropped"] == 0
        assert b.stats()["cluster"]["nodesDropped"] == 0
