"""The client side of JWT connection tokens: ``get_token`` gives a token before each connect
and before the current one expires; the client sends it in ``$refresh`` (protocol.md section
7, "Token refresh").

The client does not verify the token (it has no key): it reads ``exp`` and ``iat`` from the
payload only to know when to refresh. The timing is the server's (``auth/refresh.py``): a
quarter of the lifetime ahead of ``exp`` (at most 5 minutes), minus a random jitter of up to a
tenth of the lifetime (at most a minute). ``clock`` (Unix seconds) and ``rng`` are injectable:
tests drive them instead of waiting.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec

MAX_AHEAD = 300.0
MAX_JITTER = 60.0

GetToken = Callable[[], Any]  # returns a str, or an awaitable of one


def token_times(token: str) -> tuple[float | None, float | None]:
    """(exp, iat) of a JWS compact token, unverified; (None, None) if unreadable."""
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None, None
    if type(claims) is not dict:
        return None, None
    return _number(claims.get("exp")), _number(claims.get("iat"))


def _number(value: Any) -> float | None:
    return float(value) if type(value) is int or type(value) is float else None


def refresh_at(exp: float | None, iat: float | None, now: float,
               rng: random.Random | None = None) -> float | None:
    """When to refresh a token (Unix seconds), None if it never expires."""
    if exp is None:
        return None
    lifetime = max(exp - (iat if iat is not None else now), 0.0)
    ahead = min(lifetime / 4, MAX_AHEAD)
    jitter = (rng or random).uniform(0.0, min(lifetime / 10, MAX_JITTER))
    return max(now, exp - ahead - jitter)


class TokenKeeper:
    """The current token and when to replace it."""

    def __init__(self, get_token: GetToken, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.get_token = get_token
        self.clock = clock
        self.rng = rng or random.Random()
        self.token: str | None = None
        self.due: float | None = None  # when to refresh (Unix seconds)
        self.refreshes = 0  # successful $refresh round trips

    async def fetch(self) -> str:
        """A fresh token from ``get_token`` (sync or async); schedules its refresh."""
        token = self.get_token()
        if inspect.isawaitable(token):
            token = await token
        if type(token) is not str or not token:
            raise ValueError(f"get_token returned {type(token).__name__}, not a token string")
        self.token = token
        exp, iat = token_times(token)
        self.due = refresh_at(exp, iat, self.clock(), self.rng)
        return token

    def is_due(self) -> bool:
        return self.due is not None and self.clock() >= self.due

    def retry_later(self, seconds: float) -> None:
        """A refresh failed: try again in ``seconds`` (the token may still be good a while)."""
        self.due = self.clock() + seconds
