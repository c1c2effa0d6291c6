"""The emitter's two front-ends over one core (``emitter/core.py``): ``AsyncEmitter`` (the
cluster's broker adapter fed by one writer task) and ``Emitter`` (an ``AsyncEmitter`` on a
private event loop thread). See the package's doc and docs/emitter.md."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TYPE_CHECKING, Any

from smartsocket.cluster.brokers import BrokerAdapter, create_adapter
from smartsocket.emitter.core import Batch, EmitterCore, Operations
from smartsocket.errors import EmitterError

if TYPE_CHECKING:
    from smartsocket.cluster.brokers.base import Outbound
    from smartsocket.config import Config

__all__ = ["AsyncEmitter", "Emitter"]

_MAX_BATCH = 1000  # messages per pipeline
# Plain Redis: the adapter sends runs of consecutive messages as one script call
# (``PUBLISH_MANY``, cluster/brokers/runs.py), as it does for a node's own queue.


def _options(config: Config) -> dict[str, Any]:
    if not config.cluster_url:
        raise ValueError("the config has no cluster_url")
    return {
        "url": config.cluster_url, "prefix": config.cluster_prefix,
        "recovery_window": config.recovery_window, "history_size": config.history_size,
        "history_ttl": config.history_ttl, "max_name_length": config.max_name_length,
    }


class AsyncEmitter(Operations[Awaitable[None]]):
    """``await emitter.publish(room, event, data)`` and the other operations, from asyncio.

    ``url`` takes the forms of the server's ``cluster_url`` (Redis, Redis Cluster with
    ``?cluster=1``, NATS); ``prefix``, ``recovery_window``, ``history_size``, ``history_ttl``
    and ``max_name_length`` must match the servers' (``AsyncEmitter.from_config(config)``
    takes them from a server ``Config``). Connects on first use, or ``await connect()``;
    ``await close()`` (or ``async with``) when done. Bound to the event loop of first use.
    """

    def __init__(
        self, url: str, *, prefix: str = "smartsocket", recovery_window: float = 0.0,
        history_size: int = 100, history_ttl: float = 0.0, max_name_length: int = 128,
        timeout: float = 5.0,
    ) -> None:
        if recovery_window and url.partition("://")[0].lower() not in ("redis", "rediss",
                                                                        "unix"):
            raise ValueError("recovery (recovery_window) in a cluster needs Redis")
        self._core = EmitterCore.for_url(
            url, prefix=prefix, recovery_window=recovery_window, history_size=history_size,
            history_ttl=history_ttl, max_name_length=max_name_length,
        )
        adapter = create_adapter(url)  # raises MissingDependency without the extra
        if not isinstance(adapter, BrokerAdapter):
            raise ValueError(f"an emitter needs a network broker (redis://, nats://), not {url}")
        self._adapter = adapter
        self.timeout = timeout
        self._pending: deque[tuple[list[Outbound], asyncio.Future[None]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._up: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0  # messages the broker took

    @classmethod
    def from_config(cls, config: Config, *, timeout: float = 5.0) -> AsyncEmitter:
        """An emitter for the cluster of servers started with ``config``."""
        return cls(**_options(config), timeout=timeout)

    @property
    def connected(self) -> bool:
        return self._adapter.connected

    def _emit(self, item: Outbound) -> Awaitable[None]:
        return self.send_items([item])

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        """``async with emitter.batch() as batch: batch.publish(...)``: sent at the end."""
        batch = Batch(self._core)
        yield batch
        await self.send_items(batch.items)

    async def connect(self) -> None:
        """Connect now (else on first use); raises EmitterError if the broker cannot be
        reached within ``timeout`` (it keeps trying in the background)."""
        if self._closed:
            raise EmitterError("the emitter is closed")
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._starting)
        await self._wait_up()

    async def _start(self) -> None:
        self._wakeup, self._up = asyncio.Event(), asyncio.Event()
        up = self._up

        def state(connected: bool) -> None:
            if connected:
                up.set()
            else:
                up.clear()

        await self._adapter.start(_ignore, state)
        self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _wait_up(self) -> None:
        assert self._up is not None
        if self._up.is_set():
            return
        try:
            await asyncio.wait_for(self._up.wait(), self.timeout)
        except TimeoutError:
            error = self._adapter.last_error or "no answer"
            raise EmitterError(
                f"the {self._adapter.name} broker is unreachable ({error})"
            ) from None

    async def send_items(self, items: list[Outbound]) -> None:
        """Send what the core built (``Batch.items``), in order, in pipelines."""
        if not items:
            return
        if self._writer is None:
            await self.connect()
        if self._closed:
            raise EmitterError("the emitter is closed")
        assert self._wakeup is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        self._wakeup.set()
        await future

    async def _write(self) -> None:
        """One writer: what callers emitted meanwhile goes out together, in their order."""
        assert self._wakeup is not None
        pending = self._pending
        while True:
            if not pending:
                if self._closed:
                    return  # close(): everything emitted before it went out
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[Outbound] = []
            futures: list[asyncio.Future[None]] = []
            while pending and (not batch or len(batch) + len(pending[0][0]) <= _MAX_BATCH):
                items, future = pending.popleft()
                batch.extend(items)
                futures.append(future)
            try:
                for start in range(0, len(batch), _MAX_BATCH):  # a big Batch: in slices
                    await self._wait_up()
                    await asyncio.wait_for(
                        self._adapter.send_now(batch[start:start + _MAX_BATCH]),
                        self.timeout,
                    )
            except asyncio.CancelledError:  # close() gave up waiting: no caller waits forever
                _fail(futures, EmitterError("the emitter was closed while sending"))
                raise
            except Exception as exc:
                _fail(futures, exc if isinstance(exc, EmitterError) else EmitterError(
                    f"publishing to the {self._adapter.name} broker failed "
                    f"({type(exc).__name__}: {exc})"
                ))
                continue
            self.sent += len(batch)
            for future in futures:
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        """Send what was emitted before (waiting up to ``timeout`` for it), then disconnect."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(writer), self.timeout)
            except TimeoutError:
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        _fail([future for _, future in self._pending], EmitterError("the emitter is closed"))
        self._pending.clear()
        await self._adapter.close()

    async def __aenter__(self) -> AsyncEmitter:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _ignore(channel: str, data: bytes) -> None:
    pass


