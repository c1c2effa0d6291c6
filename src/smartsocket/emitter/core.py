"""The emitter's encoding core: ``EmitterCore`` (the channel and the bytes of each operation,
as a node would publish them), ``Operations`` (the methods, once) and ``Batch``. No I/O."""

from __future__ import annotations

import abc
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from smartsocket.cluster import messages as m
from smartsocket.cluster.brokers.redis_cluster import is_cluster_url
from smartsocket.cluster.brokers.scripts import ScriptCall
from smartsocket.cluster.node import channel_token
from smartsocket.cluster.operations import node_of
from smartsocket.cluster.roomlog import LOG, RoomLogs  # the one tie to recovery
from smartsocket.history import HistoryLimits
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode, is_app_close_code
from smartsocket.protocol.names import check_event, check_user, name_problem

if TYPE_CHECKING:
    from smartsocket.cluster.brokers.base import Outbound

__all__ = ["Batch", "EmitterCore", "Operations"]

R = TypeVar("R")
_pack = msgspec.msgpack.Encoder().encode


class EmitterCore:
    """The channel and the bytes of each operation, as a node would publish them."""

    __slots__ = ("checked", "history", "max_name_length", "prefix",
                 "publish_command", "recovery", "src")

    def __init__(
        self, *, prefix: str = "smartsocket", recovery_window: float = 0.0,
        history_size: int = 100, history_ttl: float = 0.0, max_name_length: int = 128,
        sharded: bool = False,
    ) -> None:
        self.prefix = prefix
        # The sender id of the envelopes: nodes never take it for one of their own; replies
        # to join/leave/disconnect go to an inbox nobody reads.
        self.src = "emitter-" + secrets.token_urlsafe(6).replace(".", "_")
        self.max_name_length = max_name_length
        # Recovery on Redis: room messages are logged like the nodes log them (same script,
        # same arguments, so the server's recovery_window / history_* must be given here; a
        # room whose policy sets history gets its values per call: the emitter has no
        # policies).
        self.recovery = recovery_window > 0
        self.history = HistoryLimits(history_size, history_ttl, recovery_window)
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"
        # Event and room names checked already, with their channel ("" for events): the same
        # few names come again and again (bounded: cleared when full).
        self.checked: dict[tuple[str, str], str] = {}

    @classmethod
    def for_url(cls, url: str, **options: Any) -> EmitterCore:
        return cls(sharded=is_cluster_url(url), **options)

    # channels (cluster/node.py)

    def room_channel(self, room: str) -> str:
        """The room's channel, once its name passed the servers' rule."""
        key = ("room", room)
        channel = self.checked.get(key)
        if channel is None:
            problem = name_problem("room", room, self.max_name_length)
            if problem is not None:
                raise ValueError(f"{problem}: {room!r}")
            channel = self._remember(key, f"{self.prefix}.room.{channel_token(room)}")
        return channel

    def inbox(self, sid: str) -> str:
        node = node_of(sid)
        if node is None:
            raise ValueError(f"not a cluster socket id (<node>.<id>): {sid!r}")
        return f"{self.prefix}.node.{node}"

    # operations

    def publish(
        self, room: str, event: str, data: Any, exclude: str | Iterable[str] | None,
        history_size: int | None = None, history_ttl: float | None = None,
    ) -> Outbound:
        channel = self.room_channel(room)
        payload, binary = self._event(event, data)
        ids = [exclude] if isinstance(exclude, str) else list(exclude or ())
        body = self._encode(m.Broadcast(room, payload, binary, exclude=ids))
        if not self.recovery:
            return channel, body
        # RoomLogs.publish_room's call: positioned and kept by Redis like a node's.
        history = self.history.resolve(history_size, history_ttl)  # as a policy would
        args = [channel, body, history.size, history.expire_ms, secrets.token_urlsafe(6),
                self.publish_command, _pack((payload, binary, ids))]
        return channel, ScriptCall(LOG, RoomLogs.room_keys(channel), args)

    def broadcast(self, event: str, data: Any) -> Outbound:
        payload, binary = self._event(event, data)
        return f"{self.prefix}.all", self._encode(m.Broadcast(None, payload, binary))

    def send(self, sid: str, event: str, data: Any) -> Outbound:
        channel = self.inbox(sid)
        payload, binary = self._event(event, data)
        return channel, self._encode(m.SendTo(sid, payload, binary))

    def join(self, sid: str, room: str) -> Outbound:
        self.room_channel(room)
        return self.inbox(sid), self._encode(m.JoinRoom(0, sid, room))

    def leave(self, sid: str, room: str) -> Outbound:
        self.room_channel(room)
        return self.inbox(sid), self._encode(m.LeaveRoom(0, sid, room))

    def disconnect(self, sid: str, code: int, reason: str) -> Outbound:
        _check_close_code(code)
        return self.inbox(sid), self._encode(m.DisconnectSocket(0, sid, code, reason))

    def to_user(self, user: str | int, event: str, data: Any) -> Outbound:
        payload, binary = self._event(event, data)
        body = self._encode(m.SendToUser(check_user(user), payload, binary))
        return f"{self.prefix}.all", body

    def disconnect_user(self, user: str | int, code: int, reason: str) -> Outbound:
        _check_close_code(code)
        body = self._encode(m.DisconnectUser(0, check_user(user), code, reason))
        return f"{self.prefix}.all", body

    # helpers

    def _encode(self, body: m.Body) -> bytes:
        return m.encode(self.src, body)

    def _event(self, event: str, data: Any) -> tuple[bytes, bool]:
        if ("event", event) not in self.checked:
            check_event(event)
            if len(event) > self.max_name_length:
                raise ValueError(f"event name longer than {self.max_name_length} characters")
            self._remember(("event", event), "")
        binary = envelope.needs_binary(data)
        return envelope.encode_event(event, data, binary=binary), binary

    def _remember(self, key: tuple[str, str], value: str) -> str:
        if len(self.checked) >= 4096:
            self.checked.clear()
        self.checked[key] = value
        return value


