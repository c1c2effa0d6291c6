"""Fan-out: one encoded payload to many local sockets.

``Fanout`` owns turning a payload into frames (framed once, compressed at most once) and
writing them to the members of a broadcast, for broadcasts made here and broadcasts from other
nodes alike. It also owns the one decision whether a broadcast is compressed before it is
published to other nodes (``compress_for_publish``), so the origin and every receiving node
make the same choice.

Exclusions have one shape at each boundary: what the application passes (``Exclude``: sockets,
socket ids, or an iterable of both) becomes socket ids (``exclude_ids``) for anything that
leaves this node or is logged, and a set of local sockets (``skip``) for the delivery loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from smartsocket import compression
from smartsocket.server.socket import OWN, PLAIN, Socket
from smartsocket.transport import build_frame

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.metrics import Stats

SendFrame = Callable[[bytes], None]
Exclude = Socket | str | Iterable[Socket | str] | None
# isinstance with a tuple: no ``Socket | str`` union object made per broadcast.
ONE = (Socket, str)


def exclude_ids(exclude: Exclude) -> tuple[str, ...]:
    """The socket ids ``exclude`` names (sockets by their id), each once, in order."""
    if exclude is None:
        return ()
    items = (exclude,) if isinstance(exclude, ONE) else exclude
    return tuple(dict.fromkeys(item if isinstance(item, str) else item.id for item in items))


def skip_set(exclude: Exclude, sockets: Mapping[str, Socket]) -> set[Socket]:
    """The local sockets ``exclude`` names (ids of sockets not on this node are ignored)."""
    items: Iterable[Socket | str] = (
        (exclude,) if isinstance(exclude, ONE) else exclude or ()
    )
    skip: set[Socket] = set()
    for item in items:
        if isinstance(item, Socket):
            skip.add(item)
        else:
            socket = sockets.get(item)
            if socket is not None:
                skip.add(socket)
    return skip


class Fanout:
    """Delivery of encoded payloads to local members (rebuilt when the config changes)."""

    __slots__ = ("compress", "level", "stats", "threshold")

    def __init__(self, config: Config, stats: Stats | None) -> None:
        self.compress = config.enable_compression
        self.threshold = config.compression_threshold
        self.level = config.compression_level
        self.stats = stats

    def compress_for_publish(self, payload: bytes) -> tuple[bytes | None, bool]:
        """``(deflated, tried)`` for a broadcast that other nodes deliver too: compressed here
        once when some member anywhere may take it compressed (None: it does not pay)."""
        if self.compress and len(payload) >= self.threshold:
            return compression.compress_once(payload, threshold=0, level=self.level), True
        return None, False

    def deliver(
        self, members: Mapping[Socket, SendFrame], payload: bytes, binary: bool,
        skip: set[Socket] | None, deflated: bytes | None = None, tried: bool = False,
    ) -> int:
        """Frame once (compress at most once; ``tried``: ``deflated`` is the compressed payload
        already made, or None if it does not pay), then hand the same bytes to each member
        (hot path: one bound-method call per delivery). Returns the deliveries made."""
        frame = build_frame(payload, binary)  # positional: the cheapest call
        size = len(payload)
        if not self.compress or size < self.threshold:
            # No member can get a compressed frame: the tightest loop.
            if skip is None:
                for send in members.values():
                    send(frame)
                count = len(members)
            else:
                count = 0
                for socket, send in members.items():
                    if socket not in skip:
                        send(frame)
                        count += 1
            if self.stats is not None:
                self.stats.record_out(count, size, size)
            return count
        return self._compressed(members, payload, frame, binary, skip, deflated, tried)

    def _compressed(
        self, members: Mapping[Socket, SendFrame], payload: bytes, frame: bytes, binary: bool,
        skip: set[Socket] | None, deflated: bytes | None, tried: bool,
    ) -> int:
        """Some members may take compressed frames. Members without context takeover share
        one compressed frame, compressed on first need (or given: ``tried``); the rest get
        the plain frame or use their own deflater."""
        size = len(payload)
        shared: bytes | None = None  # the compressed frame, once made
        wire = size
        plain = shared_count = own_count = 0
        stats = self.stats
        for socket, send in members.items():
            if skip is not None and socket in skip:
                continue
            mode = socket.compression_mode
            if mode == PLAIN:
                send(frame)
                plain += 1
            elif mode == OWN:
                own_wire = socket.send_own_compressed(payload, binary)
                own_count += 1
                if stats is not None:
                    stats.record_out(1, size, own_wire)
            else:
                if shared is None:
                    compressed = deflated if tried else compression.compress_once(
                        payload, threshold=0, level=self.level
                    )
                    if compressed is None:  # saves < 10%: everyone gets the plain frame
                        shared = frame
                    else:
                        shared = build_frame(compressed, binary=binary, rsv1=True)
                        wire = len(compressed)
                send(shared)
                shared_count += 1
        if stats is not None:
            stats.record_out(plain, size, size)
            stats.record_out(shared_count, size, wire)
        return plain + shared_count + own_count


def count_members(members: Mapping[Socket, SendFrame], skip: set[Socket] | None) -> int:
    """How many members a delivery reaches (when another part delivers it)."""
    if skip is None:
        return len(members)
    return sum(1 for socket in members if socket not in skip)
