"""Where a client is in its session (protocol.md 8): the last position seen per room (epoch,
offset) and of its direct messages, sent in ``$resume``, and the check that drops what a
resume replays twice."""

from __future__ import annotations

from typing import Any


class Positions:
    """The positions of one session; ``reset`` when the server starts a new one."""

    __slots__ = ("rooms", "seq")

    def __init__(self) -> None:
        self.rooms: dict[str, tuple[str, int]] = {}  # room -> (epoch, offset)
        self.seq = 0  # the last direct message

    def reset(self) -> None:
        """A new session: the positions of the old one mean nothing."""
        self.rooms.clear()
        self.seq = 0

    def offsets(self) -> dict[str, list[Any]]:
        """The rooms' positions as ``$resume`` carries them."""
        return {room: list(pos) for room, pos in self.rooms.items()}

    def forget(self, room: str) -> None:
        """After a ``$gap``: what follows may carry any position (a new epoch, or offsets seen
        before a rewind); start the room afresh, so nothing new is taken for a duplicate."""
        self.rooms.pop(room, None)

    def first_time(self, position: Any) -> bool:
        """Record a message's position (protocol.md 8); False if it was seen already."""
        if type(position) is int:
            if position <= self.seq:
                return False
            self.seq = position
        elif type(position) is list and len(position) == 3:
            room, epoch, offset = position
            if type(room) is not str or type(offset) is not int:
                return True
            last = self.rooms.get(room)
            if last is not None and last[0] == epoch and offset <= last[1]:
                return False
            self.rooms[room] = (epoch, offset)
        return True
