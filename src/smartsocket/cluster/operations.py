"""Operations on sockets wherever they are connected, and cluster-wide socket listings.

Socket ids in a cluster start with their node's id (``<node>.<random>``), so an operation on a
remote socket (send, call, join, leave, disconnect) goes straight to its node's inbox as a
``Query``; a socket that is here takes the local path and never touches the broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from smartsocket.cluster import messages as m
from smartsocket.errors import AckError, AckTimeout, ConnectionClosed
from smartsocket.protocol import envelope
from smartsocket.protocol.names import check_event
from smartsocket.security import LimitExceeded

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode
    from smartsocket.cluster.ports import LocalSocket

_RECORDS = msgspec.msgpack.Decoder(list[tuple[str, list[str], dict[str, Any]]])


def node_of(sid: str) -> str | None:
    """The node a socket id belongs to (None for an id without one)."""
    node, dot, _ = sid.partition(".")
    return node if dot else None


class Operations:
    """The node's side of operations on sockets: asking other nodes, answering them."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    # asking

    def _target(self, sid: str) -> str:
        node = self.node.moved.get(sid) or node_of(sid)
        if not self.node.active or node is None or node == self.node.node_id:
            raise _NoSocket(sid)
        return node

    def send(self, sid: str, event: str, data: Any, binary: bool | None) -> bool:
        socket = self.node.local.socket(sid)
        if socket is not None:
            socket.send(event, data, binary=binary)
            return True
        try:
            node = self._target(sid)
        except _NoSocket:
            return False
        check_event(event)
        if binary is None:
            binary = envelope.needs_binary(data)
        payload = envelope.encode_event(event, data, binary=binary)
        query = m.Query(0, "send", sid=sid, data=payload, binary=binary, want_reply=False)
        return self.node.publish(self.node.inbox(node), query)

    async def operate(
        self, kind: str, sid: str, room: str | None = None, *, code: int = 0,
        reason: str = "", timeout: float = 2.0,
    ) -> bool:
        """join / leave / disconnect a socket anywhere; False if there is no such socket."""
        socket = self.node.local.socket(sid)
        if socket is not None:
            return operate_local(socket, kind, room, code, reason)
        try:
            node = self._target(sid)
        except _NoSocket:
            return False
        query = m.Query(0, kind, sid=sid, room=room, code=code, reason=reason)
        reply = (await self.node.requests.request(query, node, timeout)).get(node)
        if reply is None:
            raise TimeoutError(f"node {node} did not answer {kind} within {timeout:g} s")
        if not reply.ok and reply.error not in (None, "no_socket"):
            raise LimitExceeded(reply.error, reply.message)
        return reply.ok

    async def call(
        self, sid: str, event: str, data: Any, timeout: float | None, binary: bool | None
    ) -> Any:
        socket = self.node.local.socket(sid)
        if socket is not None:
            return await socket.call(event, data, timeout=timeout, binary=binary)
        try:
            node = self._target(sid)
        except _NoSocket:
            raise ConnectionClosed(None, f"no socket {sid!r}") from None
        check_event(event)
        if timeout is None:
            timeout = self.node.message_timeout
        query = m.Query(
            0, "call", sid=sid, event=event, data=m.pack(data),
            binary=bool(binary) if binary is not None else envelope.needs_binary(data),
            timeout=timeout,
        )
        # The remote socket's own timer decides; ours only covers a node that went away.
        wait = timeout + max(1.0, self.node.node_timeout)
        reply = (await self.node.requests.request(query, node, wait)).get(node)
        if reply is None:
            raise AckTimeout(event, timeout)
        if reply.ok:
            return m.unpack(reply.result)
        if reply.error == "timeout":
            raise AckTimeout(event, timeout)
        if reply.error in ("no_socket", "disconnected"):
            raise ConnectionClosed(None, reply.message)
        raise AckError(reply.error or "error", reply.message)

    async def fetch_sockets(
        self, room: str | None = None, timeout: float = 2.0
    ) -> list[m.SocketRecord]:
        node = self.node
        records = [
            m.SocketRecord(sid, node.node_id, rooms, presence)
            for sid, rooms, presence in self.local_records(room)
        ]
        if not node.active:
            return records
        replies = await node.requests.request(m.Query(0, "sockets", room=room), None, timeout)
        for src, reply in replies.items():
            if reply.ok and reply.result is not None:
                records.extend(
                    m.SocketRecord(sid, src, rooms, presence)
                    for sid, rooms, presence in _RECORDS.decode(reply.result)
                )
        return records

    def local_records(self, room: str | None) -> list[tuple[str, list[str], dict[str, Any]]]:
        return [(s.id, sorted(s.rooms), s.presence) for s in self.node.local.members(room)]

    # answering

    def answer(self, src: str, query: m.Query) -> None:
        """A query from node ``src`` about this node's sockets."""
        kind = query.kind
        reply = self.node.requests.reply
        sender, src = src, query.reply_to or src
        if kind == "sockets":
            reply(src, query.id, result=m.pack(self.local_records(query.room)))
            return
        sid = query.sid or ""
        if kind in ("moved", "gone"):
            self._moved(sender, kind, sid)
            return
        if kind == "send":
            if query.data is None:
                if self.node.local.socket(sid) is None:
                    self._not_here(src, query)
            elif not self.node.local.send_direct(sid, query.data, query.binary):
                self._not_here(src, query)
            return
        socket = self.node.local.socket(sid)
        if socket is None:
            self._not_here(src, query)
            return
        if kind == "call":
            self.node.spawn(self._remote_call(src, query, socket))
            return
        try:
            operate_local(socket, kind, query.room, query.code, query.reason)
        except AckError as exc:
            reply(src, query.id, ok=False, error=exc.code, message=exc.message)
            return
        reply(src, query.id)

    def _moved(self, sender: str, kind: str, sid: str) -> None:
        """Recovery: a session of ours resumed on ``sender`` (or ended there)."""
        moved = self.node.moved
        if kind == "moved":
            moved[sid] = sender
            if self.node.recovery is not None:
                self.node.recovery.held.pop(sid, None)
        elif moved.get(sid) == sender:
            del moved[sid]

    def _not_here(self, src: str, query: m.Query) -> None:
        """No such socket here: forward to where it resumed, log a message for a session held
        here, or say there is none."""
        sid = query.sid or ""
        target = self.node.moved.get(sid)
        if target is not None and not query.reply_to:  # forwarded once at most
            forwarded = msgspec.structs.replace(query, reply_to=src)
            self.node.publish(self.node.inbox(target), forwarded)
            return
        if (
            query.kind == "send" and query.data is not None
            and self.node.local.send_held(sid, query.data, query.binary)
        ):
            return
        if query.want_reply:
            self.node.requests.reply(src, query.id, ok=False, error="no_socket",
                                     message=f"no socket {sid!r}")

    async def _remote_call(self, src: str, query: m.Query, socket: LocalSocket) -> None:
        reply = self.node.requests.reply
        try:
            result = await socket.call(
                query.event or "", m.unpack(query.data), timeout=query.timeout or None,
                binary=query.binary,
            )
        except AckTimeout as exc:
            reply(src, query.id, ok=False, error="timeout", message=exc.message)
        except AckError as exc:
            reply(src, query.id, ok=False, error=exc.code, message=exc.message)
        except ConnectionClosed as exc:
            reply(src, query.id, ok=False, error="disconnected", message=str(exc))
        except Exception as exc:
            reply(src, query.id, ok=False, error="internal_error", message=str(exc))
        else:
            try:
                packed = m.pack(result)
            except (TypeError, msgspec.EncodeError) as exc:
                reply(src, query.id, ok=False, error="internal_error", message=str(exc))
            else:
                reply(src, query.id, result=packed)


class _NoSocket(LookupError):
    pass


def operate_local(socket: LocalSocket, kind: str, room: str | None, code: int, reason: str) -> bool:
    if kind == "join":
        socket.join(room or "")
    elif kind == "leave":
        socket.leave(room or "")
    elif kind == "disconnect":
        socket.disconnect(code or 4000, reason)
    else:
        raise ValueError(f"unknown operation {kind!r}")
    return True

