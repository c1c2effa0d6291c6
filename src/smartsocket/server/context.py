"""What a ``Socket`` uses around it: its connection (``SocketConnection``) and the server's
parts (``SocketContext``).

Every socket of a server shares one ``SocketContext``: one pointer per socket, like the
back-pointer to the server it replaces, but to the parts a socket needs and nothing else.
``Parts`` (server/parts.py) composes it and keeps it in step with the configuration
(``configure``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from smartsocket.security import Limiter, RateLimit
from smartsocket.server.abuse import AbuseRules

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.compression import MessageDeflater
    from smartsocket.config import Config
    from smartsocket.metrics import Stats
    from smartsocket.protocol.envelope import Event
    from smartsocket.recovery import Resumer, SessionStore
    from smartsocket.server.connections import Connections
    from smartsocket.server.heartbeat import Liveness
    from smartsocket.server.room_policy import RoomGate
    from smartsocket.server.rooms import Room, RoomRegistry
    from smartsocket.server.socket import Socket
    from smartsocket.server.tokens import TokenSessions


class SocketConnection(Protocol):
    """What a Socket and the server use of its connection: ``transport.ServerConnection``
    natively; the bridges of smartsocket.asgi and smartsocket.integrations implement it too
    (with ``deflater = None``: broadcasts only ever hand them plain frames)."""

    @property
    def closed(self) -> bool: ...

    @property
    def remote_address(self) -> tuple[Any, ...] | None: ...

    @property
    def deflater(self) -> MessageDeflater | None: ...

    def send_frame(self, frame: bytes) -> None: ...

    def send_message(self, payload: bytes, binary: bool = False) -> int: ...

    def close(self, code: int = ..., reason: str = "") -> None: ...

    def abort(self) -> None: ...


class SocketContext:
    """The server's parts its sockets use. ``config``, ``stats``, ``recovery`` and the default
    rate limit follow the configuration; ``clock`` is the server's (tests replace it)."""

    __slots__ = (
        "abuse", "clock", "cluster", "config", "connections", "default_limit", "dispatch",
        "gate", "liveness", "overrides", "recovery", "registry", "resumer", "room", "stats",
        "tokens",
    )

    def __init__(
        self, config: Config, registry: RoomRegistry, cluster: ClusterNode,
        connections: Connections, resumer: Resumer, liveness: Liveness,
        dispatch: Callable[[Socket, Event], None], clock: Callable[[], int],
        room: Callable[[str], Room], tokens: TokenSessions, gate: RoomGate,
    ) -> None:
        self.registry = registry
        self.cluster = cluster  # ids, presence
        self.connections = connections  # opened, $auth, closed
        self.resumer = resumer  # session state, $resume
        self.liveness = liveness  # $pong
        self.dispatch = dispatch  # inbound events to handlers (EventRouter.dispatch)
        self.clock = clock  # integer ns: rate limits, the error-rate rule
        self.room = room  # a Room handle by name (server.room): Socket.publish
        self.tokens = tokens  # JWT expiry, $refresh, subscription-token rooms (configure)
        self.gate = gate  # room policies: joins and publishes (configure)
        self.overrides: dict[str, RateLimit] = {}  # per-event rate limits (server.rate_limit)
        self.abuse = AbuseRules(config)
        self.configure(config, None, None)

    def configure(
        self, config: Config, stats: Stats | None, recovery: SessionStore | None,
        tokens: TokenSessions | None = None, gate: RoomGate | None = None,
    ) -> None:
        self.config, self.stats, self.recovery = config, stats, recovery
        if tokens is not None:
            self.tokens = tokens
        if gate is not None:
            self.gate = gate
        self.abuse.config, self.abuse.stats = config, stats
        self.default_limit: RateLimit | None = None
        if config.rate_limit_messages or config.rate_limit_bytes:
            self.default_limit = RateLimit(
                config.rate_limit_messages, config.rate_limit_burst, config.rate_limit_bytes
            )

    def new_limiter(self) -> Limiter | None:
        """A new socket's rate limiter; None when no limit is set (the common, fast case)."""
        if self.default_limit is None and not self.overrides:
            return None
        return Limiter(self.default_limit, self.overrides)
