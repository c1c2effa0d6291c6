"""The ``Adapter`` interface (a pub/sub link between nodes) and ``BrokerAdapter``, the
machinery the network brokers share (``redis``, ``redis_cluster``, ``nats``; ``memory`` is the
in-process one).

An adapter moves opaque bytes between nodes on named channels; it knows nothing of rooms or
sockets (``ClusterNode`` does). Its contract:

- ``start(receive, state)``: begin connecting; never raise because the broker is down: keep
  retrying with backoff and report each change with ``state(connected)``;
- ``publish(channel, data)``: queue a message, in order, without blocking; return False when
  it was dropped because the broker is unreachable (the node counts those);
- ``subscribe(channel)`` / ``unsubscribe(channel)``: channels wanted; resubscribed after every
  reconnect. ``subscribe`` returns a future that resolves once the broker confirmed it (so a
  node may ask for a room's state knowing it will see every change after the answer);
- ``close()``.

Messages a node publishes may come back to it (Redis does that); the node ignores its own.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from smartsocket.backoff import backoff_delay
from smartsocket.cluster.brokers.scripts import Script, ScriptCall

logger = logging.getLogger("smartsocket.cluster")

LINK_TIMEOUT = 5.0  # seconds: the default liveness period of a broker link (see BrokerAdapter)

Receive = Callable[[str, bytes], None]
StateCallback = Callable[[bool], None]
# What a node queues for the broker: (channel, message) or (channel, script that publishes there)
Outbound = tuple[str, "bytes | ScriptCall"]
CLOSE_WAIT = 1.0  # seconds close() waits for the link's task, then for the disconnect
URGENT_ROOM = 64  # control messages a full outbound queue still takes (publish_urgent)
T = TypeVar("T")


def honour_cancel(task: asyncio.Task[Any] | None = None) -> None:
    """Raise CancelledError if the running task was cancelled but runs on: redis-py (8.1)
    swallows a cancel that lands as a command's reply arrives (the command returns its reply;
    ``Task.cancelling()`` stays > 0). A loop that awaits the client calls this after each call,
    or a swallowed cancel keeps it looping forever: a node's close then waited, with no timer
    left, for its broker writer (the test_broker_backpressure and test_cluster_faults hangs).
    ``task``: the running task, when a per-message loop has it already."""
    if task is None:
        task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Adapter(abc.ABC):
    """A pub/sub link to the other nodes of a cluster."""

    name: ClassVar[str] = "adapter"

    def __init__(self) -> None:
        self.connected = False
        self._receive: Receive = _ignore
        self._state: StateCallback = _ignore_state
        self._channels: set[str] = set()

    @abc.abstractmethod
    async def start(self, receive: Receive, state: StateCallback) -> None:
        """Begin connecting (returns at once or after a first attempt; never raises because
        the broker is unreachable)."""

    @abc.abstractmethod
    def publish(self, channel: str, data: bytes) -> bool:
        """Queue ``data`` for ``channel``; False if dropped (broker unreachable)."""

    @abc.abstractmethod
    def subscribe(self, channel: str) -> asyncio.Future[None]:
        """Receive ``channel`` (also after reconnects); the future resolves once subscribed."""

    @abc.abstractmethod
    def unsubscribe(self, channel: str) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    def _set_state(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self._state(connected)


def _ignore(channel: str, data: bytes) -> None:
    pass


def _ignore_state(connected: bool) -> None:
    pass


class Backoff:
    """Reconnect delays: 50 ms doubling to ``maximum`` with jitter; ``reset()`` on success."""

    def __init__(self, base: float = 0.05, maximum: float = 2.0) -> None:
        self.base = base
        self.maximum = maximum
        self.attempt = 0

    def next(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, base=self.base, maximum=self.maximum, jitter=0.3)

    def reset(self) -> None:
        self.attempt = 0


class BrokerAdapter(Adapter):
    """What network adapters share: a supervisor task that connects, runs until the link
    breaks, and reconnects with backoff (resubscribing every wanted channel); an outbound queue
    drained by one writer, so messages keep their order and go out in pipelined batches.

    While the link is down ``publish`` refuses at once (the node counts it): nothing piles up,
    and nothing stale is replayed after the outage. ``lost`` counts messages that were queued
    or in flight when the link broke.
    """

    batch: ClassVar[int] = 512

    def __init__(
        self, url: str, idle_timeout: float = LINK_TIMEOUT, *, max_queue: int = 10_000
    ) -> None:
        super().__init__()
        self.url = url
        self.max_queue = max_queue  # outbound messages (config: cluster_queue)
        # The liveness period (``cluster_link_timeout``): each adapter finds a silent broker
        # within two of them (its watchdog), and a send or command unanswered for two is
        # taken as a dead link (a paused broker, a black hole: TCP takes the bytes, nothing
        # answers, and nothing else would ever end the wait).
        self.idle_timeout = idle_timeout
        self.lost = 0
        self.lost_channels: set[str] = set()  # of the lost messages, until the node reads them
        self.reconnects = 0
        self.last_error: str | None = None
        # (channel, message) to publish, or (channel, script call) that publishes on channel
        self._queue: deque[Outbound] = deque()
        self._control: deque[tuple[bool, str]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None  # set when the queue drains (made on need)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Event | None = None
        self._control_ready: asyncio.Event | None = None
        self._closed = False
        self._backoff = Backoff()
        self._link = 0  # bumped when a link ends: its writer must stop

    # what an implementation provides

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the link and subscribe to ``self._channels`` (call ``_subscribed`` for each
        confirmed channel). Raise on failure."""

    @abc.abstractmethod
    async def _send(self, batch: list[Outbound]) -> None:
        """Publish a batch, in order. Raise if the link broke."""

    @abc.abstractmethod
    async def _apply(self, subscribe: bool, channel: str) -> None:
        """Subscribe or unsubscribe one channel on the open link."""

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Read until the link breaks (then raise); delivers with ``self._receive``."""

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Drop the link (errors are ignored)."""

    # the machinery

    async def start(self, receive: Receive, state: StateCallback) -> None:
        self._receive, self._state = receive, state
        self._wakeup = asyncio.Event()
        self._first = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._supervise())
        with contextlib.suppress(asyncio.TimeoutError):  # wait for the first attempt only
            await asyncio.wait_for(self._first.wait(), 5.0)

    async def _supervise(self) -> None:
        assert self._first is not None
        while not self._closed:
            try:
                self._control.clear()  # _connect subscribes to every wanted channel
                wanted = set(self._channels)
                await self._connect()
                honour_cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_failure("cannot connect", exc)
                self._first.set()
                await self._disconnect()
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            # (Un)subscribed while _connect ran: not in its snapshot, and not queued then
            # (offline); queued once the link is up.
            added, removed = self._channels - wanted, wanted - self._channels
            self._set_state(True)
            for channel in added:
                self._queue_control(True, channel)
            for channel in removed:
                self._queue_control(False, channel)
            self._first.set()
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_failure("link lost", exc)
            finally:
                self._set_state(False)
                self.lost += len(self._queue)
                self.lost_channels.update(channel for channel, _ in self._queue)
                self._queue.clear()
                if self._writable is not None:
                    self._writable.set()  # waiters see the link down
            await self._disconnect()
            if not self._closed:
                self.reconnects += 1
                await asyncio.sleep(self._backoff.next())

    def _note_failure(self, what: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        level = logging.DEBUG if error == self.last_error else logging.WARNING
        logger.log(level, "%s broker %s: %s (%s); retrying with backoff", self.name,
                   safe_url(self.url), what, error)
        self.last_error = error

    async def _run(self) -> None:
        tasks = [
            asyncio.ensure_future(self._serve()),
            asyncio.ensure_future(self._write(self._link)),
            asyncio.ensure_future(self._control_loop()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the failure
            raise ConnectionError("link closed")
        finally:
            self._link += 1  # this link's writer is stale from now on, cancelled or not
            for task in tasks:
                task.cancel()
            if self._wakeup is not None:
                self._wakeup.set()  # a writer that swallowed its cancellation looks again
            # Bounded: a client library may swallow a cancellation (seen: the writer back on
            # its wake-up event after a cancelled pipeline), and waiting for it would keep
            # the link down, or a closing node alive, for good. Left behind, it is harmless:
            # the next link has its own tasks, and the stale writer is told to end.
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_WAIT)
            for task in stuck:
                logger.warning("%s broker link: a task ignored its cancellation: %r",
                               self.name, task)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved (the failure was raised above)

    async def _write(self, link: int) -> None:
        assert self._wakeup is not None
        queue = self._queue
        task = asyncio.current_task()
        assert task is not None
        while True:
            # A cancellation swallowed in _send (the client library): end anyway, and never
            # write for a later link beside its own writer (order).
            if task.cancelling() or link != self._link:
                raise asyncio.CancelledError
            if not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            size = min(len(queue), self.batch)
            batch = [queue.popleft() for _ in range(size)]
            try:
                await self._bounded(self._send(batch))
            except BaseException:
                self.lost += len(batch)
                self.lost_channels.update(channel for channel, _ in batch)
                raise
            honour_cancel()
            writable = self._writable
            if writable is not None and len(queue) <= self.max_queue // 2:
                writable.set()

    async def _control_loop(self) -> None:
        self._control_ready = ready = asyncio.Event()
        while True:
            while self._control:
                subscribe, channel = self._control.popleft()
                await self._apply(subscribe, channel)
                honour_cancel()
            ready.clear()
            if not self._control:
                await ready.wait()

    def _subscribed(self, channel: str) -> None:
        for future in self._waiters.pop(channel, ()):
            if not future.done():
                future.set_result(None)

    def publish(self, channel: str, data: bytes | ScriptCall) -> bool:
        """Queue ``data`` for ``channel`` (a ``ScriptCall``: run it, in the same order; its
        keys must live where ``channel`` does, e.g. hash-tagged with it on a Redis Cluster)."""
        return self._enqueue(channel, data, self.max_queue)

    def publish_urgent(self, channel: str, data: bytes) -> bool:
        """``publish`` for the node's own few control messages (heartbeats, goodbyes,
        replies): they may go URGENT_ROOM past a full queue, so a burst of broadcasts does
        not make the other nodes drop this one as silent."""
        return self._enqueue(channel, data, self.max_queue + URGENT_ROOM)

    def _enqueue(self, channel: str, data: bytes | ScriptCall, cap: int) -> bool:
        if not self.connected or len(self._queue) >= cap:
            return False
        self._queue.append((channel, data))
        if len(self._queue) == 1 and self._wakeup is not None:
            self._wakeup.set()
        return True

    @property
    def full(self) -> bool:
        """The outbound queue holds ``max_queue`` messages: ``publish`` refuses until the
        writer drains it (a burst faster than the broker takes it)."""
        return len(self._queue) >= self.max_queue

    async def wait_writable(self, timeout: float) -> bool:
        """Wait until the outbound queue is at most half full (at once if it is); False if the
        link is down, or it did not drain within ``timeout`` seconds. Backpressure for a
        publisher of bursts that can wait (the HTTP API's batches)."""
        if not self.connected:
            return False
        if len(self._queue) <= self.max_queue // 2:
            return True
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        try:
            await asyncio.wait_for(self._writable.wait(), timeout)
        except TimeoutError:
            return False
        return self.connected

    async def send_now(self, batch: list[Outbound]) -> None:
        """Publish ``batch`` at once, in order, past the queue, and return when the broker
        took it: for a caller that must know (the emitter, ``smartsocket/emitter/``), where
        ``publish`` is fire and forget. Raises ConnectionError while the link is down, or what
        the link raised (then some of the batch may have gone out), or TimeoutError when the broker
        does not answer for two liveness periods."""
        if not self.connected:
            raise ConnectionError(f"the link to the {self.name} broker is down")
        await self._bounded(self._send(batch))

    async def _bounded(self, work: Awaitable[T]) -> T:
        """``work``, or TimeoutError after two liveness periods without its answer."""
        try:
            async with asyncio.timeout(2 * self.idle_timeout):  # no task, unlike wait_for
                return await work
        except TimeoutError:
            raise TimeoutError(
                f"the {self.name} broker did not answer for {2 * self.idle_timeout:g} s"
            ) from None

    supports_scripts: ClassVar[bool] = False

    async def execute(self, key: str, *command: Any) -> Any:
        """Run one command where ``key`` lives; raises ConnectionError while the link is
        down. Only adapters with ``supports_scripts`` (Redis) implement it."""
        raise NotImplementedError(f"the {self.name} adapter has no key-value commands")

    def incarnation(self, key: str) -> str:
        """The incarnation of the server where ``key`` lives (see ``read_incarnation``), as
        learned when the link came up; "" if unknown."""
        return ""

    async def run_script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` where ``keys[0]`` lives and return its result (its last argument:
        the incarnation of that server, as for queued calls)."""
        from redis.exceptions import NoScriptError

        args = [*args, self.incarnation(keys[0])]
        try:
            return await self.execute(keys[0], "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute(keys[0], "EVAL", script.source, len(keys), *keys, *args)

    def subscribe(self, channel: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if channel in self._channels:  # wanted already: confirmed, or on its way
            if channel not in self._waiters and self.connected:
                future.set_result(None)
            else:
                self._waiters.setdefault(channel, []).append(future)
            return future
        self._channels.add(channel)
        self._waiters.setdefault(channel, []).append(future)
        self._queue_control(True, channel)
        return future

    def unsubscribe(self, channel: str) -> None:
        if channel in self._channels:
            self._channels.discard(channel)
            for future in self._waiters.pop(channel, ()):
                future.cancel()
            self._queue_control(False, channel)

    def _queue_control(self, subscribe: bool, channel: str) -> None:
        if not self.connected:
            return  # the next _connect subscribes to what is wanted then
        self._control.append((subscribe, channel))
        if self._control_ready is not None:
            self._control_ready.set()

    async def close(self) -> None:
        """Flush what is queued (briefly), then drop the link."""
        deadline = asyncio.get_running_loop().time() + 1.0
        while self._queue and self.connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            # Bounded: a client library's read that ignores the cancellation (a broker that
            # stopped answering) must not keep a shutting-down node alive.
            await asyncio.wait({self._task}, timeout=CLOSE_WAIT)
            if self._task.done() and not self._task.cancelled():
                self._task.exception()  # retrieved: nothing to report while closing
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._disconnect(), CLOSE_WAIT)
        self.connected = False
        for waiters in self._waiters.values():
            for future in waiters:
                future.cancel()
        self._waiters.clear()


def safe_url(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user + ':***' if user else '***'}@{host}"
