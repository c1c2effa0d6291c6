"""Token authentication: JWT connection tokens and per-room subscription tokens.

Needs the ``jwt`` extra (``pip install 'smartsocket[jwt]'``: PyJWT with cryptography);
importing this package works without it, building a ``TokenVerifier`` raises
``MissingDependency``. Only ``auth/jws.py`` imports PyJWT.
"""

from smartsocket.auth.errors import (
    TokenError,
    TokenErrorCode,
    TokenExpired,
    TokenInvalid,
    TokenNotYetValid,
)
from smartsocket.auth.jwks import JwksKeys
from smartsocket.auth.refresh import check_refresh, close_after, refresh_at
from smartsocket.auth.tokens import RoomGrants, SubscriptionClaims, TokenClaims, TokenVerifier

__all__ = [
    "JwksKeys",
    "RoomGrants",
    "SubscriptionClaims",
    "TokenClaims",
    "TokenError",
    "TokenErrorCode",
    "TokenExpired",
    "TokenInvalid",
    "TokenNotYetValid",
    "TokenVerifier",
    "check_refresh",
    "close_after",
    "refresh_at",
]
