"""``LocalSide``: this node's sockets and rooms as the cluster sees them.

It implements ``cluster.ports.LocalServer`` over the parts that own the state (the socket
table, the ``RoomRegistry``, ``Fanout``, the session store), so ``cluster/`` acts on local sockets
without importing the server or reading its privates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from smartsocket.server.fanout import Fanout, SendFrame, skip_set
from smartsocket.server.users import Users

if TYPE_CHECKING:
    from smartsocket.metrics import Stats
    from smartsocket.recovery.store import SessionStore
    from smartsocket.server.rooms import RoomRegistry
    from smartsocket.server.socket import Socket


class LocalSide:
    """The server side of ``cluster.ports.LocalServer``. ``fanout``, ``recovery`` and
    ``stats`` follow the configuration (the server sets them when it is reconfigured)."""

    __slots__ = ("fanout", "recovery", "registry", "sockets", "stats", "users")

    def __init__(
        self, sockets: Mapping[str, Socket], registry: RoomRegistry, fanout: Fanout,
        recovery: SessionStore | None = None, stats: Stats | None = None,
        users: Users | None = None,
    ) -> None:
        self.sockets = sockets
        self.users = users if users is not None else Users()
        self.registry = registry
        self.fanout = fanout
        self.recovery = recovery
        self.stats = stats

    def deliver(
        self, room: str | None, payload: bytes, binary: bool, exclude: Sequence[str] = (),
        deflated: bytes | None = None, tried: bool = False,
    ) -> int:
        members: Mapping[Socket, SendFrame]
        if room is None:
            members = {s: s.send_frame for s in self.sockets.values()}
        else:
            members = self.registry.members(room)
        if not members:
            return 0
        skip = skip_set(exclude, self.sockets) if exclude else None
        return self.fanout.deliver(members, payload, binary, skip, deflated, tried)

    def members(self, room: str | None) -> Iterable[Socket]:
        return self.sockets.values() if room is None else self.registry.members(room)

    def room_names(self) -> list[str]:
        return self.registry.names()

    def has_room(self, room: str) -> bool:
        return room in self.registry

    def socket(self, sid: str) -> Socket | None:
        return self.sockets.get(sid)

    def send_direct(self, sid: str, payload: bytes, binary: bool) -> bool:
        socket = self.sockets.get(sid)
        if socket is None:
            return False
        self._send(socket, payload, binary)
        return True

    def _send(self, socket: Socket, payload: bytes, binary: bool) -> None:
        session = socket.session
        if session is not None and self.recovery is not None:  # numbered and logged
            payload = self.recovery.direct_payload(session, payload, binary)
        socket.send_encoded(payload, binary)

    def send_user(self, user: str, payload: bytes, binary: bool) -> int:
        sockets = self.users.sockets(user)
        for socket in sockets:
            self._send(socket, payload, binary)
        return len(sockets)

    def disconnect_user(self, user: str, code: int, reason: str) -> int:
        sockets = self.users.sockets(user)
        for socket in sockets:
            socket.disconnect(code, reason)
        return len(sockets)

    def send_held(self, sid: str, payload: bytes, binary: bool) -> bool:
        return self.recovery is not None and self.recovery.send_held(sid, payload, binary)

    def session_moved(self, sid: str) -> None:
        if self.recovery is not None:
            self.recovery.drop(sid)

    def counters(self) -> dict[str, int | float]:
        counters: dict[str, int | float] = {
            "connections": len(self.sockets),
            "rooms": len(self.registry),
        }
        stats = self.stats
        if stats is not None:
            counters.update(
                messagesIn=stats.messages_in, messagesOut=stats.messages_out,
                bytesIn=stats.bytes_in_wire, bytesOut=stats.bytes_out_wire,
                totalConnections=stats.total_connections,
            )
        return counters
