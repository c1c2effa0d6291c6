"""The app the cluster tests run in each node process (``--app tests.cluster_app:create``).

Clients drive the cluster API through these events, so a test can make node A act on a
socket connected to node B.
"""

from __future__ import annotations

import asyncio
from typing import Any

from smartsocket import Config, SmartSocket, Socket


def create(config: Config | None = None) -> SmartSocket:
    server = SmartSocket(config=config)
    notes: list[Any] = []
    ran = [0]  # slow_count runs on this node

    @server.on("node")
    def node(socket: Socket, data: Any) -> str:
        return server.node_id

    @server.on("join")
    async def join(socket: Socket, data: dict[str, Any]) -> int:
        if "presence" in data:
            socket.presence = data["presence"]
        socket.join(data["room"])
        room = server.room(data["room"])
        assert await room.subscribed()  # other nodes' broadcasts reach it from now on
        return room.socket_count()

    @server.on("status")
    def status(socket: Socket, info: dict[str, Any]) -> None:
        socket.set_presence(info)

    @server.on("leave")
    def leave(socket: Socket, room: str) -> None:
        socket.leave(room)

    @server.on("say")
    def say(socket: Socket, data: dict[str, Any]) -> int:
        exclude = socket if data.get("not_me") else data.get("exclude")
        return server.room(data["room"]).broadcast("said", data["text"], exclude=exclude)

    @server.on("shout")
    def shout(socket: Socket, data: Any) -> int:
        return server.broadcast("shouted", data, exclude=socket)

    @server.on("send_to")
    def send_to(socket: Socket, data: dict[str, Any]) -> bool:
        return server.send(data["sid"], data["event"], data.get("data"))

    @server.on("call_to")
    async def call_to(socket: Socket, data: dict[str, Any]) -> Any:
        return await server.call(data["sid"], data["event"], data.get("data"),
                                 timeout=data.get("timeout", 2.0))

    @server.on("join_remote")
    async def join_remote(socket: Socket, data: dict[str, Any]) -> bool:
        return await server.join(data["sid"], data["room"])

    @server.on("leave_remote")
    async def leave_remote(socket: Socket, data: dict[str, Any]) -> bool:
        return await server.leave(data["sid"], data["room"])

    @server.on("kick")
    async def kick(socket: Socket, sid: str) -> bool:
        return await server.disconnect(sid, 4000, "kicked from afar")

    @server.on("sockets")
    async def sockets(socket: Socket, room: str | None) -> list[list[Any]]:
        records = await server.fetch_sockets(room)
        return sorted([[r.sid, r.node, r.rooms, r.presence] for r in records])

    @server.on("count")
    async def count(socket: Socket, room: str | None) -> int:
        return await server.socket_count(room)

    @server.on("who")
    async def who(socket: Socket, room: str) -> list[list[Any]]:
        members = await server.room(room).presence()
        return sorted([[m.sid, m.node, m.info] for m in members])

    @server.on("tell_servers")
    def tell_servers(socket: Socket, data: Any) -> bool:
        return server.emit_to_servers("note", data)

    @server.on_server_event("note")
    def note(data: Any, node: str) -> None:
        notes.append([node, data])

    @server.on("notes")
    def get_notes(socket: Socket, data: Any) -> list[Any]:
        return notes

    @server.on("slow_count")
    async def slow_count(socket: Socket, seconds: float) -> int:
        await asyncio.sleep(seconds)
        ran[0] += 1
        return ran[0]

    @server.on("nodes")
    def nodes(socket: Socket, data: Any) -> list[str]:
        return server.cluster_nodes()

    return server