def _fail(futures: list[asyncio.Future[None]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The sync emitter's thread: its loop, closed when stopped."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


# Sync emitters whose thread runs: closed at exit, so that a script that never calls close()
# ends quietly (a daemon thread killed mid-loop prints "Task was destroyed but it is pending").
_open: weakref.WeakSet[Emitter] = weakref.WeakSet()


@atexit.register
def _close_open_emitters() -> None:
    for emitter in list(_open):
        with contextlib.suppress(Exception):  # the broker's fault: nothing to do at exit
            emitter.close()


class Emitter(Operations[None]):
    """``emitter.publish(room, event, data)`` and the other operations, blocking until the
    broker took the message. Options as for ``AsyncEmitter``. Thread-safe: one emitter per
    process is enough (create it at import time; it connects on first use, and again in a
    forked child). ``close()`` (or ``with``) when done; an emitter left open is closed when
    the interpreter exits (what was emitted goes out, waiting up to ``timeout``).
    """

    def __init__(self, url: str, **options: Any) -> None:
        AsyncEmitter(url, **options)  # check the options and the extra now, in the caller
        self._url = url
        self._options = options
        self._core = EmitterCore.for_url(
            url, **{k: v for k, v in options.items() if k != "timeout"}
        )
        self._lock = threading.Lock()
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async: AsyncEmitter | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: Config, *, timeout: float = 5.0) -> Emitter:
        options = _options(config)
        return cls(options.pop("url"), **options, timeout=timeout)

    def _emit(self, item: Outbound) -> None:
        self.send_items([item])

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """``with emitter.batch() as batch: batch.publish(...)``: sent at the end, in one
        pipeline (the way to many messages per second from one thread)."""
        batch = Batch(self._core)
        yield batch
        self.send_items(batch.items)

    def connect(self) -> None:
        """Connect now (else on first use); raises EmitterError if the broker cannot be
        reached within ``timeout``."""
        emitter, loop = self._emitter()
        asyncio.run_coroutine_threadsafe(emitter.connect(), loop).result()

    def send_items(self, items: list[Outbound]) -> None:
        """Send what the core built (``Batch.items``), in order; blocks until sent."""
        if items:
            emitter, loop = self._emitter()
            asyncio.run_coroutine_threadsafe(emitter.send_items(items), loop).result()

    def _emitter(self) -> tuple[AsyncEmitter, asyncio.AbstractEventLoop]:
        if self._closed:
            raise EmitterError("the emitter is closed")
        with self._lock:
            if self._async is None or self._pid != os.getpid():
                # First use, or a forked child: the parent's thread and sockets are not ours.
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=_run_loop, args=(loop,), name="smartsocket-emitter", daemon=True
                )
                self._thread.start()
                self._loop, self._pid = loop, os.getpid()
                self._async = AsyncEmitter(self._url, **self._options)
                _open.add(self)
            assert self._loop is not None
            return self._async, self._loop

    def close(self) -> None:
        """Send what is pending, disconnect, stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            emitter, loop = self._async, self._loop
            self._async = self._loop = None
            _open.discard(self)
        if emitter is None or loop is None or self._pid != os.getpid():
            return
        try:
            asyncio.run_coroutine_threadsafe(emitter.close(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
