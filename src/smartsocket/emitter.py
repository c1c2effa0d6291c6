"""Publish to a running cluster from any process, without running a server: ``Emitter``
(synchronous: Django, Flask, Celery, scripts) and ``AsyncEmitter`` (asyncio apps).

The emitter speaks the cluster's own protocol on its broker (``cluster/messages.py``, format v2,
the channels of ``cluster/node.py``), so the nodes cannot tell its messages from another
node's: a room message reaches the members on every node; with recovery on, Redis logs it and
gives it its position with the same script the nodes use (``cluster/sessions.LOG``), so clients
resume across it; a direct message to a dropped session waits for its resume like any other.

One encoding core, two transports:

``EmitterCore``     the channel and the bytes of each operation (no I/O, no event loop)
``Operations``      the six methods, written once over ``_emit`` (what a front-end does with
                    the core's output): ``AsyncEmitter`` awaits it, ``Emitter`` blocks on it,
                    ``Batch`` collects it
``AsyncEmitter``    the cluster's own broker adapter (``cluster/brokers``: reconnects with
                    backoff, Redis Cluster slots and redirections, scripts, pipelines) fed by
                    one writer task: what concurrent callers emit goes out in one pipeline
``Emitter``         an ``AsyncEmitter`` on a private event loop thread (nats-py has no
                    synchronous client, and one transport means one behaviour); made on first
                    use, and again in a forked child (gunicorn ``--preload``, Celery prefork)

A call returns once the broker took the message (Redis answered the pipeline; NATS: the
client's buffer, flushed at ``close()``), and raises ``EmitterError`` when the broker cannot
be reached within ``timeout``. Delivery to sockets is not confirmed: the channel is one-way.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from smartsocket.cluster import messages as m
from smartsocket.cluster.brokers import BrokerAdapter, create_adapter
from smartsocket.cluster.brokers.redis_cluster import is_cluster_url
from smartsocket.cluster.brokers.scripts import Script, ScriptCall
from smartsocket.cluster.node import channel_token
from smartsocket.cluster.operations import node_of
from smartsocket.cluster.sessions import LOG, BrokerRecovery  # the one tie to recovery
from smartsocket.errors import EmitterError
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.names import check_event, name_problem

if TYPE_CHECKING:
    from smartsocket.cluster.brokers.base import Outbound
    from smartsocket.config import Config

__all__ = ["AsyncEmitter", "Batch", "Emitter", "EmitterCore", "EmitterError"]

R = TypeVar("R")
_pack = msgspec.msgpack.Encoder().encode
_MAX_BATCH = 1000  # messages per pipeline
_RUN = 256  # messages per PUBLISH_MANY call

# Plain Redis: consecutive messages as one command. redis-py packs, sends and reads each entry
# of a pipeline in Python (~15 us per PUBLISH measured here: the emitter's bound); one EVALSHA
# carrying many messages, packed by msgspec as one argument, costs a fraction of that per
# message (bench/emitter.py). ARGV: MessagePack [channel, message, channel, message, ...], the
# incarnation (ignored).
PUBLISH_MANY = Script("""
local run = cmsgpack.unpack(ARGV[1])
for i = 1, #run, 2 do
  redis.call('PUBLISH', run[i], run[i + 1])
