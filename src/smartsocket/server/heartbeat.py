"""The server's heartbeat: ``$ping`` every socket each ``ping_interval`` and close those that
missed the last ``$pong``; it also forgets the rate buckets of rooms that emptied."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from smartsocket.protocol.codes import CloseCode

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.server.rooms import RoomLimits, RoomRegistry
    from smartsocket.server.socket import Socket


async def heartbeat(
    sockets: Mapping[str, Socket], config: Config, room_limits: RoomLimits,
    registry: RoomRegistry,
) -> None:
    """Every ping_interval: close sockets that missed the last $pong, ping the rest."""
    interval, timeout = config.ping_interval, config.ping_timeout
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        value = int(time.monotonic() * 1000)
        now = time.monotonic()
        # A socket with a $ping still unanswered is not pinged again: the check scheduled
        # for that ping decides its fate.
        pinged = [s for s in sockets.values() if not s.ping_pending]
        room_limits.prune(registry)  # rooms that emptied forget their buckets
        for socket in pinged:
            socket.ping(value, now)
        loop.call_later(timeout, _check_pongs, pinged, value)


def _check_pongs(pinged: list[Socket], value: int) -> None:
    for socket in pinged:
        if socket.connected and socket.ping_overdue(value):
            socket.fail(CloseCode.HEARTBEAT_TIMEOUT, "no $pong in time")
