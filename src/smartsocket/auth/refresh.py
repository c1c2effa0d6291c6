"""The timing of token refresh, shared by the server (when to close a socket whose token ran
out: 4003) and the clients (when to ask ``get_token`` for a new one and send ``$refresh``).

Sans-I/O: times are Unix seconds passed in; the random source is passed in (tests seed it).
"""

from __future__ import annotations

import random

from smartsocket.auth.errors import TokenErrorCode, TokenInvalid
from smartsocket.auth.tokens import TokenClaims

MAX_AHEAD = 300.0  # refresh at most 5 minutes before expiry, however long the token lives
MAX_JITTER = 60.0  # spread tokens minted in the same second over up to a minute


def refresh_at(claims: TokenClaims, now: float, rng: random.Random | None = None) -> float | None:
    """When a client should refresh its token (Unix seconds), or None if it never expires.

    A quarter of the token's lifetime ahead of ``exp`` (at most ``MAX_AHEAD``), minus a
    random jitter of up to a tenth of the lifetime (at most ``MAX_JITTER``): a million tokens
    minted in one second are refreshed over a minute, not in one second, and a 10 s token is
    refreshed 2.5-3.5 s before it expires."""
    if claims.expires is None:
        return None
    start = claims.issued_at if claims.issued_at is not None else now
    lifetime = max(claims.expires - start, 0.0)
    ahead = min(lifetime / 4, MAX_AHEAD)
    jitter = (rng or random).uniform(0.0, min(lifetime / 10, MAX_JITTER))
    return max(now, claims.expires - ahead - jitter)


def close_after(claims: TokenClaims, now: float, leeway: float) -> float | None:
    """Seconds until the server closes a socket holding ``claims`` with 4003 unless it
    refreshes (the verifier's leeway applies here too), or None if the token never expires."""
    if claims.expires is None:
        return None
    return max(claims.expires + leeway - now, 0.0)


def check_refresh(current: TokenClaims, new: TokenClaims) -> None:
    """A ``$refresh`` may extend a connection, never change whose it is. Raises TokenInvalid
    (``token_user_changed``) when the new token names another user."""
    if new.user != current.user:
        raise TokenInvalid("the new token is for another user: reconnect instead",
                           TokenErrorCode.USER_CHANGED)
