"""Building blocks of the server's defences, free of I/O: token buckets, origin matching,
API keys and name rules. The server wires them in (``server/app.py``, ``server/socket.py``)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from smartsocket.errors import AckError, SmartSocketError


class LimitExceeded(AckError):
    """A limit refused something; handlers that let it propagate answer with this ack error.

    ``retry_after`` (seconds) is set for rate limits.
    """


class AuthError(SmartSocketError):
    """Raise from an ``authenticate`` hook to refuse a connection (its message is logged,
    never sent)."""


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``. Starts full at ``now``.

    Time is integer nanoseconds from the caller's clock (``time.monotonic_ns()`` in the
    server, anything in tests): a message costs one clock read, and the refill depends only on
    the difference of two integers, never on how large they are. (With float seconds from
    ``time.monotonic()``, which counts from boot, ``(t + 0.1) - t`` is not 0.1 once the machine
    has been up for a while.) ``take(now, n)`` returns 0.0 when the tokens were taken, else
    the seconds until they would be there (nothing is taken then).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: int) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: int, amount: float = 1.0) -> float:
        tokens = self._tokens
        if now > self._stamp:  # a caller's clock read may predate the bucket's creation
            tokens = min(self.burst, tokens + (now - self._stamp) * self.rate / 1e9)
            self._stamp = now
        if tokens >= amount:
            self._tokens = tokens - amount
            return 0.0
        self._tokens = tokens
        if amount > self.burst:  # can never fit: wait as if for a full bucket
            return (self.burst - tokens) / self.rate + (amount - self.burst) / self.rate
        return (amount - tokens) / self.rate

    def spend(self, now: int, amount: float) -> float:
        """Take ``amount`` tokens even if they are not there (for what was already done); the
        balance may go negative. Returns the seconds until it is back to zero (0.0: in credit)."""
        tokens = self._tokens
        if now > self._stamp:
            tokens = min(self.burst, tokens + (now - self._stamp) * self.rate / 1e9)
            self._stamp = now
        tokens -= amount
        self._tokens = tokens
        return -tokens / self.rate if tokens < 0 else 0.0

    def give_back(self, amount: float = 1.0) -> None:
        """Return tokens taken for something that was refused after all."""
        self._tokens = min(self.burst, self._tokens + amount)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Events per second and/or bytes per second, with bursts (default: twice the rate).
    A rate of None or 0 is no limit."""

    messages: float | None
    burst: float | None = None
    bytes: float | None = None
    bytes_burst: float | None = None

    def buckets(self, now: int) -> tuple[TokenBucket | None, TokenBucket | None]:
        count = size = None
        if self.messages:
            count = TokenBucket(self.messages, self.burst or 2 * self.messages, now)
        if self.bytes:
            size = TokenBucket(self.bytes, self.bytes_burst or 2 * self.bytes, now)
        return count, size


class Limiter:
    """The buckets of one subject (a socket or a room): one for all events, one per event with
    an override. ``check`` answers how long to wait (0.0: go ahead)."""

    __slots__ = ("_buckets", "_default", "_overrides")

    def __init__(self, default: RateLimit | None, overrides: Mapping[str, RateLimit]) -> None:
        # Buckets are made on first use: an idle connection holds none (memory per socket).
        self._default: RateLimit | tuple[TokenBucket | None, TokenBucket | None] | None = default
        self._overrides = overrides
        self._buckets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] | None = None

    def check(self, event: str, size: int, now: int) -> float:
        """``event`` "": a message that names no event (an ack reply, or one that could not be
        decoded): the socket's default limit ("" is no event's name)."""
        limit = self._overrides.get(event) if self._overrides else None
        if limit is not None:
            if self._buckets is None:
                self._buckets = {}
            buckets = self._buckets.get(event)
            if buckets is None:
                buckets = self._buckets[event] = limit.buckets(now)
        elif self._default is not None:
            default = self._default
            if isinstance(default, RateLimit):
                default = self._default = default.buckets(now)
            buckets = default
        else:
            return 0.0
        count, volume = buckets
        wait = count.take(now) if count is not None else 0.0
        if wait or volume is None:
            return wait
        wait = volume.take(now, size)
        if wait and count is not None:
            count.give_back()  # the message is refused: its message token is not spent
        return wait


# --- origins -----------------------------------------------------------------------------------


def parse_origins(spec: str | None) -> tuple[re.Pattern[str], ...] | None:
    """``allowed_origins`` ("https://app.example.com, https://*.example.com") as patterns;
    None means every origin is allowed."""
    if spec is None or not spec.strip():
        return None
    patterns = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item == "*":
            return None
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"not an origin (scheme://host[:port]): {item!r}")
        escaped = re.escape(f"{parts.scheme}://{parts.netloc}".lower())
        patterns.append(re.compile(escaped.replace(r"\*", r"[a-z0-9-]+(?:\.[a-z0-9-]+)*") + r"\Z"))
    return tuple(patterns)


def origin_allowed(origin: str | None, patterns: Iterable[re.Pattern[str]] | None) -> bool:
    """Browsers always send Origin on WebSocket upgrades; clients that send none (servers,
    CLI tools) cannot be hijacked through a victim's cookies and are let through."""
    if patterns is None or origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    return any(p.match(origin) for p in patterns)


# --- API keys ----------------------------------------------------------------------------------


class ApiKeys:
    """A set of API keys, compared in constant time."""

    __slots__ = ("_keys",)

    def __init__(self, spec: str) -> None:
        self._keys = [k.strip().encode() for k in spec.split(",") if k.strip()]
        if not self._keys:
            raise ValueError("api_keys holds no key")

    def identify(self, token: str | None) -> str | None:
        """A non-secret name for the key (``key:<sha256 prefix>``), or None if it is unknown."""
        if token is None:
            return None
        candidate = token.encode()
        found = None
        for key in self._keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(key, candidate):
                found = key
        if found is None:
            return None
        return "key:" + hashlib.sha256(found).hexdigest()[:12]


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What an ``authenticate`` hook sees. ``token`` is the bearer token from the
    ``Authorization`` header, the ``token`` query parameter or the ``$auth`` message, in that
    order; ``auth`` is the ``$auth`` message's data (None at upgrade time)."""

    path: str
    headers: Mapping[str, str]
    query: Mapping[str, list[str]]
    remote_address: tuple[Any, ...] | None
    token: str | None = None
    auth: Any = None
    cookies: Mapping[str, str] = field(default_factory=dict)


def bearer_token(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    value = headers.get("Authorization", "")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    tokens = query.get("token")
    return tokens[0] if tokens else None


def parse_cookies(headers: Mapping[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("Cookie", ""))
    except Exception:  # a malformed Cookie header is no credential, not an error
        return {}
    return {name: morsel.value for name, morsel in jar.items()}
