"""Operations on every connection of a user, on every node (``to_user``, ``disconnect_user``).

Nothing tells one node where another node's users are, so both go to every node on
``<prefix>.all``, the channel every node hears already: no subscription per user (which
would cost the broker a channel for each connected user, and a subscribe and an unsubscribe
for each of their first and last connections), at the price of every node decoding a small
message that may concern none of its sockets. Clusters have few nodes; a user's connections
are looked up in an index on each (``LocalServer.send_user``), never by a scan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smartsocket.cluster import messages as m
from smartsocket.protocol import envelope
from smartsocket.protocol.names import check_event

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode


class UserOperations:
    """The node's side of the user operations: sending them, acting on them."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def send(self, user: str, event: str, data: Any, binary: bool | None) -> int:
        """``event`` for every connection of ``user``: delivered to this node's at once
        (returns how many), published for the other nodes' (uncounted)."""
        check_event(event)
        if binary is None:
            binary = envelope.needs_binary(data)
        payload = envelope.encode_event(event, data, binary=binary)
        node = self.node
        sent = node.local.send_user(user, payload, binary)
        if node.active:
            node.publish(node.all_channel, m.SendToUser(user, payload, binary))
        return sent

    async def disconnect(self, user: str, code: int, reason: str, timeout: float) -> int:
        """Close every connection of ``user``; how many, with the other nodes' counts (a node
        that does not answer within ``timeout`` is not counted, though it acts on it)."""
        node = self.node
        closed = node.local.disconnect_user(user, code, reason)
        if not node.active:
            return closed
        query = m.DisconnectUser(0, user, code, reason)
        replies = await node.requests.request(query, None, timeout)
        for reply in replies.values():
            count = m.unpack(reply.result) if reply.ok else None
            if type(count) is int and count > 0:
                closed += count
        return closed

    # acting on another node's

    def send_here(self, src: str, notice: m.SendToUser) -> None:
        self.node.local.send_user(notice.user, notice.payload, notice.binary)

    def disconnect_here(self, src: str, query: m.DisconnectUser) -> None:
        closed = self.node.local.disconnect_user(query.user, query.code or 4000, query.reason)
        self.node.requests.reply(src, query.id, result=m.pack(closed))
