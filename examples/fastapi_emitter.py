"""A FastAPI endpoint that publishes to the rooms of a running SmartSocket cluster with the
async emitter: no WebSocket server in this process, only the cluster's broker.

    SMARTSOCKET_CLUSTER_URL=redis://127.0.0.1:6379 python examples/fastapi_emitter.py --port 8000
    curl -X POST localhost:8000/rooms/news/messages -H 'content-type: application/json' \\
         -d '{"text": "deploy at 5"}'

The emitter reads the servers' own settings (``SMARTSOCKET_CLUSTER_URL``,
``SMARTSOCKET_CLUSTER_PREFIX``, ``SMARTSOCKET_RECOVERY_WINDOW``, ...): give this process the
same environment as the servers. Needs ``fastapi``, ``uvicorn`` and ``smartsocket[redis]``
(or ``[nats]``).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from smartsocket import AsyncEmitter, Config, EmitterError

emitter = AsyncEmitter.from_config(Config.from_env())  # connects on first use


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await emitter.close()


app = FastAPI(lifespan=lifespan)


class Message(BaseModel):
    text: str


@app.post("/rooms/{room}/messages", status_code=202)
async def post_message(room: str, message: Message) -> dict[str, str]:
    try:
        await emitter.publish(room, "message", {"room": room, "text": message.text})
    except ValueError as exc:  # a room name the servers would refuse
        raise HTTPException(400, str(exc)) from None
    except EmitterError as exc:  # the broker is unreachable: say so, the client may retry
        raise HTTPException(503, str(exc)) from None
    return {"status": "published"}


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
