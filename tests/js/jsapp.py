"""Apps for the JS client tests, run with ``smartsocket serve --app jsapp:<factory>`` from tests/js.

``chat_app``: the demo app (``smartsocket.demo.create_app``: echo/join/leave/chat/members/typing).

``minimal_app``: the demo app without ``members`` and ``typing``, for the page's fallbacks.

``create``: the demo app plus events for client tests:

- ``ask`` ``{"event", "data", "timeout"?}``: the server calls ``event`` on the asking client and
  acks ``{"result": reply}`` or ``{"error": {"code", "message"}}``;
- ``record`` (any data): appended to a list; ``records``: acks that list (arrival order);
- ``sleep`` (seconds): acks the same number after that long;
- ``kick`` (close code): the server disconnects the sender with that code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from smartsocket import AckError, AckTimeout, Config, SmartSocket, Socket
from smartsocket.demo import create_app

chat_app = create_app


def minimal_app(config: Config | None = None) -> SmartSocket:
    """Only echo/join/leave/chat (an older or custom server): the chat page's fallbacks."""
    server = create_app(config)
    for event in ("members", "typing"):
        del server._handlers[event]
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

    return server
