"""The client's event handlers: registered by event name, called (sync or async) with the
reply to a server's call, the local events (``connect``, ``disconnect``...), and the tasks
they run in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from smartsocket.client.link import Link
from smartsocket.errors import AckError
from smartsocket.handlers import Handler
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import ErrorCode
from smartsocket.protocol.envelope import Event

logger = logging.getLogger("smartsocket.client")


class EventHandlers:
    """The handlers of one client, by event name, and the tasks of the async ones."""

    __slots__ = ("_handlers", "_tasks")

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Callable[..., Any]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            entry = Handler(fn, max_args=1, called_with="(data)")
            self._handlers.setdefault(event, []).append(entry)
            return fn

        return register(handler) if handler is not None else register

    def off(self, event: str, handler: Callable[..., Any] | None = None) -> None:
        if handler is None:
            self._handlers.pop(event, None)
        elif event in self._handlers:
            self._handlers[event] = [h for h in self._handlers[event] if h.fn is not handler]

    def dispatch(self, link: Link, packet: Event) -> None:
        """Call the handlers of a server event; the first one's result answers its call."""
        handlers = self._handlers.get(packet.name)
        if not handlers:
            link.reject(packet, ErrorCode.UNKNOWN_EVENT, f"no handler for {packet.name!r}")
            return
        for index, handler in enumerate(handlers):
            self._invoke(link, handler, packet, packet.ack_id if index == 0 else None)

    def emit_local(self, event: str, *args: Any) -> None:
        """Call the handlers of a local event (their failures are logged, not raised)."""
        for handler in self._handlers.get(event, ()):
            try:
                result = handler.fn(*args[: handler.arity])
                if asyncio.iscoroutine(result):
                    self.spawn(result)
            except Exception:
                logger.exception("%r handler %s failed", event, handler.name)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _invoke(self, link: Link, handler: Handler, packet: Event, ack_id: int | None) -> None:
        try:
            data = handler.convert(packet.data)
            result = handler.fn(*(data,)[: handler.arity])
        except Exception as exc:
            self._handler_failed(link, handler, packet, ack_id, exc)
            return
        if handler.is_async or asyncio.iscoroutine(result):
            self.spawn(self._finish(link, handler, packet, ack_id, result))
        elif ack_id is not None:
            link.reply(ack_id, result, packet.binary)

    async def _finish(
        self, link: Link, handler: Handler, packet: Event, ack_id: int | None, coro: Any
    ) -> None:
        try:
            result = await coro
        except Exception as exc:
            self._handler_failed(link, handler, packet, ack_id, exc)
            return
        if ack_id is not None:
            link.reply(ack_id, result, packet.binary)

    def _handler_failed(
        self, link: Link, handler: Handler, packet: Event, ack_id: int | None, exc: Exception
    ) -> None:
        if isinstance(exc, AckError):
            code, message = exc.code, exc.message
        elif isinstance(exc, msgspec.ValidationError):
            code, message = ErrorCode.INVALID_PAYLOAD, str(exc)
        else:
            logger.error("handler %s for %r failed", handler.name, packet.name, exc_info=exc)
            code, message = ErrorCode.INTERNAL_ERROR, "client handler failed"
        if ack_id is not None:
            link.send(envelope.encode_ack_error(ack_id, code, message, binary=packet.binary),
                      packet.binary)
