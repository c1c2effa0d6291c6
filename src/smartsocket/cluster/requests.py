"""Requests between nodes and their replies.

A request (``messages.Request``: one message type per kind) goes to one node's inbox, or to
``<prefix>.all`` for every node this one knows; each node answers with a ``Reply`` (same id)
to the sender's inbox. The request's future gets the replies by node once every expected node
answered, was dropped (liveness), or the timeout passed: a caller always gets an answer,
possibly partial, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.cluster import messages as m

if TYPE_CHECKING:
    from smartsocket.cluster.node import ClusterNode

logger = logging.getLogger("smartsocket.cluster")

OnReply = Callable[[str, m.Reply], None]


class Pending:
    """A request waiting for replies from ``expected`` nodes."""

    __slots__ = ("expected", "future", "on_reply", "replies", "timer")

    def __init__(
        self, expected: set[str], future: asyncio.Future[dict[str, m.Reply]],
        on_reply: OnReply | None,
    ) -> None:
        self.expected = expected
        self.future = future
        self.on_reply = on_reply
        self.replies: dict[str, m.Reply] = {}
        self.timer: asyncio.TimerHandle | None = None

    def check(self) -> None:
        if not self.future.done() and self.expected <= self.replies.keys():
            self.future.set_result(self.replies)


class Requests:
    """A node's requests in flight."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._pending: dict[int, Pending] = {}
        self._next_id = 0

    def request(
        self, query: m.Request, target: str | None, timeout: float,
        on_reply: OnReply | None = None,
    ) -> asyncio.Future[dict[str, m.Reply]]:
        """Send ``query`` to node ``target`` (None: every known node); the future gets the
        replies by node once each expected node answered, was dropped, or ``timeout`` passed."""
        node = self.node
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, m.Reply]] = loop.create_future()
        expected = {target} if target is not None else set(node.nodes)
        if not expected:
            future.set_result({})
            return future
        self._next_id += 1
        query.id = request_id = self._next_id
        pending = self._pending[request_id] = Pending(expected, future, on_reply)
        pending.timer = loop.call_later(timeout, self.expire, request_id)
        future.add_done_callback(lambda _: self._forget(request_id))
        channel = node.all_channel if target is None else node.inbox(target)
        if not node.publish(channel, query):
            future.set_result({})
        return future

    def expire(self, request_id: int) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and not pending.future.done():
            missing = sorted(pending.expected - pending.replies.keys())
            logger.debug("request %d: no reply from %s", request_id, missing)
            pending.future.set_result(pending.replies)

    def _forget(self, request_id: int) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    def reply(self, target: str, request_id: int, **fields: Any) -> None:
        self.node.publish(self.node.inbox(target), m.Reply(request_id, **fields))

    def on_reply(self, src: str, reply: m.Reply) -> None:
        pending = self._pending.get(reply.id)
        if pending is None:
            return
        pending.replies[src] = reply
        if pending.on_reply is not None:
            pending.on_reply(src, reply)
        pending.check()

    def drop_node(self, node_id: str) -> None:
        """``node_id`` is gone: stop waiting for it."""
        for pending in list(self._pending.values()):
            if node_id in pending.expected:
                pending.expected.discard(node_id)
                pending.check()

    def close(self) -> None:
        """Shutting down: every request gets the replies it has."""
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_result(pending.replies)
