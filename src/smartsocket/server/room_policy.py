"""Room policies applied by the server: ``socket.join`` and ``socket.publish`` ask the
``RoomGate``, which asks ``policies.RoomPolicies`` and answers a refusal with LimitExceeded
(code ``forbidden``: the sender's ack error in a handler). It also hands the policies'
presence and broadcast-rate settings to the rooms they match, and their history settings to
recovery (``history``: the ``HistoryLimits`` the session store and the room logs read).

No policy set and no ``rooms_deny_by_default``: the gate is off (``active`` False) and
``socket.join`` does not call it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from smartsocket.auth.tokens import SubscriptionClaims, TokenVerifier
from smartsocket.history import HistoryLimits
from smartsocket.policies import Decision, Refusal, RoomPolicies, RoomPolicy
from smartsocket.protocol.codes import ErrorCode
from smartsocket.security import LimitExceeded, TokenBucket

if TYPE_CHECKING:
    from smartsocket.server.socket import Socket

logger = logging.getLogger("smartsocket.security")


class RoomGate:
    """The server's room policies (``server.policy(...)``, ``rooms`` in the config file)."""

    def __init__(
        self, *, deny_by_default: bool, verifier: TokenVerifier | None,
        clock: Callable[[], float], monotonic_ns: Callable[[], int],
        has_room: Callable[[str], bool], history: HistoryLimits,
    ) -> None:
        self.policies = RoomPolicies(deny_by_default=deny_by_default, verifier=verifier,
                                     clock=clock)
        # Each room's history limits: looked up only once a policy sets history.
        self.history = history
        self.active = deny_by_default
        self._monotonic_ns = monotonic_ns
        self._buckets: dict[str, TokenBucket] = {}  # rooms with a policy rate, by name
        self._has_room = has_room
        self._prune_at = 1024  # bucket count at which emptied rooms' buckets are dropped

    def set(self, pattern: str, policy: RoomPolicy) -> None:
        self.policies.set(pattern, policy)
        self.active = True
        if policy.history_size is not None or policy.history_ttl is not None:
            self.history.use(self.history_of)
        elif self.history.lookup is not None:
            self.history.changed()  # a more specific pattern may now decide some rooms

    def history_of(self, room: str) -> tuple[int | None, float | None] | None:
        """``room``'s policy history settings (None: no policy matches it)."""
        policy = self.policies.policy(room)
        return None if policy is None else (policy.history_size, policy.history_ttl)

    def presence(self, room: str) -> bool:
        """Whether a policy makes ``room`` a presence room."""
        policy = self.policies.policy(room) if self.active else None
        return policy is not None and policy.presence

    def presence_patterns(self) -> list[str]:
        """fnmatch patterns of the rooms policies make presence rooms."""
        return [pattern for pattern, policy in self.policies.patterns().items()
                if policy.presence]

    def check_join(
        self, socket: Socket, room: str, token: str | SubscriptionClaims | None
    ) -> float | None:
        """Check a client's join; raises LimitExceeded (``forbidden``) if refused. Returns
        when the membership ends (the ``exp`` of the subscription token that allowed it), or
        None when it rests on something else (then it lasts as long as the connection)."""
        policies, claims = self.policies, socket.token_claims
        # Allowed without the token (a grant, say): the token's exp does not bound it.
        if token is not None and policies.may_join(room, claims, None).allowed:
            return None
        decision = policies.may_join(room, claims, token)
        if not decision.allowed:
            jwks = policies.verifier.jwks if policies.verifier is not None else None
            if decision.reason is Refusal.SUBSCRIPTION_INVALID and jwks is not None:
                jwks.refresh_soon()  # maybe a key not loaded yet: the client's retry finds it
            _refused(socket, "join", room, decision)
        return decision.expires if token is not None else None

    def check_publish(self, socket: Socket, room: str) -> None:
        decision = self.policies.may_publish(room, socket.token_claims,
                                             member=room in socket.rooms)
        if not decision.allowed:
            _refused(socket, "publish", room, decision)

    def check_rate(self, room: str) -> bool:
        """Count a broadcast to ``room`` against its policy's rate; False: the policy sets
        no rate (the server's ``room_rate_limit_*`` applies). Raises LimitExceeded."""
        policy = self.policies.policy(room) if self.active else None
        if policy is None or not policy.rate_limit_messages:
            return False
        now = self._monotonic_ns()
        bucket = self._buckets.get(room)
        if bucket is None:
            rate = policy.rate_limit_messages
            burst = policy.rate_limit_burst or max(1.0, 2 * rate)
            if len(self._buckets) >= self._prune_at:
                self.prune()
            bucket = self._buckets[room] = TokenBucket(rate, burst, now)
        wait = bucket.take(now)
        if wait:
            raise LimitExceeded(ErrorCode.RATE_LIMITED,
                                f"room {room!r} is over its broadcast rate",
                                retry_after=round(wait, 3))
        return True

    def prune(self) -> None:
        """Forget the buckets of rooms that emptied (amortised: when the count doubled)."""
        for name in [n for n in self._buckets if not self._has_room(n)]:
            del self._buckets[name]
        self._prune_at = max(1024, 2 * len(self._buckets))


def _refused(socket: Socket, action: str, room: str, decision: Decision) -> None:
    logger.info("refused %s of %s to %r: %s", action, socket.id, room, decision.reason,
                extra={"event": "forbidden", "sid": socket.id, "room": room,
                       "reason": str(decision.reason)})
    raise LimitExceeded(ErrorCode.FORBIDDEN, f"{decision.reason}: {decision.message}")
