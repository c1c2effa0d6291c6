"""Refresh timing (smartsocket.auth.refresh): clients refresh ahead of expiry with jitter; the
server's 4003 deadline; a refresh cannot change the user."""

from __future__ import annotations

import random

import pytest

from smartsocket.auth import (
    TokenClaims,
    TokenError,
    TokenErrorCode,
    check_refresh,
    close_after,
    refresh_at,
)
from smartsocket.auth.tokens import NO_GRANTS


def token(user: str = "ann", iat: float | None = 1000.0, exp: float | None = 1010.0
          ) -> TokenClaims:
    return TokenClaims(user=user, expires=exp, issued_at=iat, grants=NO_GRANTS, claims={})


def test_short_token_refreshes_a_quarter_ahead_with_jitter() -> None:
    rng = random.Random(1)
    times = [refresh_at(token(), 1000.0, rng) for _ in range(1000)]
    assert all(t is not None and 1006.5 <= t <= 1007.5 for t in times)
    assert max(t for t in times if t) - min(t for t in times if t) > 0.9  # spread


def test_long_token_refresh_is_capped_and_spread_over_a_minute() -> None:
    rng = random.Random(2)
    day = token(iat=0.0, exp=86_400.0)
    times = [refresh_at(day, 100.0, rng) or 0.0 for _ in range(1000)]
    assert all(86_400 - 300 - 60 <= t <= 86_400 - 300 for t in times)
    assert max(times) - min(times) > 55


def test_refresh_never_in_the_past_and_none_without_exp() -> None:
    assert refresh_at(token(), 1009.9, random.Random(3)) == 1009.9
    assert refresh_at(token(exp=None), 1000.0) is None
    assert refresh_at(token(iat=None, exp=1100.0), 1000.0, random.Random(4)) is not None


def test_server_close_deadline() -> None:
    assert close_after(token(), 1000.0, leeway=5) == 15.0
    assert close_after(token(), 2000.0, leeway=5) == 0.0
    assert close_after(token(exp=None), 1000.0, leeway=5) is None


def test_refresh_keeps_the_user() -> None:
    check_refresh(token(), token(exp=2000.0))
    with pytest.raises(TokenError) as info:
        check_refresh(token(), token("bob"))
    assert info.value.code == TokenErrorCode.USER_CHANGED
