"""JWT connection tokens and per-room subscription tokens (RFC 7519), verified without a
database round trip.

Connection token claims (what the app's login service signs):

- ``sub`` (required, a non-empty string): the user, ``socket.user``.
- ``exp`` (required unless ``require_exp=False``), ``nbf``, ``iat``: NumericDate seconds,
  checked against the injected clock with ``leeway`` seconds of tolerance either way.
- ``aud``, ``iss``: checked when ``audience``/``issuer`` are configured. A token carrying an
  ``aud`` is refused when no audience is configured (RFC 7519 4.1.3: we cannot identify
  ourselves with a value in it).
- ``rooms`` (optional; the claim name is ``rooms_claim``): room grants, either a list of room
  patterns the user may join (``["chat:lobby", "team:42:*"]``), or an object from pattern to
  permissions, ``{"news": ["join"], "chat:*": ["join", "publish"]}``. Patterns follow
  ``room_patterns``. Policies with ``join = "grant"`` / ``publish = "grant"`` read them.
- anything else: ``TokenClaims.claims`` (read-only) for the app.

A connection token must not carry ``room``; a subscription token must: it grants exactly that
room (an exact name) to its ``sub`` (which must be the connection's user), until its own
``exp``. So neither kind can stand in for the other.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from smartsocket.auth import jws
from smartsocket.auth.errors import (
    TokenErrorCode,
    TokenExpired,
    TokenInvalid,
    TokenNotYetValid,
)
from smartsocket.auth.jwks import JwksKeys
from smartsocket.room_patterns import pattern_problem

logger = logging.getLogger("smartsocket.security")

MAX_TOKEN_BYTES = 8192  # checked before any decoding: a bigger "token" costs us nothing
PERMISSIONS = frozenset({"join", "publish"})
_JOIN = frozenset({"join"})
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class RoomGrants:
    """The rooms a token grants, and for what. A token holds a handful of patterns: a dict
    of exact names and a list of prefixes (longest first) answer without building a table."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, raw: Mapping[str, frozenset[str]], *, names_only: bool = False) -> None:
        if names_only:  # from_claim: a dict of exact names, ours to keep
            assert type(raw) is dict
            self._exact: dict[str, frozenset[str]] = raw
            self._prefixes: list[tuple[str, frozenset[str]]] = []
            return
        exact: dict[str, frozenset[str]] = {}
        prefixes: list[tuple[str, frozenset[str]]] = []
        for pattern, perms in raw.items():
            if pattern.endswith("*"):
                prefixes.append((pattern[:-1], perms))
            else:
                exact[pattern] = perms
        self._exact = exact
        if len(prefixes) > 1:
            prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        self._prefixes = prefixes

    @classmethod
    def from_claim(cls, value: object) -> RoomGrants:
        """Raises TokenInvalid when the claim has the wrong shape."""
        grants: dict[str, frozenset[str]] = {}
        if type(value) is list:
            exact: dict[str, frozenset[str]] = {}
            for pattern in value:
                # A valid room name (room_patterns.pattern_problem without a "*") in one
                # expression; a prefix, or anything wrong, takes the full path below.
                if type(pattern) is not str or not pattern or "*" in pattern or (
                        not pattern.isprintable()):
                    break
                exact[pattern] = _JOIN
            else:  # names only (the common case): no second pass over them
                return cls(exact, names_only=True)
            for pattern in value:
                _check_grant_pattern(pattern)
                grants[pattern] = _JOIN
        elif type(value) is dict:
            for pattern, perms in value.items():
                _check_grant_pattern(pattern)
                if type(perms) is not list or not set(perms) <= PERMISSIONS:
                    raise TokenInvalid(f"rooms claim: permissions of {pattern!r} must be a "
                                       "list of 'join', 'publish'")
                grants[pattern] = frozenset(perms)
        else:
            raise TokenInvalid("rooms claim must be a list of room patterns or an object")
        return cls(grants)

    def allows(self, room: str, permission: str) -> bool:
        """Whether the most specific grant matching ``room`` (room_patterns' precedence)
        includes ``permission``."""
        perms = self._exact.get(room)
        if perms is None:
            for prefix, granted in self._prefixes:
                if room.startswith(prefix):
                    perms = granted
                    break
            else:
                return False
        return permission in perms

    def patterns(self) -> Mapping[str, frozenset[str]]:
        """Every granted pattern (exact names first, then prefixes, longest first)."""
        raw = dict(self._exact)
        raw.update((prefix + "*", perms) for prefix, perms in self._prefixes)
        return MappingProxyType(raw)

    def __bool__(self) -> bool:
        return bool(self._exact) or bool(self._prefixes)


