"""The cluster-wide part of the server API (``SmartSocket`` inherits it).

Every method works on one node too (then "the cluster" is this node), and takes the local
fast path whenever the socket is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.cluster.messages import PresenceMember, SocketRecord
from smartsocket.protocol.codes import CloseCode

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode


class ClusterAPI:
    """Operations on sockets wherever they are connected, cluster-wide queries, server events."""

    _cluster: ClusterNode

    @property
    def node_id(self) -> str:
        """This node's id (the prefix of its sockets' ids in a cluster)."""
        return self._cluster.node_id

    @property
    def degraded(self) -> bool:
        """In a cluster and cut off from the broker: local delivery only, for now."""
        return self._cluster.degraded

    def send(self, sid: str, event: str, data: Any = None, *, binary: bool | None = None) -> bool:
        """Send ``event`` to socket ``sid`` on any node (fire and forget). False when the
        socket is not here and cannot be reached (unknown id, or the broker is down)."""
        return self._cluster.send(sid, event, data, binary)

    async def call(
        self, sid: str, event: str, data: Any = None, *, timeout: float | None = None,
        binary: bool | None = None,
    ) -> Any:
        """``socket.call`` for a socket on any node: its ack reply. Raises AckTimeout, AckError,
        or ConnectionClosed (also when there is no such socket)."""
        return await self._cluster.call(sid, event, data, timeout, binary)

    async def join(self, sid: str, room: str, *, timeout: float = 2.0) -> bool:
        """Make socket ``sid`` (on any node) join ``room``. False: no such socket. Raises
        LimitExceeded like ``socket.join``, TimeoutError if its node does not answer."""
        return await self._cluster.join(sid, room, timeout)

    async def leave(self, sid: str, room: str, *, timeout: float = 2.0) -> bool:
        """Make socket ``sid`` (on any node) leave ``room``. False: no such socket."""
        return await self._cluster.leave(sid, room, timeout)

    async def disconnect(
        self, sid: str, code: int = CloseCode.KICKED, reason: str = "", *, timeout: float = 2.0
    ) -> bool:
        """Close socket ``sid`` on any node (default 4000). False: no such socket."""
        return await self._cluster.disconnect(sid, code, reason, timeout)

    async def fetch_sockets(
        self, room: str | None = None, *, timeout: float = 2.0
    ) -> list[SocketRecord]:
        """Every socket in the cluster (or in ``room``): ``SocketRecord(sid, node, rooms,
        presence)``. Nodes that do not answer within ``timeout`` are left out."""
        return await self._cluster.fetch_sockets(room, timeout)

    async def socket_count(self, room: str | None = None, *, timeout: float = 2.0) -> int:
        """How many sockets the cluster has (in ``room``)."""
        return len(await self._cluster.fetch_sockets(room, timeout))

    async def presence(self, room: str, *, timeout: float = 2.0) -> list[PresenceMember]:
        """``room``'s members cluster-wide with their ``socket.presence`` info."""
        return await self._cluster.presence(room, timeout)

    def on_server_event(
        self, name: str, handler: Callable[..., Any] | None = None
    ) -> Callable[..., Any]:
        """Handle ``name`` sent by another node with ``emit_to_servers``: ``handler(data)`` or
        ``handler(data, node_id)``, sync or async. Usable as a decorator."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._cluster.on_server_event(name, fn)
            return fn

        return register(handler) if handler is not None else register

    def emit_to_servers(self, name: str, data: Any = None) -> bool:
        """Send ``name`` to every other node's ``on_server_event`` handlers (not this one's).
        False when it could not be published (single node, or the broker is down)."""
        return self._cluster.emit_to_servers(name, data)

    def cluster_nodes(self) -> list[str]:
        """Ids of the nodes this one hears (itself first)."""
        return [self._cluster.node_id, *self._cluster.nodes]
