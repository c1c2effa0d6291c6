"""``SessionStore``: the one interface the server and the resume flow use, whatever keeps the
state (``MemoryStore`` on one node, ``RedisStore`` in a cluster on Redis). The server picks
the store at start-up (``recovery.store_for``) and never asks which one it got.

A store keeps three things (protocol.md section 8):

room history
    every room message with its position (room, epoch, offset); ``read_room`` gives a room's
    epoch, last offset and the entries after an offset. A history whose state may have been
    lost starts a new epoch: positions of the old one can no longer be resumed from.
held sessions
    ``hold`` a dropped session for ``recovery_window`` seconds, ``take`` it once (with its
    token and the same identity), ``drop`` the local record of one that resumed elsewhere.
idempotent replies
    a session's recent call outcomes travel with it (``SessionState.replies``); ``refresh``
    stores them again when a call of a held session finishes.

Direct messages of connected sessions are numbered and logged in memory with every store
(``DirectLog``): they go to the store with their session when it drops.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any, Protocol

import msgspec

from smartsocket.recovery.state import Held, HeldSocket, SessionState


class RoomItem(msgspec.Struct, gc=False):
    """One logged room message: its offset, the payload as logged, and who it skipped."""

    offset: int
    payload: bytes
    binary: bool
    excluded: tuple[str, ...] | list[str] | None
    ms: int = 0  # when it was logged, Unix milliseconds (what the HTTP API's history shows)


class RoomView(msgspec.Struct, gc=False):
    """A room's history as a store reads it: ``current`` is False when the store may have
    lost a tail of it (Redis restarted or failed over since the epoch began)."""

    epoch: str
    last: int
    items: list[RoomItem]
    current: bool = True


class SessionStore(Protocol):
    """Room histories, held sessions and idempotent replies (see the module doc)."""

    window: float  # seconds a dropped session is held
    reply_limit: int  # outcomes of idempotent calls kept per session
    keeps_sessions: bool  # sessions outlive this server (another node may resume them)

    # direct messages (numbered and logged for connected sessions)

    def direct_message(self, state: SessionState, event: str, data: Any, binary: bool) -> bytes:
        ...

    def direct_payload(self, state: SessionState, payload: bytes, binary: bool) -> bytes: ...

    # room history

    def log_room(
        self, room: str, event: str, data: Any, binary: bool, excluded: tuple[str, ...] | None,
    ) -> bytes | None:
        """Encode a room broadcast with its position and log it; None when the broker logs
        room messages as they are published (the caller encodes and publishes them)."""
        ...

    def position(self, room: str) -> tuple[str, int]:
        """Where a socket joining ``room`` now starts: it gets what comes after."""
        ...

    async def read_room(self, room: str, after: int) -> RoomView | None:
        """``room``'s epoch, last offset and entries after offset ``after`` (all with a
        negative one); None if it has no history."""
        ...

    # held sessions

    def hold(self, socket: HeldSocket, state: SessionState) -> None: ...

    def holds(self, sid: str) -> bool:
        """Whether the dropped session ``sid`` is held here (it may still resume)."""
        ...

    def send_held(self, sid: str, payload: bytes, binary: bool) -> bool:
        """A message (encoded, without meta) for a session held here, logged for its resume;
        False if none is."""
        ...

    async def take(self, sid: Any, token: Any, identity: Any) -> Held | None:
        """The held session ``sid`` if ``token`` is its token and ``identity`` its identity,
        removed from the store (a session resumes once); None otherwise."""
        ...

    def drop(self, sid: str) -> None:
        """Forget this node's record of held session ``sid`` (it resumed)."""
        ...

    def refresh(self, sid: str, state: SessionState) -> None:
        """Held session ``sid``'s state changed (a call finished): store it again."""
        ...

    async def missed(self, held: Held, offsets: dict[str, Any], seq: int) -> (
        list[tuple[bytes, bool]] | None
    ):
        """What ``held``'s client missed (payloads in send order) given the positions it
        reports (``offsets``: room -> [epoch, offset]; ``seq``: last direct message); None
        if some of it can no longer be replayed. A room that keeps no history (its policy's
        ``history_size`` 0, ``history.py``) does not fail it: a ``$gap`` notice for the room
        comes first instead, when messages of it may have been missed."""
        ...

    def sweep(self, rooms_in_use: Container[str]) -> list[str]:
        """Drop what expired; the ids of sessions that ended for good here."""
        ...

    def stats(self) -> dict[str, int]: ...
