"""picows-raw peer: a minimal raw picows server speaking the SmartSocket v1 wire format.

This is the "transport ceiling" reference for the benchmarks: no framework, just
picows + msgspec.  Semantics are the same as the other peers:

* on connect: ``["$welcome", {"sid": ..., "pingInterval": ms}]``; every
  ``pingInterval`` the server sends ``["$ping", n]`` (clients answer ``["$pong", n]``)
* ``["echo", data, id]``            -> ``[id, data]``
* ``["join", {"room": r}, id]``     -> ``[id, {"room": r, "members": n}]``
* ``["chat", {"room": r, "text": t}, id]`` -> every other member of ``r`` gets
  ``["chat", {"room", "text", "from", "timestamp"}]`` (encoded once, one
  ``transport.send`` per delivery), sender gets ``[id, {"delivered": n}]``
* unknown event / bad request with an id -> ``[id, null, {"code", "message"}]``

Usage: python bench/peers/picows_server.py --port P [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

import msgspec
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

SUBPROTOCOL = "smartsocket.v1"
PING_INTERVAL_S = 25.0

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_sid_counter = itertools.count(1)

rooms: dict[str, dict[str, WSTransport]] = {}
connections: dict[str, Conn] = {}


def _error(msg_id: int, code: str, message: str) -> bytes:
    return _encode([msg_id, None, {"code": code, "message": message}])


class Conn(WSListener):
    __slots__ = ("rooms", "sid", "transport")

    def __init__(self) -> None:
        self.sid = f"c{next(_sid_counter)}"
        self.transport: WSTransport | None = None
        self.rooms: set[str] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        connections[self.sid] = self
        transport.send(
            WSMsgType.TEXT,
            _encode(["$welcome", {"sid": self.sid, "pingInterval": int(PING_INTERVAL_S * 1000)}]),
        )

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        connections.pop(self.sid, None)
        for room in self.rooms:
            members = rooms.get(room)
            if members is not None:
                members.pop(self.sid, None)
                if not members:
                    del rooms[room]
        self.rooms.clear()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if mt is not WSMsgType.TEXT:
            return  # pings are answered by picows itself (enable_auto_pong)
        try:
            msg = _decode(frame.get_payload_as_memoryview())
        except msgspec.DecodeError:
            transport.send_close()
            transport.disconnect()
            return
        if type(msg) is not list or not msg or type(msg[0]) is not str:
            return
        name = msg[0]
        data = msg[1] if len(msg) > 1 else None
        msg_id = msg[2] if len(msg) > 2 else None
        if name == "echo":
            if msg_id is not None:
                transport.send(WSMsgType.TEXT, _encode([msg_id, data]))
        elif name == "chat":
            self.on_chat(transport, data, msg_id)
        elif name == "join":
            self.on_join(transport, data, msg_id)
        elif name == "$pong":
            pass
        elif msg_id is not None:
            transport.send(
                WSMsgType.TEXT, _error(msg_id, "unknown_event", f"no handler for {name!r}")
            )

    def on_join(self, transport: WSTransport, data: Any, msg_id: Any) -> None:
        room = data.get("room") if type(data) is dict else None
        if type(room) is not str:
            if msg_id is not None:
                transport.send(
                    WSMsgType.TEXT, _error(msg_id, "bad_request", "join needs {room: str}")
                )
            return
        members = rooms.setdefault(room, {})
        members[self.sid] = transport
        self.rooms.add(room)
        if msg_id is not None:
            transport.send(
                WSMsgType.TEXT, _encode([msg_id, {"room": room, "members": len(members)}])
            )

    def on_chat(self, transport: WSTransport, data: Any, msg_id: Any) -> None:
        room = data.get("room") if type(data) is dict else None
        text = data.get("text") if type(data) is dict else None
        if type(room) is not str or type(text) is not str:
            if msg_id is not None:
                transport.send(
                    WSMsgType.TEXT, _error(msg_id, "bad_request", "chat needs {room, text}")
                )
            return
        members = rooms.get(room, {})
        payload = _encode(
            [
                "chat",
                {
                    "room": room,
                    "text": text,
                    "from": self.sid,
                    "timestamp": int(time.time() * 1000),
                },
            ]
        )
        delivered = 0
        send = WSMsgType.TEXT
        for sid, member in members.items():
            if sid == self.sid:
                continue
            member.send(send, payload)
            delivered += 1
        if msg_id is not None:
            transport.send(WSMsgType.TEXT, _encode([msg_id, {"delivered": delivered}]))


def listener_factory(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener | None:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    protocols = [p.strip() for p in offered.split(",") if p.strip()]
    headers = {"Sec-WebSocket-Protocol": SUBPROTOCOL} if SUBPROTOCOL in protocols else None
    return WSUpgradeResponseWithListener(
        WSUpgradeResponse.create_101_response(extra_headers=headers), Conn()
    )


async def pinger() -> None:
    n = 0
    while True:
        await asyncio.sleep(PING_INTERVAL_S)
        n += 1
        payload = _encode(["$ping", n])
        for conn in list(connections.values()):
            if conn.transport is not None:
                conn.transport.send(WSMsgType.TEXT, payload)


async def main(host: str, port: int, max_lifetime: float) -> None:
    server = await ws_create_server(listener_factory, host, port)
    ping_task = asyncio.create_task(pinger())
    print(f"picows-raw listening on {host}:{port}", flush=True)
    try:
        # safety net: the bench tool kills us long before this
        await asyncio.wait_for(server.serve_forever(), max_lifetime)
    except TimeoutError:
        print("max lifetime reached, exiting", flush=True)
    finally:
        ping_task.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--max-lifetime", type=float, default=3600.0, help="exit after this many seconds"
    )
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.host, args.port, args.max_lifetime))
    except ImportError:  # pragma: no cover
        asyncio.run(main(args.host, args.port, args.max_lifetime))
    except KeyboardInterrupt:
        pass
