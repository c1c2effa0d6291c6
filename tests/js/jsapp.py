"""Apps for the JS client tests, run with ``smartsocket serve --app jsapp:<factory>`` from tests/js.

``chat_app``: the demo app (``smartsocket.demo.create_app``: echo/join/leave/chat/members/typing).

``readme_page``: the demo app whose page at ``/`` is the README's browser snippet (the html block
marked ``<!-- doc-test: browser ... -->``), for tests/browser/readme.test.mjs.

``minimal_app``: the demo app without ``members`` and ``typing``, for the page's fallbacks.

``create``: the demo app plus events for client tests:

- ``ask`` ``{"event", "data", "timeout"?}``: the server calls ``event`` on the asking client and
  acks ``{"result": reply}`` or ``{"error": {"code", "message"}}``;
- ``record`` (any data): appended to a list; ``records``: acks that list (arrival order);
- ``sleep`` (seconds): acks the same number after that long;
- ``kick`` (close code): the server disconnects the sender with that code.

``socketio_app``: ``create`` plus, for Socket.IO clients (tests/js/socketio.test.mjs):
``move`` (several arguments: answers them swapped), ``blob`` (answers ``{"got": data, "extra":
bytes}``), ``shout`` (``{"room", "text"}``: broadcasts ``shouted`` to the room, sender
included); the namespace ``/admin`` with its own ``who`` (answers ``["admin", socket id]``).

``socketio_page``: ``socketio_app`` whose page at ``/`` holds socket.io-client's browser bundle
(from js/node_modules), for tests/browser/socketio.test.mjs.

For recovery (``--recovery-window``, protocol.md section 8):

- ``enter`` (room name): joins that room (no presence message, unlike ``join``);
- ``stream`` ``{"room", "count", "delay"?, "direct"?}``: from the server side, broadcasts
  ``["tick", n]`` to the room for n = 1..count, ``delay`` seconds apart (0.01 by default), and
  with ``direct`` also sends ``["dm", n]`` to the sender by id (reaching a held session too);
- ``abort`` (null or ``{"room", "count"}``): cuts the sender's TCP connection without a close
  frame (a lost network); then broadcasts ``count`` ticks to ``room`` at once (missed by it);
- ``tally`` ``{"name", "delay"?, "abort"?}``: counts a run under ``name``, optionally cuts the
  connection (its reply is lost), waits ``delay`` seconds, acks the count; ``tallies``: acks
  every count.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from smartsocket import AckError, AckTimeout, Config, SmartSocket, Socket
from smartsocket.demo import create_app

chat_app = create_app


def readme_page(config: Config | None = None) -> SmartSocket:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- doc-test: browser .*?-->\n```html\n(.*?)^```$", readme, re.M | re.S)
    if block is None:
        raise LookupError("README.md has no html block marked <!-- doc-test: browser -->")
    server = create_app(config)
    page = '<!doctype html>\n<meta charset="utf-8"><title>README snippet</title>\n'
    server.home_page = (page + block.group(1)).encode()
    return server


def minimal_app(config: Config | None = None) -> SmartSocket:
    """Only echo/join/leave/chat (an older or custom server): the chat page's fallbacks."""
    server = create_app(config)
    for event in ("members", "typing"):
        del server._router.handlers[event]
    return server