end
return 1
""")


class EmitterCore:
    """The channel and the bytes of each operation, as a node would publish them."""

    __slots__ = ("checked", "expire_ms", "history_size", "max_name_length", "prefix",
                 "publish_command", "recovery", "src")

    def __init__(
        self, *, prefix: str = "smartsocket", recovery_window: float = 0.0,
        history_size: int = 100, history_ttl: float = 0.0, max_name_length: int = 128,
        sharded: bool = False,
    ) -> None:
        self.prefix = prefix
        # The sender id of the envelopes: nodes never take it for one of their own; replies
        # to join/leave/disconnect go to an inbox nobody reads.
        self.src = "emitter-" + secrets.token_urlsafe(6).replace(".", "_")
        self.max_name_length = max_name_length
        # Recovery on Redis: room messages are logged like the nodes log them (same script,
        # same arguments, so the server's recovery_window / history_* must be given here).
        self.recovery = recovery_window > 0
        self.history_size = history_size
        window_ms = round(recovery_window * 1000)
        self.expire_ms = window_ms + round((history_ttl or recovery_window) * 1000)
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"
        # Event and room names checked already, with their channel ("" for events): the same
        # few names come again and again (bounded: cleared when full).
        self.checked: dict[tuple[str, str], str] = {}

    @classmethod
    def for_url(cls, url: str, **options: Any) -> EmitterCore:
        return cls(sharded=is_cluster_url(url), **options)

    # channels (cluster/node.py)

    def room_channel(self, room: str) -> str:
        """The room's channel, once its name passed the servers' rule."""
        key = ("room", room)
        channel = self.checked.get(key)
        if channel is None:
            problem = name_problem("room", room, self.max_name_length)
            if problem is not None:
                raise ValueError(f"{problem}: {room!r}")
            channel = self._remember(key, f"{self.prefix}.room.{channel_token(room)}")
        return channel

    def inbox(self, sid: str) -> str:
        node = node_of(sid)
        if node is None:
            raise ValueError(f"not a cluster socket id (<node>.<id>): {sid!r}")
        return f"{self.prefix}.node.{node}"

    # operations

    def publish(self, room: str, event: str, data: Any, exclude: str | Iterable[str] | None
                ) -> Outbound:
        channel = self.room_channel(room)
        payload, binary = self._event(event, data)
        ids = [exclude] if isinstance(exclude, str) else list(exclude or ())
        body = self._encode(m.Broadcast(room, payload, binary, exclude=ids))
        if not self.recovery:
            return channel, body
        # BrokerRecovery.publish_room's call: positioned and kept by Redis like a node's.
        args = [channel, body, self.history_size, self.expire_ms, secrets.token_urlsafe(6),
                self.publish_command, _pack((payload, binary, ids))]
        return channel, ScriptCall(LOG, BrokerRecovery.room_keys(channel), args)

    def broadcast(self, event: str, data: Any) -> Outbound:
        payload, binary = self._event(event, data)
        return f"{self.prefix}.all", self._encode(m.Broadcast(None, payload, binary))

    def send(self, sid: str, event: str, data: Any) -> Outbound:
        channel = self.inbox(sid)
        payload, binary = self._event(event, data)
        return channel, self._encode(m.SendTo(sid, payload, binary))

    def join(self, sid: str, room: str) -> Outbound:
        self.room_channel(room)
        return self.inbox(sid), self._encode(m.JoinRoom(0, sid, room))

    def leave(self, sid: str, room: str) -> Outbound:
        self.room_channel(room)
        return self.inbox(sid), self._encode(m.LeaveRoom(0, sid, room))

    def disconnect(self, sid: str, code: int, reason: str) -> Outbound:
        if code != 1000 and not 3000 <= code <= 4999:
            raise ValueError(f"close code {code}: 1000 or 3000-4999")
        return self.inbox(sid), self._encode(m.DisconnectSocket(0, sid, code, reason))

    # helpers

    def _encode(self, body: m.Body) -> bytes:
        return m.encode(self.src, body)

    def _event(self, event: str, data: Any) -> tuple[bytes, bool]:
        if ("event", event) not in self.checked:
            check_event(event)
            if len(event) > self.max_name_length:
                raise ValueError(f"event name longer than {self.max_name_length} characters")
            self._remember(("event", event), "")
        binary = envelope.needs_binary(data)
        return envelope.encode_event(event, data, binary=binary), binary

    def _remember(self, key: tuple[str, str], value: str) -> str:
        if len(self.checked) >= 4096:
            self.checked.clear()
        self.checked[key] = value
        return value


class Operations(abc.ABC, Generic[R]):
    """The emitter's methods, over ``_emit``: one place to add an operation."""

    _core: EmitterCore

    @abc.abstractmethod
    def _emit(self, item: Outbound) -> R: ...

    def publish(
        self, room: str, event: str, data: Any = None, *,
        exclude: str | Iterable[str] | None = None,
    ) -> R:
        """``event`` to every member of ``room`` on every node, except the socket ids in
        ``exclude``."""
        return self._emit(self._core.publish(room, event, data, exclude))

    def broadcast(self, event: str, data: Any = None) -> R:
        """``event`` to every socket of the cluster."""
        return self._emit(self._core.broadcast(event, data))

    def send(self, sid: str, event: str, data: Any = None) -> R:
        """``event`` to socket ``sid`` (its node: the id's prefix)."""
        return self._emit(self._core.send(sid, event, data))

    def join(self, sid: str, room: str) -> R:
        """Make socket ``sid`` join ``room``."""
        return self._emit(self._core.join(sid, room))

    def leave(self, sid: str, room: str) -> R:
        """Make socket ``sid`` leave ``room``."""
        return self._emit(self._core.leave(sid, room))

    def disconnect(self, sid: str, code: int = CloseCode.KICKED, reason: str = "") -> R:
        """Close socket ``sid`` (default code 4000)."""
        return self._emit(self._core.disconnect(sid, code, reason))


