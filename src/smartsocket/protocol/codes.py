"""Close codes and error codes of protocol v1 (``docs/protocol.md`` is the reference).

Close codes tell a client what to do next; error codes travel in ack errors and ``$error`` events.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes the server sends, and what a client should do on each."""

    NORMAL = 1000  # done: do not reconnect
    GOING_AWAY = 1001  # server shutting down or restarting: reconnect
    PROTOCOL_ERROR = 1002  # broken framing: fix the client
    UNSUPPORTED_DATA = 1003
    INVALID_TEXT = 1007  # text frame that is not UTF-8, or a bad deflate stream
    POLICY_VIOLATION = 1008  # broke a protocol rule repeatedly
    MESSAGE_TOO_BIG = 1009  # message over max_message_size
    INTERNAL_ERROR = 1011  # server bug: reconnect with backoff
    TRY_AGAIN_LATER = 1013  # server full: reconnect later
    KICKED = 4000  # the application disconnected this socket: do not reconnect automatically
    UNAUTHORIZED = 4001  # authentication failed: do not reconnect
    HEARTBEAT_TIMEOUT = 4002  # no $pong in time: reconnect
    TOKEN_EXPIRED = 4003  # the connection token expired without a $refresh: new token, reconnect
    RATE_LIMITED = 4008  # sustained abuse: reconnect with backoff
    SLOW_CONSUMER = 4009  # read too slowly, its send buffer overflowed: reconnect


# RFC 6455 7.4: codes a peer may put in a close frame. 1004-1006 and 1015 are reserved for
# local use, 0-999 are unused, 5000+ are undefined.
_VALID_RANGES = ((1000, 1003), (1007, 1014), (3000, 4999))


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (sent or received)."""
    return any(low <= code <= high for low, high in _VALID_RANGES)


def is_app_close_code(code: int) -> bool:
    """Whether an application may close a connection with ``code``: 1000 or 3000-4999."""
    return code == 1000 or 3000 <= code <= 4999


# Close codes after which a client should not reconnect by itself.
NO_RECONNECT_CODES = frozenset({CloseCode.NORMAL, CloseCode.KICKED, CloseCode.UNAUTHORIZED})


class ErrorCode(StrEnum):
    """Codes carried by ack errors and ``$error`` events."""

    BAD_MESSAGE = "bad_message"  # not a valid v1 envelope (not JSON/MessagePack, wrong shape)
    RESERVED_EVENT = "reserved_event"  # a client sent a $-name the protocol does not accept from it
    UNKNOWN_ACK = "unknown_ack"  # an ack reply for an id that is not pending
    UNKNOWN_EVENT = "unknown_event"  # an event that wants an ack has no handler
    INVALID_PAYLOAD = "invalid_payload"  # the payload failed the handler's type validation
    INTERNAL_ERROR = "internal_error"  # the handler raised an unexpected exception
    TIMEOUT = "timeout"  # an ack did not arrive in time (local only, never sent)
    DISCONNECTED = "disconnected"  # the connection closed before the ack arrived (local only)
    UNAUTHORIZED = "unauthorized"  # the socket must $auth before anything else
    INVALID_NAME = "invalid_name"  # event or room name too long or with control characters
    RATE_LIMITED = "rate_limited"  # too many events or bytes; see retryAfter
    ROOM_LIMIT = "room_limit"  # the socket is in max_rooms_per_socket rooms already
    TOO_MANY_PENDING = "too_many_pending"  # max_pending_acks calls are already waiting
    FORBIDDEN = "forbidden"  # a room policy refused a join or publish (docs/auth.md)
    OVERLOADED = "overloaded"  # the broker link cannot take more right now; see retryAfter
