"""python-socketio peer: AsyncServer on aiohttp + uvloop, websocket transport only.

Same demo app as every other peer:

* ``echo`` (any data)              -> ack with the same data
* ``join`` ``{"room": r}``         -> enter room r, ack ``{"room": r, "members": n}``
* ``chat`` ``{"room": r, "text"}`` -> emit ``chat`` ``{"room", "text", "from", "timestamp"}``
  to every other member of r (``skip_sid`` = sender), ack ``{"delivered": n}``

Defaults of python-socketio are kept (stdlib json, no message queue, default
ping interval); only the transport is restricted to websocket.

Compression: python-socketio has no websocket compression switch of its own
(``http_compression`` / ``compression_threshold`` apply to long-polling only).
Its aiohttp driver creates ``aiohttp.web.WebSocketResponse()`` with aiohttp's
default ``compress=True``, so permessage-deflate is negotiated whenever the
client offers it: each connection gets its own compressor with context takeover
and every message is compressed, whatever its size.  The bench's fanout-deflate
workload (the generator offers permessage-deflate) therefore runs this same
script unchanged; the other workloads offer nothing and run uncompressed.

Usage: python bench/peers/socketio_server.py --port P [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from typing import Any

import socketio
from aiohttp import web

sio = socketio.AsyncServer(
    async_mode="aiohttp", transports=["websocket"], cors_allowed_origins=None
)
app = web.Application()
sio.attach(app)

# room -> member sids (kept here so the member count is O(1) and identical in
# meaning to the other peers)
rooms: dict[str, set[str]] = {}
sid_rooms: dict[str, set[str]] = {}


@sio.event
async def connect(sid: str, environ: dict, auth: Any = None) -> None:
    sid_rooms[sid] = set()


@sio.event
async def disconnect(sid: str, *args: Any) -> None:
    for room in sid_rooms.pop(sid, ()):
        members = rooms.get(room)
        if members is not None:
            members.discard(sid)
            if not members:
                del rooms[room]


@sio.event
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.event
async def join(sid: str, data: Any) -> Any:
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str):
        return {"error": "join needs {room: str}"}
    await sio.enter_room(sid, room)
    members = rooms.setdefault(room, set())
    members.add(sid)
    sid_rooms.setdefault(sid, set()).add(room)
    return {"room": room, "members": len(members)}


@sio.event
async def chat(sid: str, data: Any) -> Any:
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("room"), str)
        or not isinstance(data.get("text"), str)
    ):
        return {"error": "chat needs {room, text}"}
    room = data["room"]
    msg = {"room": room, "text": data["text"], "from": sid, "timestamp": int(time.time() * 1000)}
    await sio.emit("chat", msg, room=room, skip_sid=sid)
    members = rooms.get(room, ())
    return {"delivered": len(members) - (1 if sid in members else 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--max-lifetime", type=float, default=3600.0, help="exit after this many seconds"
    )
    args = ap.parse_args()
    # safety net: the bench tool kills us long before this
    timer = threading.Timer(args.max_lifetime, lambda: os._exit(0))
    timer.daemon = True
    timer.start()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    print(f"python-socketio listening on {args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