NO_GRANTS = RoomGrants({})


def _check_grant_pattern(pattern: object) -> None:
    problem = pattern_problem(pattern)
    if problem is not None:
        raise TokenInvalid(f"rooms claim: {problem}")


class TokenClaims(NamedTuple):
    """A verified connection token. ``expires`` is the ``exp`` claim (Unix seconds) or None;
    ``claims`` holds every claim, read-only.

    Immutable, and a named tuple rather than a frozen dataclass: one is built per JWT
    connect, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) cost
    four times as much (bench/tools/jwt_connect_instructions.py)."""

    user: str
    expires: float | None
    issued_at: float | None
    grants: RoomGrants
    claims: Mapping[str, Any]
    key_id: str | None = None
    algorithm: str = ""

    def seconds_left(self, now: float) -> float | None:
        return None if self.expires is None else self.expires - now


@dataclass(frozen=True, slots=True)
class SubscriptionClaims:
    """A verified subscription token: ``user`` may join ``room`` until ``expires``."""

    user: str | None
    room: str
    expires: float | None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


class TokenVerifier:
    """Verifies connection and subscription tokens with one key source: an HMAC ``secret``,
    a PEM ``public_key`` (bytes, or use ``from_options`` for a file), or a ``jwks``
    (``JwksKeys``). ``clock`` returns Unix seconds (``time.time``; injected in tests).

    ``verify()`` is synchronous and never does I/O; with a JWKS it raises
    ``token_unknown_key`` for a kid it does not hold. ``verify_async()`` then refreshes the
    set (rate-limited) and tries once more: use it wherever a coroutine can wait.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: bytes | None = None,
        jwks: JwksKeys | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | None = None,
        leeway: float = 5.0,
        require_exp: bool = True,
        rooms_claim: str = "rooms",
        verified_cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        jws.require()
        if sum(x is not None for x in (secret, public_key, jwks)) != 1:
            raise ValueError("give exactly one of secret, public_key, jwks")
        if leeway < 0:
            raise ValueError("leeway must be >= 0")
        self._static: jws.VerifyKey | None = None
        if secret is not None:
            self._static = jws.hmac_key(secret)
        elif public_key is not None:
            self._static = jws.public_key_pem(public_key)
        self._jwks = jwks
        if isinstance(audience, str):
            audience = (audience,)
        self.audience: frozenset[str] | None = (
            frozenset(audience) if audience is not None else None
        )
        if self.audience is not None and not self.audience:
            raise ValueError("audience is empty (None turns the check off)")
        self.issuer = issuer
        self.leeway = float(leeway)
        self.require_exp = require_exp
        self.rooms_claim = rooms_claim
        self.clock = clock
        self.max_token_bytes = MAX_TOKEN_BYTES
        # Signatures already verified (a 16-byte digest of signing input and signature): a
        # client that reconnects with the token it had (a server restart, a network blip)
        # costs no second RSA/ECDSA verify. Only the signature check is skipped: the claims
        # (exp...) are checked every time. Cleared when full and when the key set changes.
        # Not used with an HMAC secret: its verify costs no more than the cache's own hash.
        self._verified_cache: dict[bytes, None] = {}
        self._verified_cache_size = verified_cache_size
        self._cache_generation = 0

    @classmethod
    def from_options(
        cls,
        *,
        jwt_secret: str | None = None,
        jwt_public_key: str | None = None,
        jwt_jwks: str | None = None,
        jwt_audience: str | None = None,
        jwt_issuer: str | None = None,
        jwt_leeway: float = 5.0,
        jwt_jwks_refresh_interval: float = 30.0,
        jwt_max_token_bytes: int = MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> TokenVerifier:
        """From the config options of the same names (``jwt_audience`` may list several,
        comma-separated). Reads a public key file now; a JWKS file too; a JWKS URL is only
        fetched by ``await verifier.start()``. Raises ValueError with what is wrong."""
        public_key = None
        if jwt_public_key is not None:
            try:
                public_key = Path(jwt_public_key).read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {jwt_public_key}: {exc.strerror}") from None
        jwks = None
        if jwt_jwks is not None:
            jwks = JwksKeys(jwt_jwks, min_refresh_interval=jwt_jwks_refresh_interval,
                            monotonic=monotonic)
            problem = None if jwks.url else jwks.read_file(log=False)
            if problem is not None:
                raise ValueError(problem)
        audience = None
        if jwt_audience is not None:
            audience = [a.strip() for a in jwt_audience.split(",") if a.strip()]
        verifier = cls(secret=jwt_secret, public_key=public_key, jwks=jwks,
                       audience=audience, issuer=jwt_issuer, leeway=jwt_leeway, clock=clock)
        verifier.max_token_bytes = jwt_max_token_bytes
        return verifier

    @property
    def jwks(self) -> JwksKeys | None:
        """The key set, when keys come from a JWKS."""
        return self._jwks

    async def start(self) -> None:
        """Load a JWKS URL before the first token (a failure is logged; verifies then fail
        with ``token_keys_unavailable`` until a refresh succeeds)."""
        if self._jwks is not None and not self._jwks.loaded:
            await self._jwks.refresh(force=True)

    # --- connection tokens

    def verify(self, token: str | bytes) -> TokenClaims:
        """A connection token's claims, or TokenError."""
        return self._connection(*self._checked(token))

    async def verify_async(self, token: str | bytes) -> TokenClaims:
        return self._connection(*await self._checked_async(token))

    def _connection(self, compact: jws.Compact, claims: dict[str, Any]) -> TokenClaims:
        if "room" in claims:
            raise TokenInvalid("a subscription token cannot open a connection",
                               TokenErrorCode.WRONG_KIND)
        user = claims.get("sub")
        if type(user) is not str or not user:
            raise TokenInvalid("sub claim missing or not a non-empty string")
        raw = claims.get(self.rooms_claim)
        iat = claims.get("iat")
        exp = claims.get("exp")
        return TokenClaims(
            user, None if exp is None else float(exp), None if iat is None else float(iat),
            NO_GRANTS if raw is None else RoomGrants.from_claim(raw),
            MappingProxyType(claims), compact.kid, compact.alg,
        )

    # --- subscription tokens

    def verify_subscription(
        self, token: str | bytes, room: str, user: str | None
    ) -> SubscriptionClaims:
        """A subscription token's claims if it grants ``room`` to ``user`` (the
        connection's user; None for a connection without one), else TokenError."""
        return self._subscription(self._checked(token), room, user)

    async def verify_subscription_async(
        self, token: str | bytes, room: str, user: str | None
    ) -> SubscriptionClaims:
        return self._subscription(await self._checked_async(token), room, user)

    def _subscription(
        self, verified: tuple[jws.Compact, dict[str, Any]], room: str, user: str | None
    ) -> SubscriptionClaims:
        claims = verified[1]
        granted = claims.get("room")
        if granted is None:
            raise TokenInvalid("not a subscription token (no room claim)",
                               TokenErrorCode.WRONG_KIND)
        if type(granted) is not str:
            raise TokenInvalid("room claim is not a string")
        sub = claims.get("sub") or None
        if sub is not None and type(sub) is not str:
            raise TokenInvalid("sub claim is not a string")
        if granted != room:
            raise TokenInvalid(f"the token grants room {granted!r}, not {room!r}",
                               TokenErrorCode.WRONG_ROOM)
        if sub != user:  # a token minted for someone else, replayed on this connection
            raise TokenInvalid("the token was issued to another user", TokenErrorCode.WRONG_ROOM)
        exp = claims.get("exp")
        return SubscriptionClaims(user=sub, room=granted,
                                  expires=None if exp is None else float(exp),
                                  claims=MappingProxyType(claims))

    # --- shared steps

    def _checked(self, token: str | bytes) -> tuple[jws.Compact, dict[str, Any]]:
        compact = jws.Compact(token, self.max_token_bytes)
        return compact, self._verified(compact, self._key(compact))

    async def _checked_async(self, token: str | bytes) -> tuple[jws.Compact, dict[str, Any]]:
        compact = jws.Compact(token, self.max_token_bytes)
        jwks = self._jwks
        if jwks is not None:
            known = jwks.find(compact.kid) is not None
            if known and jwks.stale():
                # Old keys still verify while the set reloads in the background: a slow JWKS
                # endpoint never holds up connects. A key removed from the set stops working
                # max_age after the last load, plus that one refresh.
                jwks.refresh_soon()
            elif not known and compact.alg in jws.ASYMMETRIC_ALGORITHMS:
                # A kid we do not hold: maybe the issuer rotated keys. Rate-limited inside
                # (and "none" or HS* tokens, which no key set can verify, fetch nothing).
                await jwks.refresh()
        return compact, self._verified(compact, self._key(compact))

    def _key(self, compact: jws.Compact) -> jws.VerifyKey:
        key = self._static
        if key is None:
            jwks = self._jwks
            assert jwks is not None
            if not jwks.loaded:
                raise TokenInvalid("no signing keys loaded", TokenErrorCode.KEYS_UNAVAILABLE)
            key = jwks.find(compact.kid)
            if key is None:
                if compact.kid is None:
                    raise TokenInvalid("token has no kid and the key set holds several keys",
                                       TokenErrorCode.UNKNOWN_KEY)
                raise TokenInvalid(f"unknown kid {compact.kid!r}", TokenErrorCode.UNKNOWN_KEY)
        if compact.alg not in key.algorithms:  # "none", HS* with an RSA key, RS* with a secret
            raise TokenInvalid(f"algorithm {compact.alg!r} is not allowed for this "
                               f"{key.kind} key", TokenErrorCode.ALGORITHM)
        return key

    def _verified(self, compact: jws.Compact, key: jws.VerifyKey) -> dict[str, Any]:
        if key.symmetric or not self._verified_cache_size:
            if not key.verify(compact.alg, compact.signing_input, compact.signature):
                raise TokenInvalid("signature does not verify")
        else:
            cache = self._verified_cache
            if self._jwks is not None and self._jwks.generation != self._cache_generation:
                cache.clear()  # a key may have been withdrawn
                self._cache_generation = self._jwks.generation
            digest = hashlib.blake2b(compact.signing_input, digest_size=16)
            digest.update(compact.signature)
            seen = digest.digest()
            if seen not in cache:
                if not key.verify(compact.alg, compact.signing_input, compact.signature):
                    raise TokenInvalid("signature does not verify")
                if len(cache) >= self._verified_cache_size:
                    cache.clear()
                cache[seen] = None
        claims = compact.claims()
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        leeway = self.leeway
        exp = claims.get("exp")
        if exp is None:
            if self.require_exp:
                raise TokenInvalid("exp claim missing")
        elif type(exp) not in _NUMBER:
            raise TokenInvalid("exp claim is not a number")
        elif now >= exp + leeway:  # RFC 7519 4.1.4: valid only before exp
            raise TokenExpired(f"expired {now - exp:.0f} s ago")
        nbf = claims.get("nbf")
        if nbf is not None:
            if type(nbf) not in _NUMBER:
                raise TokenInvalid("nbf claim is not a number")
            if now + leeway < nbf:  # RFC 7519 4.1.5: valid from nbf on
                raise TokenNotYetValid(f"valid in {nbf - now:.0f} s")
        iat = claims.get("iat")
        if iat is not None:
            if type(iat) not in _NUMBER:
                raise TokenInvalid("iat claim is not a number")
            if now + leeway < iat:  # issued in our future: a clock problem or a forgery
                raise TokenNotYetValid(f"issued {iat - now:.0f} s in the future")
        aud = claims.get("aud")
        if self.audience is not None:
            # RFC 7519 4.1.3: aud is a string or an array of strings; one must be ours.
            values = [aud] if type(aud) is str else aud if type(aud) is list else None
            if values is None or not any(type(v) is str and v in self.audience for v in values):
                raise TokenInvalid("aud does not name this server", TokenErrorCode.AUDIENCE)
        elif aud is not None:
            raise TokenInvalid("token has an aud but this server has no jwt_audience",
                               TokenErrorCode.AUDIENCE)
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise TokenInvalid("iss is not the configured issuer", TokenErrorCode.ISSUER)


_NUMBER = (int, float)  # NumericDate: the exact types msgspec decodes (not bool, a subclass)

