"""The HTTP API's operations: one ``msgspec.Struct`` per operation (its request body, checked on
decoding, and its OpenAPI schema) and what each does through the server's cluster-wide API.

Every operation works on a whole cluster from any node: publishes and broadcasts go through
the broker, sockets are reached wherever they are (``server.send``, ``call``, ``join``...),
listings ask every node (``fetch_sockets``). A new operation adds a Struct here, to
``Single``, to ``OPERATIONS``, a branch in ``run_now`` (done at once) or ``_run`` (awaited),
a result schema in ``api_schema._RESULTS``, and a row in docs/api.md.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from smartsocket.errors import AckError, AckTimeout, ConnectionClosed
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import is_app_close_code
from smartsocket.protocol.names import name_problem
from smartsocket.security import LimitExceeded

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.recovery.store import SessionStore
    from smartsocket.server.app import SmartSocket
    from smartsocket.server.rooms import Room as RoomHandle

Timeout = Annotated[float, msgspec.Meta(
    gt=0, le=60, description="seconds to wait for the other nodes (default 2)"
)]
Sid = Annotated[str, msgspec.Meta(min_length=1, max_length=256, description="a socket id")]
Room = Annotated[str, msgspec.Meta(description="a room name (the naming rule applies)")]
EventName = Annotated[str, msgspec.Meta(
    description="an event name (the naming rule applies; not starting with '$')"
)]
Data = Annotated[Any, msgspec.Meta(description="the event's data: any JSON value")]
CloseCodeField = Annotated[int, msgspec.Meta(description="close code: 1000 or 3000-4999")]
CloseReason = Annotated[str, msgspec.Meta(description="close reason, at most 123 UTF-8 bytes")]
Exclude = Annotated[list[str] | None, msgspec.Meta(description="socket ids not to deliver to")]


class Op(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", kw_only=True):
    """Base of every operation; ``op`` names it (required in a batch, optional at
    ``/smartsocket/api/<op>``)."""


class Publish(Op, tag="publish"):
    """Send an event to a room's members on every node."""

    room: Room
    event: EventName
    data: Data = None
    exclude: Exclude = None


class Broadcast(Op, tag="broadcast"):
    """Send an event to every socket on every node."""

    event: EventName
    data: Data = None
    exclude: Exclude = None


class Send(Op, tag="send"):
    """Send an event to one socket, wherever it is (fire and forget)."""

    sid: Sid
    event: EventName
    data: Data = None


class Call(Op, tag="call"):
    """Send an event to one socket and return its ack reply."""

    sid: Sid
    event: EventName
    data: Data = None
    timeout: Annotated[float | None, msgspec.Meta(
        description="seconds to wait for the ack, at most 300 (default: message_timeout)"
    )] = None


class Join(Op, tag="join"):
    """Make a socket join a room."""

    sid: Sid
    room: Room
    timeout: Timeout = 2.0


class Leave(Op, tag="leave"):
    """Make a socket leave a room."""

    sid: Sid
    room: Room
    timeout: Timeout = 2.0


class Disconnect(Op, tag="disconnect"):
    """Close a socket's connection."""

    sid: Sid
    code: CloseCodeField = 4000
    reason: CloseReason = ""
    timeout: Timeout = 2.0


User = Annotated[str, msgspec.Meta(
    min_length=1, max_length=256, description="a user id (``socket.user``: a JWT's sub, or "
    "what the auth hook named)"
)]


class ToUser(Op, tag="to_user"):
    """Send an event to every connection of a user, on every node (fire and forget)."""

    user: User
    event: EventName
    data: Data = None


class DisconnectUser(Op, tag="disconnect_user"):
    """Close every connection of a user, on every node (logout, ban); how many closed."""

    user: User
    code: CloseCodeField = 4000
    reason: CloseReason = ""
    timeout: Timeout = 2.0


class Rooms(Op, tag="rooms"):
    """Every room with members, and how many."""

    timeout: Timeout = 2.0


class Members(Op, tag="members"):
    """A room's members: socket id, node, presence info."""

    room: Room
    timeout: Timeout = 2.0


class History(Op, tag="history"):
    """A room's recent messages (needs recovery: ``recovery_window``)."""

    room: Room
    after: Annotated[int, msgspec.Meta(ge=0, description="only messages after this offset")] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000, description="at most this many")] = 100


class Stats(Op, tag="stats"):
    """The server's figures (``/smartsocket/stats``); ``cluster``: with every node's."""

    cluster: bool = False


