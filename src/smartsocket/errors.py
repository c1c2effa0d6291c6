"""Exceptions raised by SmartSocket; every one is importable from ``smartsocket``.

    SmartSocketError
    ├── ConfigError              an option has an invalid value (raised at start-up)
    ├── AckError                 a peer answered an ack with an error (or a handler raises it)
    │   ├── AckTimeout           no answer within the timeout (also a TimeoutError)
    │   └── LimitExceeded        a limit refused something (room_limit, rate_limited, ...)
    ├── AuthError                an ``authenticate`` hook refuses a connection
    ├── ConnectionClosed         the connection closed; carries the close code and reason
    └── OfflineBufferFull        the client buffered as many sends as it may while offline

``LimitExceeded`` and ``AuthError`` live in ``smartsocket.security``, beside the checks that
raise them.
"""

from __future__ import annotations


class SmartSocketError(Exception):
    """Root of every exception SmartSocket raises on purpose."""


class ConfigError(SmartSocketError, ValueError):
    """An option has an invalid value. ``option`` names it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class AckError(SmartSocketError):
    """An ack error: raised by ``call()`` when the peer replied with an error.

    Handlers raise it to answer an ack with a structured error instead of a result, e.g.
    ``raise AckError("not_in_room", "join the room first")``.
    """

    def __init__(self, code: str, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, for rate limits


class AckTimeout(AckError, TimeoutError):
    """No ack arrived within the timeout."""

    def __init__(self, event: str, timeout: float) -> None:
        super().__init__("timeout", f"no ack for {event!r} within {timeout:g} s")
        self.event = event
        self.timeout = timeout


class ConnectionClosed(SmartSocketError):
    """The connection is closed (``code`` and ``reason`` as received or sent)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed (code {code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class OfflineBufferFull(SmartSocketError):
    """The client is offline and its buffer of pending sends is full."""
