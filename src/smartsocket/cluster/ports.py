"""What a cluster node needs from its server, as typing ``Protocol``s.

``cluster/`` never imports ``server/``: the server hands its ``ClusterNode`` an object that
satisfies ``LocalServer`` (``server/local.py``), and the node reaches this node's sockets only
through it. Data flows down (server -> cluster) by calls, and up only through these methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class LocalSocket(Protocol):
    """A socket connected to this node, as the cluster acts on it."""

    @property
    def id(self) -> str: ...

    @property
    def presence(self) -> dict[str, Any]: ...

    @property
    def user(self) -> str | None: ...

    @property
    def rooms(self) -> frozenset[str]: ...

    def send(self, event: str, data: Any = None, *, binary: bool | None = None) -> None: ...

    async def call(
        self, event: str, data: Any = None, *, timeout: float | None = None,
        binary: bool | None = None,
    ) -> Any: ...

    def join(self, room: str, *, by_server: bool = ...) -> None: ...

    def leave(self, room: str) -> None: ...

    def disconnect(self, code: int = ..., reason: str = "") -> None: ...


class LocalServer(Protocol):
    """This node's sockets and rooms, for the cluster."""

    def deliver(
        self, room: str | None, payload: bytes, binary: bool, exclude: Sequence[str] = (),
        deflated: bytes | None = None, tried: bool = False,
    ) -> int:
        """Deliver an encoded payload to the local members of ``room`` (None: every socket)
        except the sockets ``exclude`` names; ``deflated``/``tried`` as ``Broadcast``."""
        ...

    def members(self, room: str | None) -> Iterable[LocalSocket]:
        """Local members of ``room`` (None: every connected socket)."""
        ...

    def room_names(self) -> list[str]: ...

    def has_room(self, room: str) -> bool: ...

    def socket(self, sid: str) -> LocalSocket | None: ...

    def send_direct(self, sid: str, payload: bytes, binary: bool) -> bool:
        """An encoded direct message for local socket ``sid`` (numbered when its session is
        recoverable); False if it is not connected here."""
        ...

    def send_user(self, user: str, payload: bytes, binary: bool) -> int:
        """An encoded direct message for every local connection of ``user`` (each numbered
        when its session is recoverable); how many got it."""
        ...

    def disconnect_user(self, user: str, code: int, reason: str) -> int:
        """Close every local connection of ``user``; how many were told to close."""
        ...

    def send_held(self, sid: str, payload: bytes, binary: bool) -> bool:
        """The same for a session held here for resuming; False if none is."""
        ...

    def session_moved(self, sid: str) -> None:
        """Session ``sid``, held here, resumed on another node: forget it here."""
        ...

    def counters(self) -> dict[str, int | float]:
        """This node's figures for its heartbeat (connections, rooms, traffic)."""
        ...