def create(config: Config | None = None) -> SmartSocket:
    server = create_app(config)
    records: list[Any] = []

    @server.on("ask")
    async def ask(socket: Socket, data: dict[str, Any]) -> Any:
        try:
            result = await socket.call(
                data["event"], data.get("data"), timeout=data.get("timeout", 2.0)
            )
        except AckTimeout:
            return {"error": {"code": "timeout", "message": "no reply"}}
        except AckError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        return {"result": result}

    @server.on("record")
    def record(socket: Socket, data: Any) -> None:
        records.append(data)

    @server.on("records")
    def get_records(socket: Socket, data: Any) -> list[Any]:
        return records

    @server.on("sleep")
    async def sleep(socket: Socket, data: float) -> float:
        await asyncio.sleep(data)
        return data

    @server.on("kick")
    def kick(socket: Socket, data: int) -> None:
        socket.disconnect(data, "kicked by the test")

    tallies: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    @server.on("enter")
    def enter(socket: Socket, room: str) -> str:
        socket.join(room)
        return room

    @server.on("stream")
    def stream(socket: Socket, data: dict[str, Any]) -> None:
        sid, room = socket.id, server.room(data["room"])

        async def run() -> None:
            for n in range(1, data["count"] + 1):
                room.broadcast("tick", n)
                if data.get("direct"):
                    server.send(sid, "dm", n)
                await asyncio.sleep(data.get("delay", 0.01))

        task = asyncio.get_running_loop().create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @server.on("abort")
    def abort(socket: Socket, data: Any) -> None:
        if socket._conn is not None:
            socket._conn.abort()
        if data:
            for n in range(1, data["count"] + 1):
                server.room(data["room"]).broadcast("tick", n)

    @server.on("tally")
    async def tally(socket: Socket, data: dict[str, Any]) -> int:
        name = data["name"]
        tallies[name] = tallies.get(name, 0) + 1
        if data.get("abort") and socket._conn is not None:
            socket._conn.abort()
        await asyncio.sleep(data.get("delay", 0))
        return tallies[name]

    @server.on("tallies")
    def get_tallies(socket: Socket, data: Any) -> dict[str, int]:
        return tallies

    return server


class _TokenClock:
    """The JWT app's clock (Unix seconds), moved by the ``advance`` event."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def create_jwt(config: Config | None = None) -> SmartSocket:
    """For tests/js/tokens.test.mjs: JWT connection tokens (``--jwt-secret``) on a clock the
    test drives. ``advance`` (seconds): moves the clock, closes the sockets whose token
    expired (4003) and acks how many; ``whoami``: ``socket.user``; ``push``
    ``{"user", "n"}``: sends ``["tick", n]`` to that user's sockets; ``note`` (any data):
    appended to the sender's user's list; ``notes`` (user): acks that list (arrival order)."""
    server = SmartSocket(config=config)
    clock = _TokenClock()
    server._access.token_clock = clock

    def advance(socket: Socket, seconds: float) -> int:
        clock.now += seconds
        return server.expire_tokens()

    def push(socket: Socket, data: dict[str, Any]) -> int:
        targets = [s for s in server.sockets.values() if s.user == data["user"]]
        for target in targets:
            target.send("tick", data["n"])
        return len(targets)

    notes: dict[str, list[Any]] = {}

    def note(socket: Socket, data: Any) -> None:
        notes.setdefault(socket.user or "", []).append(data)

    server.on("advance", advance)
    server.on("note", note)
    server.on("notes", lambda socket, user: notes.get(user, []))
    server.on("now", lambda socket: clock.now)
    server.on("whoami", lambda socket: socket.user)
    server.on("push", push)
    return server


def socketio_app(config: Config | None = None) -> SmartSocket:
    server = create(config)

    @server.on("move")
    def move(socket: Socket, data: Any) -> Any:
        return tuple(reversed(data)) if isinstance(data, tuple) else data

    @server.on("blob")
    def blob(socket: Socket, data: Any) -> Any:
        return {"got": data, "extra": b"\x00\xff"}

    @server.on("shout")
    def shout(socket: Socket, data: dict[str, Any]) -> int:
        return server.room(data["room"]).broadcast("shouted", data["text"])

    admin = server.namespace("/admin")
    admin.on("who", lambda socket, data: ("admin", socket.id))
    return server


def socketio_page(config: Config | None = None) -> SmartSocket:
    server = socketio_app(config)
    root = Path(__file__).resolve().parents[2]
    bundle = (root / "js/node_modules/socket.io-client/dist/socket.io.min.js").read_text()
    bundle = bundle.replace("</script", "<\\/script")  # cannot end the inline script early
    page = '<!doctype html>\n<meta charset="utf-8"><title>socket.io-client</title>\n'
    server.home_page = (page + "<script>" + bundle + "</script>\n").encode()
    return server
