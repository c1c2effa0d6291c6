"""Inbound events: from a decoded packet to the application's handlers and back to an ack.

``EventRouter`` owns the server-level handlers and ``on_message`` hooks and runs them for each
event a socket received (``SmartSocket`` composes one). Every handler runs; the first one's
return value is the ack reply; handler failures become ack errors (``AckError``: the
application's own, not logged) or ``internal_error`` (logged), never a dead connection.
"""

from __future__ import annotations

import asyncio
import logging
from itertools import islice
from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket.config import Config
from smartsocket.errors import AckError
from smartsocket.handlers import Handler
from smartsocket.protocol.codes import ErrorCode
from smartsocket.protocol.envelope import Event

if TYPE_CHECKING:
    from smartsocket.server.socket import Socket

logger = logging.getLogger("smartsocket.server")

# What a sync handler returns most: never a coroutine, known without asyncio.iscoroutine
# (whose isinstance against collections.abc.Coroutine costs ~900 instructions per event).
_PLAIN_RESULTS = frozenset({type(None), str, int, float, bool, dict, list, tuple, bytes})


class Tasks(set[asyncio.Task[Any]]):
    """The server's background tasks (handlers, hooks, authentication): shutdown waits for
    them, then cancels what is left."""

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.add(task)
        task.add_done_callback(self.discard)


class EventRouter:
    """Runs handlers for events that sockets received; its ack is the first one's result."""

    __slots__ = ("config", "handlers", "hooks", "tasks")

    def __init__(self, config: Config, tasks: Tasks) -> None:
        self.config = config  # the server sets the new one when it is reconfigured
        self.tasks = tasks
        self.handlers: dict[str, list[Handler]] = {}  # server-level, by event
        self.hooks: list[Handler] = []  # on_message hooks

    def add_handler(self, event: str, handler: Handler) -> None:
        self.handlers.setdefault(event, []).append(handler)

    def dispatch(self, socket: Socket, packet: Event) -> None:
        name = packet.name
        for hook in self.hooks:
            try:
                result = hook.fn(*(socket, name, packet.data)[: hook.arity])
                if asyncio.iscoroutine(result):
                    self._spawn(_log_failure(result, hook, "on_message"))
            except Exception:
                logger.exception("on_message hook %s failed", hook.name)
        handlers = socket.handlers_for(name)
        if handlers is not None:
            with_socket = False
        else:
            handlers = self.handlers.get(name)
            with_socket = True
            if not handlers:
                if packet.ack_id is not None:
                    socket.reject(
                        ErrorCode.UNKNOWN_EVENT, f"no handler for {name!r}",
                        ack_id=packet.ack_id, binary=packet.binary,
                    )
                return
        # Every handler runs; the first one's return value is the ack reply.
        self._invoke(socket, handlers[0], with_socket, packet, True)
        if len(handlers) > 1:  # the rest, from the list as it is now (as enumerate did)
            for handler in islice(handlers, 1, None):
                self._invoke(socket, handler, with_socket, packet, False)

    def _invoke(
        self, socket: Socket, handler: Handler, with_socket: bool, packet: Event, answer: bool
    ) -> None:
        ack_id = packet.ack_id if answer else None
        if (
            handler.is_async and ack_id is not None
            and not socket.call_started(self.config.max_pending_acks)
        ):
            socket.reject(
                ErrorCode.TOO_MANY_PENDING, "too many calls in progress", ack_id=ack_id,
                binary=packet.binary,
            )
            return
        try:
            data = packet.data if handler.data_type is None else handler.convert(packet.data)
            arity = handler.arity
            if arity == 2 and with_socket:  # the common handler: (socket, data)
                result = handler.fn(socket, data)
            else:
                args = (socket, data) if with_socket else (data,)
                result = handler.fn(*args[:arity])
        except msgspec.ValidationError as exc:
            socket.reject(
                ErrorCode.INVALID_PAYLOAD, str(exc), event=packet.name, ack_id=ack_id,
                binary=packet.binary,
            )
            if handler.is_async and ack_id is not None:
                socket.call_finished()
            return
        except Exception as exc:
            self._handler_failed(socket, handler, packet, ack_id, exc)
            if handler.is_async and ack_id is not None:
                socket.call_finished()
            return
        if handler.is_async or (
            type(result) not in _PLAIN_RESULTS and asyncio.iscoroutine(result)
        ):
            self._spawn(self._finish(socket, handler, packet, ack_id, result))
        elif ack_id is not None:
            socket.reply(ack_id, result, binary=packet.binary)

    async def _finish(
        self, socket: Socket, handler: Handler, packet: Event, ack_id: int | None, coro: Any
    ) -> None:
        try:
            result = await coro
        except Exception as exc:
            self._handler_failed(socket, handler, packet, ack_id, exc)
            return
        finally:
            if handler.is_async and ack_id is not None:
                socket.call_finished()
        if ack_id is not None:
            socket.reply(ack_id, result, binary=packet.binary)

    def _handler_failed(
        self, socket: Socket, handler: Handler, packet: Event, ack_id: int | None,
        exc: Exception,
    ) -> None:
        event, binary = packet.name, packet.binary
        if isinstance(exc, AckError):  # the application's own refusal: no stack trace
            socket.reject(
                exc.code, exc.message, event=event, ack_id=ack_id, binary=binary,
                retry_after=exc.retry_after,
            )
            return
        logger.error("handler %s for %r failed", handler.name, event, exc_info=exc)
        socket.reject(
            ErrorCode.INTERNAL_ERROR, "internal server error", event=event, ack_id=ack_id,
            binary=binary,
        )
        self.emit_local(socket, "error", exc)

    def _spawn(self, coro: Any) -> None:
        self.tasks.spawn(coro)

    def emit_local(self, socket: Socket, event: str, arg: Any) -> None:
        """Run local ``disconnect``/``error`` handlers, socket-level then server-level."""
        calls: list[tuple[Handler, tuple[Any, ...]]] = []
        for handler in socket.handlers_for(event) or ():
            calls.append((handler, (arg,)))
        for handler in self.handlers.get(event, ()):
            calls.append((handler, (socket, arg)))
        for handler, args in calls:
            try:
                result = handler.fn(*args[: handler.arity])
                if asyncio.iscoroutine(result):
                    self._spawn(_log_failure(result, handler, event))
            except Exception:
                logger.exception("%r handler %s failed", event, handler.name)


async def _log_failure(coro: Any, handler: Handler, event: str) -> None:
    try:
        await coro
    except Exception:
        logger.exception("%r handler %s failed", event, handler.name)