class Operations(abc.ABC, Generic[R]):
    """The emitter's methods, over ``_emit``: one place to add an operation."""

    _core: EmitterCore

    @abc.abstractmethod
    def _emit(self, item: Outbound) -> R: ...

    def publish(
        self, room: str, event: str, data: Any = None, *,
        exclude: str | Iterable[str] | None = None, history_size: int | None = None,
        history_ttl: float | None = None,
    ) -> R:
        """``event`` to every member of ``room`` on every node, except the socket ids in
        ``exclude``. With recovery, ``history_size`` / ``history_ttl`` are those of the
        room's policy, if it sets them (None: the emitter's options; docs/emitter.md)."""
        return self._emit(
            self._core.publish(room, event, data, exclude, history_size, history_ttl)
        )

    def broadcast(self, event: str, data: Any = None) -> R:
        """``event`` to every socket of the cluster."""
        return self._emit(self._core.broadcast(event, data))

    def send(self, sid: str, event: str, data: Any = None) -> R:
        """``event`` to socket ``sid`` (its node: the id's prefix)."""
        return self._emit(self._core.send(sid, event, data))

    def join(self, sid: str, room: str) -> R:
        """Make socket ``sid`` join ``room``."""
        return self._emit(self._core.join(sid, room))

    def leave(self, sid: str, room: str) -> R:
        """Make socket ``sid`` leave ``room``."""
        return self._emit(self._core.leave(sid, room))

    def disconnect(self, sid: str, code: int = CloseCode.KICKED, reason: str = "") -> R:
        """Close socket ``sid`` (default code 4000)."""
        return self._emit(self._core.disconnect(sid, code, reason))

    def to_user(self, user: str | int, event: str, data: Any = None) -> R:
        """``event`` to every connection of ``user`` (``socket.user``), on every node."""
        return self._emit(self._core.to_user(user, event, data))

    def disconnect_user(self, user: str | int, code: int = CloseCode.KICKED, reason: str = ""
                        ) -> R:
        """Close every connection of ``user`` on every node (logout, ban; default 4000: the
        sessions are not held for resuming)."""
        return self._emit(self._core.disconnect_user(user, code, reason))


class Batch(Operations[None]):
    """Operations collected by ``emitter.batch()`` and sent in order, in one pipeline, when
    the block ends (nothing is sent if it raises)."""

    def __init__(self, core: EmitterCore) -> None:
        self._core = core
        self.items: list[Outbound] = []

    def _emit(self, item: Outbound) -> None:
        self.items.append(item)


def _check_close_code(code: int) -> None:
    if not is_app_close_code(code):
        raise ValueError(f"close code {code}: 1000 or 3000-4999")