class Batch(Operations[None]):
    """Operations collected by ``emitter.batch()`` and sent in order, in one pipeline, when
    the block ends (nothing is sent if it raises)."""

    def __init__(self, core: EmitterCore) -> None:
        self._core = core
        self.items: list[Outbound] = []

    def _emit(self, item: Outbound) -> None:
        self.items.append(item)


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
                        self._adapter.send_now(self._packed(batch[start:start + _MAX_BATCH])),
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

    def _packed(self, batch: list[Outbound]) -> list[Outbound]:
        """On plain Redis, runs of plain messages as PUBLISH_MANY calls (same order)."""
        if self._adapter.name != "redis" or len(batch) < 2:
            return batch
        out: list[Outbound] = []
        run: list[Any] = []
        for channel, data in batch:
            if type(data) is bytes:
                run += (channel, data)
                if len(run) < 2 * _RUN:
                    continue
            if run:
                out.append(_publish_many(run))
                run = []
            if type(data) is not bytes:
                out.append((channel, data))
        if run:
            out.append(_publish_many(run))
        return out

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


def _publish_many(run: list[Any]) -> Outbound:
    if len(run) == 2:
        return run[0], run[1]
    return run[0], ScriptCall(PUBLISH_MANY, [], [_strings(run)])


def _strings(items: list[Any]) -> bytes:
    """A MessagePack array of raw strings (Redis' cmsgpack decodes no bin type; a Lua string
    holds any bytes)."""
    out = [_header(len(items), 0x90, b"\xdc", b"\xdd", 16)]
    for item in items:
        data = item if type(item) is bytes else item.encode()
        out.append(_header(len(data), 0xa0, b"\xda", b"\xdb", 32))
        out.append(data)
    return b"".join(out)


def _header(n: int, fix: int, two: bytes, four: bytes, fix_limit: int) -> bytes:
    if n < fix_limit:
        return bytes((fix | n,))
    if fix == 0xa0 and n < 256:
        return b"\xd9" + bytes((n,))
    if n < 65536:
        return two + n.to_bytes(2, "big")
    return four + n.to_bytes(4, "big")


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The sync emitter's thread: its loop, closed when stopped."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


class Emitter(Operations[None]):
    """``emitter.publish(room, event, data)`` and the other operations, blocking until the
    broker took the message. Options as for ``AsyncEmitter``. Thread-safe: one emitter per
    process is enough (create it at import time; it connects on first use, and again in a
    forked child). ``close()`` (or ``with``) when done; an emitter left open is closed with
    the interpreter (its thread is a daemon).
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
