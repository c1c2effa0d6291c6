"""The demo app ``smartsocket serve`` runs. Its events are a stable contract (README):

- ``echo`` (any data) -> ack with the same data;
- ``join`` ``{"room"}`` -> ack ``{"room", "members"}``; ``leave`` ``{"room"}`` -> ack ``{"room"}``;
- ``chat`` ``{"room", "text"}`` -> every other member gets ``chat`` ``{"room", "text", "from",
  "timestamp"}``; ack ``{"delivered": n}``; a sender outside the room gets ack error
  ``not_in_room``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from smartsocket.config import Config
from smartsocket.errors import AckError
from smartsocket.server import SmartSocket, Socket


class RoomRequest(msgspec.Struct):
    room: str


class ChatMessage(msgspec.Struct):
    room: str
    text: str


def create_app(config: Config | None = None) -> SmartSocket:
    server = SmartSocket(config=config)

    @server.on("echo")
    def echo(socket: Socket, data: Any) -> Any:
        return data

    @server.on("join")
    def join(socket: Socket, data: RoomRequest) -> dict[str, Any]:
        socket.join(data.room)
        return {"room": data.room, "members": server.room(data.room).socket_count()}

    @server.on("leave")
    def leave(socket: Socket, data: RoomRequest) -> dict[str, Any]:
        socket.leave(data.room)
        return {"room": data.room}

    @server.on("chat")
    def chat(socket: Socket, data: ChatMessage) -> dict[str, Any]:
        if data.room not in socket.rooms:
            raise AckError("not_in_room", f"join {data.room!r} before chatting in it")
        message = {
            "room": data.room,
            "text": data.text,
            "from": socket.id,
            "timestamp": int(time.time() * 1000),
        }
        delivered = server.room(data.room).broadcast("chat", message, exclude=socket)
        return {"delivered": delivered}

    return server
