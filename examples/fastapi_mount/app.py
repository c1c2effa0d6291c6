"""SmartSocket mounted in a FastAPI app: one port, ordinary HTTP routes next to the real-time
endpoint, and HTTP handlers that push to WebSocket clients.

    pip install fastapi uvicorn
    uvicorn app:app --port 8000                 (from this folder)
    python examples/fastapi_mount/app.py --port 8000

- ``ws://localhost:8000/ws/``: SmartSocket (the demo events: echo, join, leave, chat);
  ``/ws/smartsocket/health`` and ``/ws/smartsocket/stats`` come with it.
- ``GET /api/rooms``: rooms and their sizes, read from the same ``SmartSocket`` object.
- ``POST /api/rooms/{room}/announce`` ``{"text": ...}``: every member of the room gets an
  ``announcement`` event.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI
from pydantic import BaseModel

from smartsocket.asgi import SmartSocketASGI
from smartsocket.demo import create_app

realtime = create_app()  # a SmartSocket: add handlers with @realtime.on(...) as usual
mount = SmartSocketASGI(realtime)
app = FastAPI(lifespan=mount.lifespan)  # starts the heartbeat; shutdown closes clients (1001)


class Announcement(BaseModel):
    text: str


@app.get("/api/rooms")
def rooms() -> dict[str, int]:
    return {name: room.socket_count() for name, room in realtime.rooms.items()}


@app.post("/api/rooms/{room}/announce")
def announce(room: str, body: Announcement) -> dict[str, int]:
    delivered = realtime.room(room).broadcast("announcement", {"room": room, "text": body.text})
    return {"delivered": delivered}


app.mount("/ws", mount)  # after the routes: a mount at /ws only takes /ws/...


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
