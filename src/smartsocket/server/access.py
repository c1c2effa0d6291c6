"""Token auth and room policies as one server configures them.

``Access`` owns what the ``jwt_*`` options and ``server.policy(...)`` make: the
``TokenSessions`` (server/tokens.py) and the ``RoomGate`` (server/room_policy.py), both
rebuilt when the configuration changes, and the policies set by pattern, which outlive that
(a gate built for a new configuration gets them again). The server delegates its token and
policy API here and hands ``tokens`` and ``gate`` to the parts that ask them.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from smartsocket.history import HistoryLimits
from smartsocket.server.room_policy import RoomGate
from smartsocket.server.tokens import TokenSessions, verifier_for

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.policies import RoomPolicy


class Access:
    """``tokens`` and ``gate`` for the configuration last given to ``configure``."""

    def __init__(
        self, config: Config, *, monotonic_ns: Callable[[], int],
        has_room: Callable[[str], bool], enable_presence: Callable[[str], None],
    ) -> None:
        # Token expiry reads this clock (Unix seconds), at each use: tests replace it.
        self.token_clock: Callable[[], float] = time.time
        self._monotonic_ns = monotonic_ns  # the rooms' policy rates
        self._has_room = has_room
        self._enable_presence = enable_presence
        self._policies: dict[str, RoomPolicy] = {}
        self.tokens = TokenSessions(None)
        self.gate = self._new_gate(config)

    def configure(self, config: Config) -> None:
        """Rebuild the token sessions and the gate for ``config``. Raises ConfigError."""
        self.tokens = TokenSessions(verifier_for(config, lambda: self.token_clock()))
        self.gate = self._new_gate(config)

    def set_policy(self, pattern: str, policy: RoomPolicy) -> None:
        """Apply ``policy`` to the rooms ``pattern`` matches. Raises ValueError."""
        self.gate.set(pattern, policy)  # checks the pattern first
        self._policies[pattern] = policy
        if policy.presence:
            self._enable_presence(pattern)

    @property
    def policies(self) -> Mapping[str, RoomPolicy]:
        """The room policies by pattern (read-only)."""
        return types.MappingProxyType(self._policies)

    def _new_gate(self, config: Config) -> RoomGate:
        gate = RoomGate(
            deny_by_default=config.rooms_deny_by_default,
            verifier=self.tokens.verifier, clock=lambda: self.token_clock(),
            monotonic_ns=self._monotonic_ns, has_room=self._has_room,
            history=HistoryLimits.of_config(config),
        )
        for pattern, policy in self._policies.items():
            gate.set(pattern, policy)
        return gate
