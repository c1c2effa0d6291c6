"""A chat server: named rooms, nicknames, recent history, join/leave notices.

    python examples/chat/server.py --port 8080
    # or, configured by the usual flags and env vars:
    smartsocket serve --app server:create_server        (from this folder)

Events (client -> server, all answered with an ack):

- ``join`` ``{"room", "name"}`` -> ``{"room", "members": [names], "history": [messages]}``;
  the others in the room get ``joined`` ``{"room", "name"}``.
- ``say`` ``{"text"}`` -> ``{"delivered": n}``; the others get ``message``
  ``{"room", "name", "text", "timestamp"}``.
- on disconnect the room gets ``left`` ``{"room", "name"}``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict, deque
from typing import Any

import msgspec

from smartsocket import AckError, Config, SmartSocket, Socket

HISTORY = 20  # messages kept per room


class Join(msgspec.Struct):
    room: str
    name: str


class Say(msgspec.Struct):
    text: str


def create_server(config: Config | None = None) -> SmartSocket:
    server = SmartSocket(config=config)
    history: dict[str, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=HISTORY))

    def names(room: str) -> list[str]:
        return sorted(s.data["name"] for s in server.room(room).sockets)

    @server.on("join")
    def join(socket: Socket, data: Join) -> dict[str, Any]:
        name = data.name.strip()[:32]
        if not name:
            raise AckError("bad_name", "pick a name")
        previous = socket.data.get("room")
        if previous is not None:
            socket.leave(previous)
            server.room(previous).broadcast("left", {"room": previous, "name": name})
        socket.data.update(name=name, room=data.room)
        socket.join(data.room)
        server.room(data.room).broadcast(
            "joined", {"room": data.room, "name": name}, exclude=socket
        )
        return {"room": data.room, "members": names(data.room),
                "history": list(history[data.room])}

    @server.on("say")
    def say(socket: Socket, data: Say) -> dict[str, int]:
        room = socket.data.get("room")
        if room is None:
            raise AckError("not_in_room", "join a room first")
        message = {"room": room, "name": socket.data["name"], "text": data.text[:2000],
                   "timestamp": int(time.time() * 1000)}
        history[room].append(message)
        return {"delivered": server.room(room).broadcast("message", message, exclude=socket)}

    @server.on("disconnect")
    def gone(socket: Socket, reason: str) -> None:
        room = socket.data.get("room")
        if room is not None:
            server.room(room).broadcast("left", {"room": room, "name": socket.data["name"]})
            if not server.room(room).socket_count():
                history.pop(room, None)

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    server = create_server(Config.from_env(**overrides))
    server.listen(lambda: print(f"chat server listening on {server.url}", flush=True))


if __name__ == "__main__":
    main()
