"""Connection-state recovery for clients that report one offset (Socket.IO 4.6+).

A native client reports its position in every room and its last direct ``seq``; a Socket.IO
client remembers only the offset of the last event it received (the last argument of each
positioned event) and sends it back with its ``pid``. Offsets are SmartSocket positions as
opaque strings (``mark``): ``"<offset>~<epoch>~<room>"`` for a room message, ``"<seq>"`` for
a direct one, the same string for every member of a broadcast (encoded once). The server keeps
the marks it sent to each such client, in send order (``SessionState.marks``, at most
``history_size``); the client's offset names one of them, and everything sent before it
arrived, so ``ResumePoint.positions`` turns one offset into every room's position and the
direct ``seq`` the ``Resumer`` needs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from smartsocket.recovery.state import SessionState


def room_mark(room: str, epoch: str, offset: int) -> str:
    return f"{offset}~{epoch}~{room}"


def mark_of(meta: Any) -> str | None:
    """The mark of a native message's position (its 4th item), None if it has none."""
    if type(meta) is int:
        return str(meta)
    if type(meta) is list and len(meta) == 3:
        room, epoch, offset = meta
        if type(room) is str and type(epoch) is str and type(offset) is int:
            return room_mark(room, epoch, offset)
    return None


def record(state: SessionState, mark: str, limit: int) -> None:
    """``mark`` was sent to the session's client. A mark that falls out of the window
    becomes the floor of its room (``joined``) or of direct messages (``marks_seq``)."""
    marks = state.marks
    if marks is None:
        marks = state.marks = deque()
    marks.append(mark)
    if len(marks) > limit:
        old = marks.popleft()
        head, _, rest = old.partition("~")
        if rest:
            epoch, _, room = rest.partition("~")
            if room in state.joined:
                state.joined[room] = (epoch, int(head))
            state.marks_seq = max(state.marks_seq, 0)
        else:
            state.marks_seq = max(state.marks_seq, int(head))


class ResumePoint:
    """A CONNECT with ``pid`` (``"<sid>.<token>"``) and ``offset``: the session to resume
    and the last message its client received."""

    __slots__ = ("offset", "sid", "token")

    def __init__(self, sid: str, token: str, offset: str | None) -> None:
        self.sid = sid
        self.token = token
        self.offset = offset

    @classmethod
    def parse(cls, pid: str, offset: str | None) -> ResumePoint | None:
        if "." not in pid:
            return None
        sid, _, token = pid.rpartition(".")
        return cls(sid, token, offset)

    @property
    def pid(self) -> str:
        return pid_of(self.sid, self.token)

    def positions(self, state: SessionState) -> tuple[dict[str, Any], int] | None:
        """The client's room positions (``room -> [epoch, offset]``) and last direct seq,
        from the marks sent up to its offset; None if its offset is not among them."""
        marks = list(state.marks or ())
        floor = max(state.marks_seq, 0)
        if self.offset is None:  # it got no positioned message: what it joined with
            return ({}, floor) if state.marks_seq < 0 else None
        try:
            last = len(marks) - 1 - marks[::-1].index(self.offset)
        except ValueError:
            return None
        offsets: dict[str, Any] = {}
        seq = floor
        for mark in marks[: last + 1]:
            head, _, rest = mark.partition("~")
            if rest:
                epoch, _, room = rest.partition("~")
                offsets[room] = [epoch, int(head)]
            else:
                seq = int(head)
        return offsets, seq


def pid_of(sid: str, token: str) -> str:
    """The private session id a Socket.IO client resumes with."""
    return f"{sid}.{token}"
