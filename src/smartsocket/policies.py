"""Room policies: who may join a room and publish to it, and its presence, history and rate
settings, chosen by room name pattern (``room_patterns``).

Precedence: the most specific pattern wins: an exact name (``admin``) over any prefix, a
longer prefix (``chat:vip:*``) over a shorter one (``chat:*``), and ``*`` (the default policy)
last. Nothing is merged: the winning policy is the whole answer for its rooms. With
``deny_by_default`` (and no ``*`` policy) a room that matches no pattern may not be joined or
published to by clients.

Join rules (``join``: one, or several of which any suffices):

=================  ==========================================================================
``anyone``         every socket (an anonymous one too)
``authenticated``  a socket whose connection token names a user
``grant``          the connection token's ``rooms`` claim grants the room (``join``)
``user``           a prefix pattern's personal rooms: ``user:*`` lets user 42 join ``user:42``
``subscription``   a subscription token for exactly this room and user
``server``         clients never: only the application's own code puts sockets in
=================  ==========================================================================

Publish rules (``publish``): ``members`` (sockets in the room), ``grant`` (members whose
token grants ``publish`` for the room), ``server`` (only the application broadcasts).

A refusal is a ``Decision`` with ``allowed=False``; the client sees error code ``forbidden``
with the ``reason`` (a ``Refusal``) in the message. Joins and publishes the application makes
itself (``by_server=True``) are always allowed: policies bound clients, not the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from smartsocket.auth.errors import TokenError, TokenErrorCode
from smartsocket.auth.tokens import SubscriptionClaims, TokenClaims, TokenVerifier
from smartsocket.room_patterns import PatternTable, prefix_of


class Join(StrEnum):
    ANYONE = "anyone"
    AUTHENTICATED = "authenticated"
    GRANT = "grant"
    USER = "user"
    SUBSCRIPTION = "subscription"
    SERVER = "server"


class Publish(StrEnum):
    MEMBERS = "members"
    GRANT = "grant"
    SERVER = "server"


class Refusal(StrEnum):
    """Why a join or publish was refused (``Decision.reason``)."""

    NO_POLICY = "no_policy"  # deny_by_default and no pattern matches the room
    SERVER_ONLY = "server_only"  # join or publish = "server"
    NOT_AUTHENTICATED = "not_authenticated"  # the rule needs a user; the socket has none
    NOT_GRANTED = "not_granted"  # the token's rooms claim does not grant it
    NOT_OWNER = "not_owner"  # a personal room (join = "user") of another user
    SUBSCRIPTION_REQUIRED = "subscription_required"  # join = "subscription", no token given
    SUBSCRIPTION_INVALID = "subscription_invalid"  # the subscription token was refused
    NOT_MEMBER = "not_member"  # publishing to a room the socket is not in


@dataclass(frozen=True, slots=True)
class RoomPolicy:
    """One pattern's rules. ``None`` settings fall back to the server's options
    (``history_size``, ``history_ttl``, ``room_rate_limit_messages``/``_burst``).
    ``history_size`` 0: its rooms keep no history (a resume gets ``$gap`` for them);
    ``history_ttl`` 0: as long as ``recovery_window``, like the server option."""

    join: frozenset[Join] = frozenset({Join.ANYONE})
    publish: Publish = Publish.MEMBERS
    presence: bool = False
    history_size: int | None = None
    history_ttl: float | None = None
    rate_limit_messages: float | None = None  # broadcasts per second for each room
    rate_limit_burst: float | None = None

    def __post_init__(self) -> None:
        join = self.join
        if isinstance(join, str):
            join = (join,)
        try:
            kinds = frozenset(Join(kind) for kind in join)
            object.__setattr__(self, "publish", Publish(self.publish))
        except ValueError as exc:
            raise ValueError(f"{exc} (join: {', '.join(Join)}; publish: "
                             f"{', '.join(Publish)})") from None
        if not kinds:
            raise ValueError("join lists no rule")
        for lone in (Join.ANYONE, Join.SERVER):
            if lone in kinds and len(kinds) > 1:
                raise ValueError(f"join = {lone!r} cannot be combined with other rules")
        object.__setattr__(self, "join", kinds)
        if self.history_size is not None and self.history_size < 0:
            raise ValueError("history_size must be >= 0 (0: no history)")
        for name in ("history_ttl", "rate_limit_messages", "rate_limit_burst"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(slots=True)
class Decision:
    """The answer of ``may_join``/``may_publish`` (read-only by convention: not frozen,
    because a frozen dataclass's __init__ costs ~1 µs more, on every join; so every call
returns a new one, never a shared instance). ``pattern`` is
    the policy that decided (None: no pattern matched). ``expires`` (Unix seconds) is when
    the permission lapses, for joins allowed by a token: the server should remove the
    socket then unless a newer token extends it."""

    allowed: bool
    reason: Refusal | None = None
    message: str = ""
    pattern: str | None = None
    expires: float | None = None

    code: ClassVar[str] = "forbidden"  # the ack error code a refusal is sent with


class _JoinRule:
    """A policy's join rules as plain attributes: testing an enum member's presence in a
    frozenset calls Enum.__hash__ in Python each time (~0.5 µs), five of them per join."""

    __slots__ = ("anyone", "authenticated", "grant", "owner", "server", "subscription")

    def __init__(self, pattern: str, kinds: frozenset[Join]) -> None:
        self.anyone = Join.ANYONE in kinds
        self.server = Join.SERVER in kinds
        self.authenticated = Join.AUTHENTICATED in kinds
        self.grant = Join.GRANT in kinds
        self.subscription = Join.SUBSCRIPTION in kinds
        prefix = prefix_of(pattern)
        # join = "user": the room name after the prefix must be the user (user:42 for "42").
        self.owner = len(prefix) if Join.USER in kinds and prefix else None


def _refuse(reason: Refusal, pattern: str | None, message: str) -> Decision:
    return Decision(False, reason, message, pattern)


class RoomPolicies:
    """Policies by pattern, with a bounded cache of which pattern each room name matched
    (room names come from clients: the cache is cleared when it reaches ``cache_size``)."""

    def __init__(
        self,
        policies: Mapping[str, RoomPolicy] | Iterable[tuple[str, RoomPolicy]] = (),
        *,
        default: RoomPolicy | None = None,
        deny_by_default: bool = False,
        verifier: TokenVerifier | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table: PatternTable[RoomPolicy] = PatternTable()
        self._cache: dict[str, tuple[str, RoomPolicy] | None] = {}
        self._rules: dict[str, _JoinRule] = {}
        self._cache_size = cache_size
        self.deny_by_default = deny_by_default
        self.verifier = verifier  # for subscription tokens given as strings
        self._clock = clock
        items = policies.items() if isinstance(policies, Mapping) else policies
        for pattern, policy in items:
            self.set(pattern, policy)
        if default is not None:
            self.set("*", default)

    def set(self, pattern: str, policy: RoomPolicy) -> None:
        """Add the policy of ``pattern`` (ValueError: invalid or repeated pattern, or a rule
        that does not fit it)."""
        if Join.USER in policy.join and prefix_of(pattern) in (None, ""):
            raise ValueError(f"join = 'user' needs a prefix pattern such as user:*, not "
                             f"{pattern!r}")
        if pattern == "*" and self.deny_by_default:
            raise ValueError("deny_by_default and a '*' policy contradict each other")
        self._table.add(pattern, policy)
        self._rules[pattern] = _JoinRule(pattern, policy.join)
        self._cache.clear()

    def patterns(self) -> dict[str, RoomPolicy]:
        return dict(self._table.items())

    def match(self, room: str) -> tuple[str, RoomPolicy] | None:
        """(pattern, policy) for ``room``: the most specific pattern, or None."""
        cache = self._cache
        try:
            return cache[room]
        except KeyError:
            pass
        hit = self._table.match(room)
        if len(cache) >= self._cache_size:
            cache.clear()  # cheaper than LRU bookkeeping; refilled at a lookup per room
        cache[room] = hit
        return hit

    def policy(self, room: str) -> RoomPolicy | None:
        """The policy for ``room`` (its presence and history settings), None if unmatched."""
        hit = self.match(room)
        return None if hit is None else hit[1]

    def may_join(
        self,
        room: str,
        claims: TokenClaims | None,
        subscription_token: SubscriptionClaims | str | None = None,
        *,
        by_server: bool = False,
    ) -> Decision:
        """May a socket whose connection token gave ``claims`` (None: no token) join
        ``room``? A ``subscription_token`` string is verified with ``verifier``
        synchronously (with a JWKS, verify it with ``verify_subscription_async`` first and
        pass the claims)."""
        if by_server:
            return Decision(True)
        hit = self.match(room)
        if hit is None:
            if self.deny_by_default:
                return _refuse(Refusal.NO_POLICY, None, f"no policy lets clients join {room!r}")
            return Decision(True)
        pattern = hit[0]
        rule = self._rules[pattern]
        if rule.anyone:
            return Decision(True)
        if rule.server:
            return _refuse(Refusal.SERVER_ONLY, pattern, f"only the server adds sockets to "
                           f"{room!r}")
        user = claims.user if claims is not None else None
        expires = claims.expires if claims is not None else None
        if rule.authenticated and user is not None:
            return Decision(True, pattern=pattern, expires=expires)
        if rule.grant and claims is not None and claims.grants.allows(room, "join"):
            return Decision(True, pattern=pattern, expires=expires)
        if rule.owner is not None and user is not None and room[rule.owner:] == user:
            return Decision(True, pattern=pattern, expires=expires)
        if rule.subscription and subscription_token is not None:
            # allowed, or what was wrong with the token the client tried
            return self._subscription(room, user, subscription_token, pattern)
        # Refused: name the first rule the socket could satisfy with the right token.
        if user is None and (rule.authenticated or rule.grant or rule.owner is not None):
            return _refuse(Refusal.NOT_AUTHENTICATED, pattern,
                           f"joining {room!r} needs a user token")
        if rule.grant:
            return _refuse(Refusal.NOT_GRANTED, pattern, f"your token does not grant {room!r}")
        if rule.owner is not None:
            return _refuse(Refusal.NOT_OWNER, pattern, f"{room!r} is another user's room")
        return _refuse(Refusal.SUBSCRIPTION_REQUIRED, pattern,
                       f"joining {room!r} needs a subscription token")

    def _subscription(
        self, room: str, user: str | None, token: SubscriptionClaims | str, pattern: str
    ) -> Decision:
        if isinstance(token, str):
            if self.verifier is None:
                return _refuse(Refusal.SUBSCRIPTION_INVALID, pattern,
                               "this server does not take subscription tokens")
            try:
                token = self.verifier.verify_subscription(token, room, user)
            except TokenError as exc:
                return _refuse(Refusal.SUBSCRIPTION_INVALID, pattern,
                               f"subscription token refused: {exc.code}")
        elif token.room != room or token.user != user:  # verified, but for another join
            return _refuse(Refusal.SUBSCRIPTION_INVALID, pattern,
                           f"subscription token refused: {TokenErrorCode.WRONG_ROOM}")
        elif token.expires is not None and self._clock() >= token.expires + (
            self.verifier.leeway if self.verifier is not None else 0.0
        ):
            return _refuse(Refusal.SUBSCRIPTION_INVALID, pattern,
                           f"subscription token refused: {TokenErrorCode.EXPIRED}")
        return Decision(True, pattern=pattern, expires=token.expires)

    def may_publish(
        self, room: str, claims: TokenClaims | None, *, member: bool, by_server: bool = False
    ) -> Decision:
        """May a socket (a ``member`` of ``room`` or not) publish to it?"""
        if by_server:
            return Decision(True)
        hit = self.match(room)
        if hit is None:
            if self.deny_by_default:
                return _refuse(Refusal.NO_POLICY, None,
                               f"no policy lets clients publish to {room!r}")
            pattern, publish = None, Publish.MEMBERS
        else:
            pattern, publish = hit[0], hit[1].publish
        if publish is Publish.SERVER:
            return _refuse(Refusal.SERVER_ONLY, pattern, f"only the server publishes to {room!r}")
        if not member:
            return _refuse(Refusal.NOT_MEMBER, pattern, f"join {room!r} before publishing")
        if publish is Publish.GRANT and (
            claims is None or not claims.grants.allows(room, "publish")
        ):
            return _refuse(Refusal.NOT_GRANTED, pattern,
                           f"your token does not grant publishing to {room!r}")
        return Decision(True)
