"""Typed token errors. Each carries a ``code`` a client may be told (never the key material
or the token itself: the message names what was wrong, not with what).

    AuthError (smartsocket.security)
    └── TokenError                 code: one of TokenErrorCode
        ├── TokenExpired           token_expired: get a fresh token (close 4003 after the upgrade)
        ├── TokenNotYetValid       token_not_yet_valid: ``nbf``/``iat`` ahead of our clock
        └── TokenInvalid           every other code: do not retry with the same token
"""

from __future__ import annotations

from enum import StrEnum

from smartsocket.security import AuthError


class TokenErrorCode(StrEnum):
    """Why a token was refused (docs: "Token errors")."""

    EXPIRED = "token_expired"  # exp <= now - leeway (RFC 7519 4.1.4)
    NOT_YET_VALID = "token_not_yet_valid"  # nbf or iat > now + leeway (RFC 7519 4.1.5, 4.1.6)
    INVALID = "token_invalid"  # malformed, bad signature, missing or mistyped claims
    ALGORITHM = "token_algorithm"  # alg not allowed for the key ("none", HS with an RSA key...)
    AUDIENCE = "token_audience"  # aud does not name us (RFC 7519 4.1.3)
    ISSUER = "token_issuer"  # iss is not the configured issuer (RFC 7519 4.1.1)
    UNKNOWN_KEY = "token_unknown_key"  # kid not in the key set, even after a refresh
    KEYS_UNAVAILABLE = "token_keys_unavailable"  # the JWKS could not be loaded (our fault)
    WRONG_KIND = "token_wrong_kind"  # a subscription token used to connect, or the reverse
    WRONG_ROOM = "token_wrong_room"  # a subscription token for another room or user
    USER_CHANGED = "token_user_changed"  # a $refresh with a token for another user


class TokenError(AuthError):
    """A token was refused; ``code`` says why (a TokenErrorCode)."""

    def __init__(self, code: TokenErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TokenExpired(TokenError):
    def __init__(self, message: str) -> None:
        super().__init__(TokenErrorCode.EXPIRED, message)


class TokenNotYetValid(TokenError):
    def __init__(self, message: str) -> None:
        super().__init__(TokenErrorCode.NOT_YET_VALID, message)


class TokenInvalid(TokenError):
    def __init__(self, message: str, code: TokenErrorCode = TokenErrorCode.INVALID) -> None:
        super().__init__(code, message)
