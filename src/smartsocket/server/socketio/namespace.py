"""Socket.IO namespaces of the application's own (``server.namespace("/admin")``).

``/`` is the application itself: its handlers, ``on_connection`` and rooms. A namespace the
application declares gets its own event handlers, ``on_connection`` and ``disconnect``
handlers; its sockets pass the same admission (auth hook, API keys, limits) and share the
server's rooms, ``server.send`` and ``server.broadcast``. A CONNECT to a namespace nobody
declared is refused, as Socket.IO refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smartsocket.handlers import Handler
from smartsocket.server.dispatch import EventRouter


class Namespace:
    """A namespace's handlers; register them as on the server."""

    __slots__ = ("connection_handlers", "name", "router")

    def __init__(self, name: str, router: EventRouter) -> None:
        self.name = name
        self.router = router  # its event, "disconnect" and "error" handlers
        self.connection_handlers: list[Handler] = []

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """Handle ``event`` from this namespace's clients: ``handler(socket, data)``; the
        return value is the ack. ``"disconnect"``: ``(socket, reason)``. A decorator too."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            second = {"disconnect": "reason", "error": "error"}.get(event, "data")
            self.router.add_handler(
                event, Handler(fn, max_args=2, called_with=f"(socket, {second})")
            )
            return fn

        return register(handler) if handler is not None else register

    def on_connection(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``handler(socket)`` for each client admitted to this namespace."""
        self.connection_handlers.append(Handler(handler, max_args=1, called_with="(socket)"))
        return handler

    def __repr__(self) -> str:
        return f"<Namespace {self.name!r}>"