Single = (
    Publish | Broadcast | Send | Call | Join | Leave | Disconnect | ToUser | DisconnectUser
    | Rooms | Members | History | Stats
)


class Batch(Op, tag="batch"):
    """Many operations in one request, run in order; one result (or error) each."""

    operations: list[Single]


OPERATIONS: dict[str, type[Op]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Publish, Broadcast, Send, Call, Join, Leave, Disconnect, ToUser, DisconnectUser, Rooms,
        Members, History, Stats, Batch,
    )
}


class ApiError(Exception):
    """An operation refused: HTTP ``status``, a ``code``, a message, the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


@dataclass(frozen=True, slots=True)
class Context:
    """What the operations use: the server's public API, and for ``history`` its session
    store (picked at start-up: read at each use)."""

    server: SmartSocket
    recovery: Callable[[], SessionStore | None]
    cluster: ClusterNode  # backpressure: a publish waits while the broker link is congested


def _check_room(room: str, max_length: int) -> None:
    problem = name_problem("room", room, max_length)
    if problem is not None:
        raise ApiError(400, "invalid_name", problem, "room")


def _check_event(event: str, max_length: int) -> None:
    problem = name_problem("event", event, max_length)
    if problem is None and event[0] == "$":
        problem = "event names starting with '$' are reserved"
    if problem is not None:
        raise ApiError(400, "invalid_name", problem, "event")


def _no_socket(sid: str) -> ApiError:
    return ApiError(404, "socket_not_found", f"no socket {sid!r} in the cluster", "sid")


class Names:
    """Room and event names of one request, each checked once (a batch repeats them)."""

    __slots__ = ("events", "max_length", "rooms")

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.rooms: set[str] = set()
        self.events: set[str] = set()

    def check(self, op: Op) -> None:
        room: str | None = getattr(op, "room", None)
        if room is not None and room not in self.rooms:
            _check_room(room, self.max_length)
            self.rooms.add(room)
        event: str | None = getattr(op, "event", None)
        if event is not None and event not in self.events:
            _check_event(event, self.max_length)
            self.events.add(event)


class Publisher:
    """The publishes of one request (a batch repeats rooms and events): each room's handle
    made, and its name checked, once; each event name checked once."""

    __slots__ = ("events", "names", "rooms", "server")

    def __init__(self, server: SmartSocket, names: Names) -> None:
        self.server = server
        self.names = names
        self.events = names.events
        self.rooms: dict[str, RoomHandle] = {}

    def publish(self, op: Publish) -> None:
        """``op`` carried out (its result is ``{}``), or ApiError."""
        room = self.rooms.get(op.room)
        if room is None:
            self.names.check(op)
            room = self.rooms[op.room] = self.server.room(op.room)
        elif op.event not in self.events:
            self.names.check(op)
        try:
            room.broadcast(op.event, op.data, exclude=op.exclude, binary=False)
        except LimitExceeded as exc:
            raise _limit_error(exc) from exc


def _limit_error(exc: LimitExceeded) -> ApiError:
    status = {"rate_limited": 429, "overloaded": 503}.get(exc.code, 409)
    return ApiError(status, exc.code, exc.message)


async def make_room(ctx: Context, timeout: float | None = None) -> None:
    """Backpressure: while the broker link's queue is full, wait for it to drain (a batch of
    publishes would otherwise be refused as ``overloaded`` part way), at most ``timeout``
    seconds (default ``message_timeout``); still full then: the publish is refused."""
    cluster = ctx.cluster
    if not cluster.congested:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (ctx.server.config.message_timeout if timeout is None else timeout)
    # Again after each wake-up: concurrent requests woken with this one may fill it first.
    while cluster.congested:
        left = deadline - loop.time()
        if left <= 0 or not await cluster.wait_writable(left):
            return


async def run(ctx: Context, op: Op, names: Names | None = None) -> dict[str, Any]:
    """Carry out one operation (not a batch); its result, or ApiError."""
    await make_room(ctx)
    result = run_now(ctx, op, names)
    return result if result is not None else await run_later(ctx, op)


def run_now(ctx: Context, op: Op, names: Names | None = None) -> dict[str, Any] | None:
    """Check the names, then carry out an operation that needs no waiting (publish,
    broadcast, send, stats): its result; None for the others (``run_later``)."""
    server = ctx.server
    (names or Names(server.config.max_name_length)).check(op)
    try:
        if type(op) is Publish:
            server.room(op.room).broadcast(op.event, op.data, exclude=op.exclude, binary=False)
            return {}
        if type(op) is Broadcast:
            server.broadcast(op.event, op.data, exclude=op.exclude, binary=False)
            return {}
    except LimitExceeded as exc:
        raise _limit_error(exc) from exc
    if type(op) is Send:
        return {"sent": server.send(op.sid, op.event, op.data, binary=False)}
    if type(op) is ToUser:  # delivered here, published to the other nodes
        return {"delivered_here": server.to_user(op.user, op.event, op.data, binary=False)}
    if type(op) is Stats:
        return server.stats(cluster=op.cluster)
    return None


async def run_later(ctx: Context, op: Op) -> dict[str, Any]:
    """An operation that waits (for a socket's ack, for other nodes); names checked."""
    try:
        return await _run(ctx, op)
    except LimitExceeded as exc:
        raise _limit_error(exc) from exc
    except TimeoutError as exc:
        raise ApiError(504, "node_timeout", "the socket's node did not answer in time") from exc


async def _run(ctx: Context, op: Op) -> dict[str, Any]:
    server = ctx.server
    if type(op) is Call:
        return {"ack": await _call(server, op)}
    if type(op) is Join or type(op) is Leave:
        method = server.join if type(op) is Join else server.leave
        if not await method(op.sid, op.room, timeout=op.timeout):
            raise _no_socket(op.sid)
        return {}
    if type(op) is Disconnect:
        _check_close(op.code, op.reason)
        if not await server.disconnect(op.sid, op.code, op.reason, timeout=op.timeout):
            raise _no_socket(op.sid)
        return {}
    if type(op) is DisconnectUser:
        _check_close(op.code, op.reason)
        closed = await server.disconnect_user(op.user, op.code, op.reason, timeout=op.timeout)
        return {"closed": closed}
    if type(op) is Rooms:
        counts = Counter(
            room for record in await server.fetch_sockets(timeout=op.timeout)
            for room in record.rooms
        )
        return {"rooms": [{"room": room, "members": counts[room]} for room in sorted(counts)]}
    if type(op) is Members:
        records = await server.fetch_sockets(op.room, timeout=op.timeout)
        return {"members": [
            {"sid": r.sid, "node": r.node, "presence": r.presence}
            for r in sorted(records, key=lambda r: r.sid)
        ]}
    if type(op) is History:
        return await _history(ctx, op)
    raise ApiError(400, "invalid_operation", "a batch cannot hold a batch", "op")


async def _call(server: SmartSocket, op: Call) -> Any:
    timeout = server.config.message_timeout if op.timeout is None else op.timeout
    if not 0 < timeout <= 300:
        raise ApiError(400, "invalid_field", "timeout must be > 0 and <= 300", "timeout")
    try:
        return await server.call(op.sid, op.event, op.data, timeout=timeout, binary=False)
    except AckTimeout as exc:
        raise ApiError(504, "ack_timeout", str(exc)) from exc
    except AckError as exc:  # the socket's handler answered with an error
        raise ApiError(502, "ack_error", f"{exc.code}: {exc.message}") from exc
    except ConnectionClosed as exc:
        raise _no_socket(op.sid) from exc


def _check_close(code: int, reason: str) -> None:
    if not is_app_close_code(code):
        raise ApiError(400, "invalid_field", "close code must be 1000 or 3000-4999", "code")
    if len(reason.encode()) > 123:
        raise ApiError(400, "invalid_field", "close reason longer than 123 bytes", "reason")


async def _history(ctx: Context, op: History) -> dict[str, Any]:
    """The room's messages after ``op.after``, from the session store in use (Redis in a
    cluster on Redis, else this node's own history)."""
    recovery = ctx.recovery()
    if recovery is None:
        raise ApiError(
            409, "recovery_off", "room history needs recovery (recovery_window > 0)"
        )
    view = await recovery.read_room(op.room, op.after)
    if view is None:
        return {"epoch": None, "last": 0, "messages": []}
    messages = [
        _message(item.offset, item.ms, item.payload, item.binary)
        for item in view.items[: op.limit]
    ]
    return {"epoch": view.epoch, "last": view.last, "messages": messages}


def _message(offset: int, ms: int, payload: bytes, binary: bool) -> dict[str, Any]:
    packet = envelope.decode(payload, binary=binary)
    assert isinstance(packet, envelope.Event)
    return {"offset": offset, "time": ms, "event": packet.name, "data": packet.data}
