"""The server's heartbeat: ``$ping`` every socket each ``ping_interval`` and close those that
missed the last ``$pong``; it also forgets the rate buckets of rooms that emptied.

``Liveness`` owns the pings in flight (a socket's ``$pong`` reaches it through the socket's
``SocketContext``): a socket holds no heartbeat state of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.metrics import Stats
    from smartsocket.server.rooms import RoomLimits, RoomRegistry
    from smartsocket.server.socket import Socket


class Liveness:
    """The ``$ping`` each socket was sent and has not answered yet (value, monotonic time).
    An entry leaves with the matching ``$pong`` or with the check of its ping."""

    __slots__ = ("pending", "stats")

    def __init__(self) -> None:
        self.pending: dict[Socket, tuple[int, float]] = {}
        self.stats: Stats | None = None  # round trips are recorded here (the server sets it)

    def ping(self, sockets: Iterable[Socket], value: int, now: float) -> list[Socket]:
        """``$ping`` the sockets that have no ping unanswered; the ones pinged. A socket with
        a ping still unanswered is not pinged again: the check of that ping decides its fate.
        Sockets with a heartbeat of their own (``Socket.heartbeat`` false: Socket.IO) are
        skipped."""
        pending = self.pending
        pinged = [s for s in sockets if s.heartbeat and s not in pending]
        payload = envelope.encode_event("$ping", value)
        for socket in pinged:
            pending[socket] = (value, now)
            socket.send_encoded(payload, False)
        return pinged

    def pong(self, socket: Socket, data: Any) -> None:
        sent = self.pending.get(socket)
        if sent is not None and sent[0] == data:
            del self.pending[socket]
            if self.stats is not None:
                self.stats.record_rtt(time.monotonic() - sent[1])

    def check(self, pinged: list[Socket], value: int) -> None:
        """Close the sockets that did not answer ping ``value`` in time."""
        pending = self.pending
        for socket in pinged:
            sent = pending.get(socket)
            if sent is not None and sent[0] == value:
                del pending[socket]
                if socket.connected:
                    socket.fail(CloseCode.HEARTBEAT_TIMEOUT, "no $pong in time")


async def heartbeat(
    sockets: Mapping[str, Socket], config: Config, liveness: Liveness, room_limits: RoomLimits,
    registry: RoomRegistry,
) -> None:
    """Every ping_interval: close sockets that missed the last $pong, ping the rest."""
    interval, timeout = config.ping_interval, config.ping_timeout
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        value = int(time.monotonic() * 1000)
        now = time.monotonic()
        room_limits.prune(registry)  # rooms that emptied forget their buckets
        pinged = liveness.ping(sockets.values(), value, now)
        loop.call_later(timeout, liveness.check, pinged, value)
