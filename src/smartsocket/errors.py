"""Exceptions raised by SmartSocket; every one is importable from ``smartsocket``.

    SmartSocketError
    ├── ConfigError              an option has an invalid value (raised at start-up)
    ├── MissingDependency        an option needs an extra that is not installed (also ImportError)
    ├── AckError                 a peer answered an ack with an error (or a handler raises it)
    │   ├── AckTimeout           no answer within the timeout (also a TimeoutError)
    │   └── LimitExceeded        a limit refused something (room_limit, rate_limited, ...)
    ├── AuthError                an ``authenticate`` hook refuses a connection
    ├── ConnectionClosed         the connection closed; carries the close code and reason
    ├── Unauthorized             the server wants credentials the client lacks or it refused
    │                            (also a ConnectionError)
    ├── OfflineBufferFull        the client buffered as many sends as it may while offline
    └── EmitterError             an emitter's broker did not take a message (also a
                                 ConnectionError)

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


class MissingDependency(SmartSocketError, ImportError):
    """An option needs an optional dependency that is not installed; the message names the
    pip command (``pip install 'smartsocket[redis]'``)."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature}: pip install 'smartsocket[{extra}]'")
        self.extra = extra


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


class Unauthorized(SmartSocketError, ConnectionError):
    """Raised by ``Client.connect()`` at once when the server requires authentication:
    ``code`` is ``"auth_required"`` (the client presented no credentials; the server said so
    with ``$auth_required``) or ``"unauthorized"`` (it refused them: HTTP 401 or close 4001).
    Reconnecting cannot help: give the client a token (``?token=`` in the URL, or an
    ``Authorization: Bearer`` header)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class OfflineBufferFull(SmartSocketError):
    """The client is offline and its buffer of pending sends is full."""


class EmitterError(SmartSocketError, ConnectionError):
    """An ``Emitter`` or ``AsyncEmitter`` could not hand a message to the broker: unreachable
    within ``timeout``, the link broke while sending (some messages of that call may have gone
    out), or the emitter is closed."""
