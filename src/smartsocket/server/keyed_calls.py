"""Idempotent calls (recovery, docs/protocol.md): a call with an idempotency key runs once
per session. A client that retries it after a reconnect gets the recorded outcome, or waits
for the run still going; the outcome is kept in the session's ``Replies``
(recovery/state.py). ``Socket`` hands keyed events here (``admit``) and, when a keyed call's
handler is done, its outcome (``settle``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smartsocket.protocol.codes import ErrorCode
from smartsocket.recovery.state import Replies

if TYPE_CHECKING:
    from smartsocket.protocol.envelope import Event
    from smartsocket.recovery.state import Failure, SessionState
    from smartsocket.server.context import SocketContext
    from smartsocket.server.socket import Socket

def admit(socket: Socket, ctx: SocketContext, packet: Event) -> bool:
    """An event with an idempotency key: True if its handlers should run."""
    key = packet.meta
    ack_id = packet.ack_id
    if ack_id is None or not (
        (type(key) is str and 0 < len(key) <= 64) or (type(key) is int and key > 0)
    ):
        socket.refuse(
            ErrorCode.BAD_MESSAGE, "the 4th item (idempotency key) needs an ack id and "
            "must be a string of 1-64 characters or a positive integer",
            event=packet.name, ack_id=ack_id, binary=packet.binary,
        )
        return False
    rec = socket.session
    if rec is None:  # recovery off: nothing is retried, keys change nothing
        return True
    replies = rec.replies
    if replies is None:
        recovery = ctx.recovery
        assert recovery is not None
        replies = rec.replies = Replies(recovery.reply_limit)
    done = replies.done.get(key)
    if done is not None:  # ran already: answer again
        result, error = done
        if error is None:
            socket.answer(ack_id, result, packet.binary)
        else:
            socket.reject(error[0], error[1], ack_id=ack_id, retry_after=error[2],
                          binary=packet.binary)
        return False
    running = replies.is_running(key)
    replies.running[ack_id] = (key, socket)
    return not running  # still running (from before the reconnect): answered when done


def is_keyed(rec: SessionState, ack_id: int) -> bool:
    """Whether ``ack_id`` is a keyed call still running (its outcome goes to ``settle``)."""
    return rec.replies is not None and ack_id in rec.replies.running


def settle(
    socket: Socket, ctx: SocketContext, rec: SessionState, ack_id: int, result: Any,
    error: Failure | None, binary: bool,
) -> None:
    """A keyed call finished: record its outcome and answer every call waiting for it on a
    live connection (a retry on a newer connection than this one gets it too; a connection
    that dropped gets nothing, its client retries)."""
    assert rec.replies is not None
    waiting = rec.replies.finish(ack_id, result, error)
    if rec.owner is None:  # held: in a cluster, its stored copy learns the outcome
        ctx.resumer.session_changed(socket.id, rec)
    for waiting_id, waiter in waiting:
        if error is None:
            waiter.answer(waiting_id, result, binary)
        else:
            waiter.reject(error[0], error[1], ack_id=waiting_id, retry_after=error[2],
                          binary=binary)
