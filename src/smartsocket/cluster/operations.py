"""Operations on sockets wherever they are connected, and cluster-wide socket listings.

Socket ids in a cluster start with their node's id (``<node>.<random>``), so an operation on a
remote socket (send, call, join, leave, disconnect) goes straight to its node's inbox as one
of the typed messages of ``messages.py``; a socket that is here takes the local path and
never touches the broker.
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

_Record = tuple[str, list[str], dict[str, Any], str | None]  # sid, rooms, presence, user
_RECORDS = msgspec.msgpack.Decoder(list[_Record])


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
        return self.node.publish(self.node.inbox(node), m.SendTo(sid, payload, binary))

    async def operate(self, operation: m.SocketOperation, timeout: float = 2.0) -> bool:
        """Join / leave / disconnect a socket anywhere; False if there is no such socket."""
        socket = self.node.local.socket(operation.sid)
        if socket is not None:
            return apply(socket, operation)
        try:
            node = self._target(operation.sid)
        except _NoSocket:
            return False
        reply = (await self.node.requests.request(operation, node, timeout)).get(node)
        if reply is None:
            raise TimeoutError(
                f"node {node} did not answer {_NAMES[type(operation)]} within {timeout:g} s"
            )
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
        query = m.CallSocket(
            0, sid, event, m.pack(data),
            bool(binary) if binary is not None else envelope.needs_binary(data), timeout,
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
            m.SocketRecord(sid, node.node_id, rooms, presence, user)
            for sid, rooms, presence, user in self.local_records(room)
        ]
        if not node.active:
            return records
        replies = await node.requests.request(m.ListSockets(0, room), None, timeout)
        for src, reply in replies.items():
            if reply.ok and reply.result is not None:
                records.extend(
                    m.SocketRecord(sid, src, rooms, presence, user)
                    for sid, rooms, presence, user in _RECORDS.decode(reply.result)
                )
        return records

    def local_records(self, room: str | None) -> list[_Record]:
        return [
            (s.id, sorted(s.rooms), s.presence, s.user) for s in self.node.local.members(room)
        ]

    # answering

    def list_sockets(self, src: str, query: m.ListSockets) -> None:
        self.node.requests.reply(src, query.id, result=m.pack(self.local_records(query.room)))

    def send_to(self, src: str, notice: m.SendTo) -> None:
        """A direct message from node ``src`` for a socket of this node."""
        if not self.node.local.send_direct(notice.sid, notice.payload, notice.binary):
            self._not_here(src, notice)

    def call_socket(self, src: str, query: m.CallSocket) -> None:
        socket = self.node.local.socket(query.sid)
        if socket is None:
            self._not_here(src, query)
        else:
            self.node.spawn(self._remote_call(query.reply_to or src, query, socket))

    def operate_here(self, src: str, operation: m.SocketOperation) -> None:
        """A join / leave / disconnect from node ``src`` for a socket of this node."""
        socket = self.node.local.socket(operation.sid)
        if socket is None:
            self._not_here(src, operation)
            return
        target = operation.reply_to or src
        try:
            apply(socket, operation)
        except AckError as exc:
            self.node.requests.reply(target, operation.id, ok=False, error=exc.code,
                                     message=exc.message)
            return
        self.node.requests.reply(target, operation.id)

    def session_moved(self, sender: str, notice: m.SessionMoved) -> None:
        """Recovery: a session of ours resumed on ``sender``."""
        self.node.moved[notice.sid] = sender
        self.node.local.session_moved(notice.sid)

    def session_gone(self, sender: str, notice: m.SessionGone) -> None:
        """Recovery: a session of ours that resumed on ``sender`` ended there."""
        if self.node.moved.get(notice.sid) == sender:
            del self.node.moved[notice.sid]

    def _not_here(self, sender: str, query: m.ForSocket) -> None:
        """No such socket here: forward to where it resumed, log a message for a session held
        here, or say there is none."""
        src = query.reply_to or sender
        sid = query.sid
        target = self.node.moved.get(sid)
        if target is not None and not query.reply_to:  # forwarded once at most
            forwarded = msgspec.structs.replace(query, reply_to=src)
            self.node.publish(self.node.inbox(target), forwarded)
            return
        if type(query) is m.SendTo:
            self.node.local.send_held(sid, query.payload, query.binary)
            return  # a notice: never answered
        assert not isinstance(query, m.SendTo)
        self.node.requests.reply(src, query.id, ok=False, error="no_socket",
                                 message=f"no socket {sid!r}")

    async def _remote_call(self, src: str, query: m.CallSocket, socket: LocalSocket) -> None:
        reply = self.node.requests.reply
        try:
            result = await socket.call(
                query.event, m.unpack(query.data), timeout=query.timeout or None,
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


_NAMES: dict[type, str] = {m.JoinRoom: "join", m.LeaveRoom: "leave",
                           m.DisconnectSocket: "disconnect"}


def apply(socket: LocalSocket, operation: m.SocketOperation) -> bool:
    """Run a join / leave / disconnect on a socket of this node."""
    if isinstance(operation, m.JoinRoom):
        socket.join(operation.room, by_server=True)  # server.join: the app's own decision
    elif isinstance(operation, m.LeaveRoom):
        socket.leave(operation.room)
    else:
        socket.disconnect(operation.code or 4000, operation.reason)
    return True
