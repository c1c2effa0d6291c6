"""Connection state recovery on one node, at the protocol level (protocol.md section 8).

The peer is the ``websockets`` library, so these tests check the wire contract itself: the
positions on room and direct messages, ``$resume`` and what it replays, idempotent calls.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from smartsocket import SmartSocket, Socket
from smartsocket.testing import running, wait_for

pytestmark = pytest.mark.asyncio


class Peer:
    """A protocol peer over ``websockets``: JSON arrays in, JSON arrays out."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def open(cls, server: SmartSocket, query: str = "") -> Peer:
        url = server.url + (f"?{query}" if query else "")
        ws = await websockets.connect(url, subprotocols=["smartsocket.v1"])  # type: ignore[list-item]
        return cls(ws)

    async def welcomed(self) -> dict[str, Any]:
        message = await self.recv()
        assert message[0] == "$welcome", message
        self.welcome = message[1]
        return self.welcome

    async def send(self, *items: Any) -> None:
        await self.ws.send(json.dumps(list(items)))

    async def recv(self, timeout: float = 3.0) -> list[Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if message[0] != "$ping":
                return message  # type: ignore[no-any-return]

    async def nothing(self, wait: float = 0.2) -> None:
        with pytest.raises(TimeoutError):
            message = await self.recv(wait)
            raise AssertionError(f"unexpected {message}")

    def drop(self) -> None:
        """Cut TCP without a close frame, as a lost network would."""
        self.ws.transport.abort()


def app(**options: Any) -> SmartSocket:
    options.setdefault("recovery_window", 5.0)
    server = SmartSocket(**options)

    @server.on("join")
    def join(socket: Socket, room: str) -> str:
        socket.join(room)
        return room

    @server.on("chat")
    def chat(socket: Socket, data: dict[str, Any]) -> int:
        return server.room(data["room"]).broadcast("chat", data["text"], exclude=socket)

    return server


async def resume(server: SmartSocket, peer: Peer, offsets: dict[str, Any], seq: int) -> Peer:
    again = await Peer.open(server, "resume=1")
    await again.send(
        "$resume",
        {"sid": peer.welcome["sid"], "token": peer.welcome["token"], "offsets": offsets,
         "seq": seq},
    )
    await again.welcomed()
    return again


async def test_room_and_direct_messages_carry_positions() -> None:
    async with running(app()) as server:
        peer = await Peer.open(server)
        welcome = await peer.welcomed()
        assert welcome["recovery"] == 5000 and "recovered" not in welcome
        await peer.send("join", "lobby", 1)
        assert await peer.recv() == [1, "lobby"]
        server.room("lobby").broadcast("news", 1)
        server.room("lobby").broadcast("news", 2)
        first, second = await peer.recv(), await peer.recv()
        assert first[:3] == ["news", 1, None] and second[:3] == ["news", 2, None]
        room, epoch, offset = first[3]
        assert room == "lobby" and isinstance(epoch, str) and offset == 1
        assert second[3] == ["lobby", epoch, 2]
        server.sockets[welcome["sid"]].send("dm", "a")
        assert server.send(welcome["sid"], "dm", "b")
        assert await peer.recv() == ["dm", "a", None, 1]
        assert await peer.recv() == ["dm", "b", None, 2]
        await peer.ws.close()


async def test_resume_replays_missed_messages_in_order() -> None:
    async with running(app()) as server:
        peer = await Peer.open(server)
        welcome = await peer.welcomed()
        sid = welcome["sid"]
        for ack, room in enumerate(("a", "b"), 1):
            await peer.send("join", room, ack)
            await peer.recv()
        server.sockets[sid].data["name"] = "ann"
        server.room("a").broadcast("m", "a1")
        last_a = (await peer.recv())[3]
        peer.drop()
        await wait_for(lambda: sid not in server.sockets)
        # Missed: interleaved room and direct messages, and one the socket was excluded from.
        server.room("a").broadcast("m", "a2")
        server.room("b").broadcast("m", "b1")
        assert server.send(sid, "dm", "d1")
        server.room("a").broadcast("m", "a3", exclude=sid)
        server.room("a").broadcast("m", "a4")
        again = await resume(server, peer, {"a": last_a[1:]}, 0)
        assert again.welcome["recovered"] is True and again.welcome["sid"] == sid
        assert again.welcome["token"] != welcome["token"]  # a new token for the next resume
        got = [(await again.recv())[1] for _ in range(4)]
        assert got == ["a2", "b1", "d1", "a4"]
        await again.nothing()
        socket = server.sockets[sid]
        assert socket.recovered and socket.rooms == {"a", "b"} and socket.data["name"] == "ann"
        server.room("b").broadcast("m", "b2")  # member again
        assert (await again.recv())[1] == "b2"
        await again.ws.close()


async def test_resume_without_reported_offsets_replays_from_the_join() -> None:
    async with running(app()) as server:
        peer = await Peer.open(server)
        sid = (await peer.welcomed())["sid"]
        server.room("r").broadcast("m", "before")  # before the join: never for this socket
        await peer.send("join", "r", 1)
        await peer.recv()
        peer.drop()
        await wait_for(lambda: sid not in server.sockets)
        server.room("r").broadcast("m", "after")
        again = await resume(server, peer, {}, 0)
        assert again.welcome["recovered"] is True
        assert (await again.recv())[1] == "after"
        await again.nothing()
        await again.ws.close()


async def test_recovered_false_when_history_was_trimmed() -> None:
    async with running(app(history_size=3)) as server:
        peer = await Peer.open(server)
        sid = (await peer.welcomed())["sid"]
        await peer.send("join", "r", 1)
        await peer.recv()
        peer.drop()
        await wait_for(lambda: sid not in server.sockets)
        for n in range(5):  # more than history_size: the first two are gone
            server.room("r").broadcast("m", n)
        again = await resume(server, peer, {}, 0)
        assert again.welcome["recovered"] is False
        assert again.welcome["sid"] != sid
        assert server.sockets[again.welcome["sid"]].rooms == frozenset()
        await again.nothing()
        assert server.stats()["recovery"]["recoveryFailed"] == 1
        from smartsocket.server.prometheus import exposition

        metrics = exposition(server._figures.registry()).decode()
        assert 'smartsocket_resumes_total{result="failed"} 1.0' in metrics
        assert "smartsocket_held_sessions 0.0" in metrics
        await again.ws.close()


async def test_recovered_false_on_wrong_token_epoch_or_after_the_window() -> None:
    async with running(app(recovery_window=0.5)) as server:
        peer = await Peer.open(server)
        welcome = await peer.welcomed()
        await peer.send("join", "r", 1)
        await peer.recv()
        server.room("r").broadcast("m", 1)
        position = (await peer.recv())[3]
        peer.drop()
        await wait_for(lambda: welcome["sid"] not in server.sockets)

        forged = await Peer.open(server, "resume=1")
        await forged.send("$resume", {"sid": welcome["sid"], "token": "nope", "offsets": {},
                                      "seq": 0})
        assert (await forged.welcomed())["recovered"] is False

        wrong_epoch = await resume(server, peer, {"r": ["other", position[2]]}, 0)
        # A position of another epoch is ignored: the join position still works.
        assert wrong_epoch.welcome["recovered"] is True
        wrong_epoch.drop()
        peer.welcome = wrong_epoch.welcome
        await wait_for(lambda: welcome["sid"] not in server.sockets)
        await asyncio.sleep(0.8)  # past recovery_window
        late = await resume(server, peer, {"r": position[1:]}, 0)
        assert late.welcome["recovered"] is False
        for ws in (forged, late):
            await ws.ws.close()


async def test_resume_takes_over_a_connection_the_server_still_thinks_alive() -> None:
    async with running(app()) as server:
        disconnects: list[str] = []
        server.on("disconnect", lambda socket, reason: disconnects.append(reason))
        peer = await Peer.open(server)
        sid = (await peer.welcomed())["sid"]
        await peer.send("join", "r", 1)
        await peer.recv()
        server.room("r").broadcast("m", 1)
        position = (await peer.recv())[3]
        # The client gave up on this connection; the server has not noticed anything.
        again = await resume(server, peer, {"r": position[1:]}, 0)
        assert again.welcome["recovered"] is True and again.welcome["sid"] == sid
        assert disconnects == ["resumed by a new connection"]
        server.room("r").broadcast("m", 2)
        assert (await again.recv())[1] == 2
        assert len(server.sockets) == 1
        await again.ws.close()


async def test_clean_close_and_kick_end_the_session() -> None:
    async with running(app()) as server:
        peer = await Peer.open(server)
        welcome = await peer.welcomed()
        await peer.ws.close()
        await wait_for(lambda: welcome["sid"] not in server.sockets)
        again = await resume(server, peer, {}, 0)
        assert again.welcome["recovered"] is False

        sid = again.welcome["sid"]
        server.sockets[sid].disconnect()
        await wait_for(lambda: sid not in server.sockets)
        third = await resume(server, again, {}, 0)
        assert third.welcome["recovered"] is False
        await third.ws.close()


async def test_events_sent_before_resume_wait_for_the_session() -> None:
    async with running(app()) as server:
        peer = await Peer.open(server)
        welcome = await peer.welcomed()
        peer.drop()
        await wait_for(lambda: welcome["sid"] not in server.sockets)
        again = await Peer.open(server, "resume=1")
        await again.send("join", "x", 7)  # before $resume: handled after the welcome
        await again.send("$resume", {"sid": welcome["sid"], "token": welcome["token"],
                                     "offsets": {}, "seq": 0})
        assert (await again.welcomed())["recovered"] is True
        assert await again.recv() == [7, "x"]
        assert server.sockets[welcome["sid"]].rooms == {"x"}
        await again.ws.close()


async def test_no_resume_message_in_time_starts_a_new_session() -> None:
    async with running(app(auth_timeout=0.2)) as server:
        peer = await Peer.open(server, "resume=1")
        welcome = await peer.welcomed()
        assert welcome["recovered"] is False
        await peer.ws.close()


async def test_retried_call_runs_its_handler_once() -> None:
    runs: list[int] = []
    release = asyncio.Event()
    server = app()

    @server.on("pay")
    async def pay(socket: Socket, amount: int) -> dict[str, int]:
        runs.append(amount)
        await release.wait()
        return {"paid": amount}

    @server.on("fail")
    def fail(socket: Socket, data: Any) -> None:
        runs.append(-1)
        raise ValueError("no")

    async with running(server):
        peer = await Peer.open(server)
        await peer.welcomed()
        await peer.send("pay", 10, 1, "k1")
        await wait_for(lambda: runs == [10])
        peer.drop()  # the reply is lost: the client retries after resuming
        await wait_for(lambda: peer.welcome["sid"] not in server.sockets)
        again = await resume(server, peer, {}, 0)
        assert again.welcome["recovered"] is True
        await again.send("pay", 10, 1, "k1")  # still running: answered when it finishes
        release.set()
        assert await again.recv() == [1, {"paid": 10}]  # once, whichever came first
        await again.send("pay", 10, 2, "k1")  # done: answered from the record
        assert await again.recv() == [2, {"paid": 10}]
        await again.send("pay", 11, 3, "k2")
        assert await again.recv() == [3, {"paid": 11}]
        assert runs == [10, 11]
        await again.send("fail", None, 4, 99)
        first = await again.recv()
        await again.send("fail", None, 5, 99)
        second = await again.recv()
        assert first[2]["code"] == second[2]["code"] == "internal_error"
        assert runs == [10, 11, -1]
        await again.ws.close()


async def test_bad_idempotency_keys_are_refused() -> None:
    async with running(app()) as server:
        peer = await Peer.open(server)
        await peer.welcomed()
        await peer.send("join", "r", 1, {"not": "a key"})
        reply = await peer.recv()
        assert reply[0] == 1 and reply[2]["code"] == "bad_message"
        await peer.send("join", "r", None, "k")  # a key without an ack id
        error = await peer.recv()
        assert error[0] == "$error" and error[1]["code"] == "bad_message"
        await peer.send("join", "r", 2, "x" * 65)
        assert (await peer.recv())[2]["code"] == "bad_message"
        assert server.sockets[peer.welcome["sid"]].rooms == frozenset()
        await peer.ws.close()


async def test_recovery_off_sends_no_positions_and_ignores_keys() -> None:
    async with running(SmartSocket()) as server:
        server.on("join", lambda socket, room: socket.join(room) or room)
        peer = await Peer.open(server)
        welcome = await peer.welcomed()
        assert "recovery" not in welcome
        await peer.send("join", "r", 1, "k")
        assert await peer.recv() == [1, "r"]
        await peer.send("join", "r", 2, "k")
        assert await peer.recv() == [2, "r"]
        server.room("r").broadcast("m", 1)
        assert await peer.recv() == ["m", 1]
        server.sockets[welcome["sid"]].send("dm", 2)
        assert await peer.recv() == ["dm", 2]
        await peer.ws.close()


async def test_expired_sessions_and_history_are_swept() -> None:
    async with running(app(recovery_window=0.3)) as server:
        peer = await Peer.open(server)
        sid = (await peer.welcomed())["sid"]
        await peer.send("join", "r", 1)
        await peer.recv()
        server.room("r").broadcast("m", 1)
        peer.drop()
        await wait_for(lambda: sid not in server.sockets)
        recovery = server._parts.recovery
        assert recovery is not None
        assert sid in recovery.held
        await wait_for(lambda: not recovery.held and not recovery.rooms, timeout=3)


async def test_resume_sent_before_async_authentication_is_read_once_authenticated() -> None:
    server = app()

    @server.authenticate
    async def check(request: Any) -> Any:
        await asyncio.sleep(0.05)  # slower than the client's $resume
        return {"user": request.token} if request.token else None

    async with running(server):
        peer = await Peer.open(server, "token=ann")
        welcome = await peer.welcomed()
        peer.drop()
        await wait_for(lambda: welcome["sid"] not in server.sockets)
        again = await resume_with(server, welcome, "token=ann&resume=1")
        assert again.welcome["recovered"] is True and again.welcome["sid"] == welcome["sid"]
        again.drop()
        await wait_for(lambda: welcome["sid"] not in server.sockets)
        other = await resume_with(server, again.welcome, "token=bob&resume=1")
        assert other.welcome["recovered"] is False  # another identity
        await other.ws.close()


async def test_resume_out_of_place_is_refused() -> None:
    async with running(app()) as server:
        peer = await Peer.open(server)
        welcome = await peer.welcomed()
        await peer.send("$resume", {"sid": welcome["sid"], "token": welcome["token"]})
        error = await peer.recv()
        assert error[0] == "$error" and error[1]["code"] == "bad_message"
        await peer.ws.close()


async def resume_with(server: SmartSocket, welcome: dict[str, Any], query: str) -> Peer:
    peer = await Peer.open(server, query)
    await peer.send("$resume", {"sid": welcome["sid"], "token": welcome["token"],
                                "offsets": {}, "seq": 0})
    await peer.welcomed()
    return peer


async def test_held_sessions_are_capped_at_max_connections() -> None:
    async with running(app(max_connections=3)) as server:
        sids = []
        for _ in range(5):  # connect and drop, more times than max_connections
            peer = await Peer.open(server)
            sids.append((await peer.welcomed())["sid"])
            peer.drop()
            await wait_for(lambda sid=sids[-1]: sid not in server.sockets)
        recovery = server._parts.recovery
        assert recovery is not None
        assert list(recovery.held) == sids[2:]  # the two oldest went first
        assert server.stats()["recovery"]["heldEvicted"] == 2
