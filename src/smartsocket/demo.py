"""The demo app ``smartsocket serve`` runs. Its events are a stable contract (README):

- ``echo`` (any data) -> ack with the same data;
- ``join`` ``{"room", "name"?}`` -> ack ``{"room", "members"}``; the room's other members get
  ``presence`` ``{"room", "id", "name", "joined": true}`` (``name``: an optional display name,
  at most 32 characters, kept for the connection);
- ``leave`` ``{"room"}`` -> ack ``{"room"}``; leaving or disconnecting sends ``presence`` with
  ``"joined": false``;
- ``chat`` ``{"room", "text"}`` -> every other member gets ``chat`` ``{"room", "text", "from",
  "name", "timestamp"}``; ack ``{"delivered": n}``; a sender outside the room gets ack error
  ``not_in_room``;
- ``members`` ``{"room"}`` -> ack ``{"room", "members": [{"id", "name"}]}`` (members only);
- ``typing`` ``{"room", "typing": bool}`` -> the other members get ``typing`` ``{"room",
  "from", "name", "typing"}``; ack ``{"delivered": n}`` (members only).

The chat page served at ``/`` (static/index.html, the server's ``home_page``) is built on these
events; only this app serves it.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import msgspec

from smartsocket.config import Config
from smartsocket.errors import AckError
from smartsocket.server import Room, SmartSocket, Socket

MAX_NAME = 32


class RoomRequest(msgspec.Struct):
    room: str


class JoinRequest(msgspec.Struct):
    room: str
    name: str | None = None


class ChatMessage(msgspec.Struct):
    room: str
    text: str


class TypingRequest(msgspec.Struct):
    room: str
    typing: bool = True


def create_app(config: Config | None = None) -> SmartSocket:
    server = SmartSocket(config=config)
    server.home_page = chat_page()

    def person(socket: Socket) -> dict[str, Any]:
        return {"id": socket.id, "name": socket.data.get("name")}

    def member_of(socket: Socket, room: str) -> None:
        if room not in socket.rooms:
            raise AckError("not_in_room", f"join {room!r} first")

    def presence(socket: Socket, room: str, joined: bool) -> None:
        message = {"room": room, **person(socket), "joined": joined}
        server.room(room).broadcast("presence", message, exclude=socket)

    @server.on("echo")
    def echo(socket: Socket, data: Any) -> Any:
        return data

    @server.on("join")
    def join(socket: Socket, data: JoinRequest) -> Any:
        renamed = False
        if data.name is not None:
            name = data.name.strip()[:MAX_NAME] or None
            renamed = name != socket.data.get("name")
            socket.data["name"] = name
        new = data.room not in socket.rooms
        socket.join(data.room)
        if new or renamed:
            presence(socket, data.room, True)
        reply = {"room": data.room, "members": server.room(data.room).socket_count()}
        if server.config.cluster_url:  # ack once broadcasts from other nodes reach us too
            return _when_subscribed(server.room(data.room), reply)
        return reply

    @server.on("leave")
    def leave(socket: Socket, data: RoomRequest) -> dict[str, Any]:
        if data.room in socket.rooms:
            socket.leave(data.room)
            presence(socket, data.room, False)
        return {"room": data.room}

    @server.on("chat")
    def chat(socket: Socket, data: ChatMessage) -> dict[str, Any]:
        if data.room not in socket.rooms:
            raise AckError("not_in_room", f"join {data.room!r} before chatting in it")
        message = {
            "room": data.room,
            "text": data.text,
            "from": socket.id,
            "name": socket.data.get("name"),
            "timestamp": int(time.time() * 1000),
        }
        return {"delivered": server.room(data.room).broadcast("chat", message, exclude=socket)}

    @server.on("members")
    def members(socket: Socket, data: RoomRequest) -> dict[str, Any]:
        member_of(socket, data.room)
        return {"room": data.room, "members": [person(s) for s in server.room(data.room).sockets]}

    @server.on("typing")
    def typing(socket: Socket, data: TypingRequest) -> dict[str, Any]:
        member_of(socket, data.room)
        message = {
            "room": data.room,
            "from": socket.id,
            "name": socket.data.get("name"),
            "typing": data.typing,
        }
        return {"delivered": server.room(data.room).broadcast("typing", message, exclude=socket)}

    @server.on("disconnect")
    def gone(socket: Socket, reason: str) -> None:
        for room in socket.rooms:  # still listed here; the socket already left the rooms
            presence(socket, room, False)

    return server


def chat_page() -> bytes:
    """The demo chat page (static/index.html)."""
    return resources.files("smartsocket").joinpath("static", "index.html").read_bytes()


async def _when_subscribed(room: Room, reply: dict[str, Any]) -> dict[str, Any]:
    await room.subscribed()
    return reply
