"""Helpers for testing SmartSocket apps (and SmartSocket itself) over real sockets.

    async with running(app) as server:          # listens on 127.0.0.1, a free port
        async with connected(server) as client:  # a connected smartsocket.Client
            assert await client.call("echo", 1) == 1

Mounted in another web server (smartsocket.asgi, smartsocket.integrations.aiohttp):

    async with running_asgi(fastapi_app) as base:    # uvicorn, http://127.0.0.1:PORT
        async with connected(base.replace("http", "ws", 1) + "/ws/") as client: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from smartsocket.client import Client
from smartsocket.server import SmartSocket


@contextlib.asynccontextmanager
async def running(server: SmartSocket | None = None, **options: Any) -> AsyncIterator[SmartSocket]:
    """Run ``server`` (or a new one with ``options``) on 127.0.0.1 and a free port."""
    if server is None:
        server = SmartSocket(**options)
    if not server.started:
        server.config = server.config.replace(host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.close(timeout=2)


@contextlib.asynccontextmanager
async def running_asgi(app: Any, **options: Any) -> AsyncIterator[str]:
    """Serve an ASGI app (e.g. a FastAPI app with ``SmartSocketASGI`` mounted) with uvicorn on
    127.0.0.1 and a free port, in this event loop; yields its ``http://127.0.0.1:PORT`` base
    URL. ``options`` go to ``uvicorn.Config``. Needs uvicorn."""
    import uvicorn

    options.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **options))
    task = asyncio.get_running_loop().create_task(server.serve())
    await wait_for(lambda: server.started or task.done(), 10)
    if task.done():
        task.result()  # raises what start-up raised
        raise RuntimeError("uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def running_aiohttp(app: Any) -> AsyncIterator[str]:
    """Serve an ``aiohttp.web.Application`` on 127.0.0.1 and a free port; yields its
    ``http://127.0.0.1:PORT`` base URL. Start-up and shutdown hooks run as with run_app."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def connected(server: SmartSocket | str, **options: Any) -> AsyncIterator[Client]:
    """A client connected to ``server`` (or a ws:// URL); closed on exit."""
    client = Client(server if isinstance(server, str) else server.url, **options)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


class Recorder:
    """Records events a client (or socket) receives, to await them in order.

        rec = Recorder(client, "chat", "disconnect")
        data = await rec.next("chat")
    """

    def __init__(self, target: Any, *events: str) -> None:
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        for event in events:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self._queues[event] = queue
            target.on(event, _recorder(queue))

    async def next(self, event: str, timeout: float = 5.0) -> Any:
        """The next recorded ``event``'s argument (None when it had none)."""
        return await asyncio.wait_for(self._queues[event].get(), timeout)

    def pending(self, event: str) -> int:
        return self._queues[event].qsize()


def _recorder(queue: asyncio.Queue[Any]) -> Callable[..., None]:
    def record(*args: Any) -> None:
        queue.put_nowait(args[0] if args else None)

    return record


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005
) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
