"""JWT connection tokens of a server's sockets: who a socket is (``socket.user``,
``socket.claims``), ``$refresh`` without reconnecting, and closing sockets whose token ran out
(close 4003) or whose room subscription token did (the socket leaves the room).

Expiry is one heap of deadlines for every socket, checked by one periodic timer of the
event loop (``check_interval`` seconds), not a timer per socket: 100k sockets cost 100k heap
entries of a few dozen bytes and one callback a second. Deadlines are Unix seconds read from
``clock`` (the verifier's: tests inject a fake one and call ``expire_due()``). A refresh pushes
a new deadline and leaves the old entry to be skipped when it comes up; entries of closed
sockets are dropped in bulk once they are more than the live ones (``_compact``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.auth.errors import TokenError, TokenErrorCode
from smartsocket.auth.refresh import check_refresh
from smartsocket.auth.tokens import TokenClaims, TokenVerifier
from smartsocket.errors import ConfigError
from smartsocket.protocol.codes import CloseCode, ErrorCode
from smartsocket.protocol.envelope import Event

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.server.socket import Socket

logger = logging.getLogger("smartsocket.security")

# heap entry: (deadline, tie-breaker, id of the socket, room or None for the connection token).
# Plain values, not the socket: a closed socket is freed at once (not when its stale entry comes
# up), and the collector does not track tuples of plain values.
_Key = tuple[int, "str | None"]
_Entry = tuple[float, int, int, "str | None"]


def looks_like_jwt(token: str) -> bool:
    """A JWS compact token has three dot-separated parts; an API key (normally) has not."""
    return token.count(".") == 2


class TokenSessions:
    """The token side of authentication for one server (``verifier`` None: JWT off)."""

    def __init__(
        self, verifier: TokenVerifier | None, *, check_interval: float = 1.0
    ) -> None:
        self.verifier = verifier
        self.check_interval = check_interval
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        # The live deadline of each (id(socket), room), and the socket: a heap entry whose
        # deadline differs is stale. (A stale entry whose id is now another socket's still
        # needs the same deadline to act, and that deadline is then the other socket's own.)
        self._deadlines: dict[_Key, tuple[float, Socket]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()  # $refresh verifications

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def clock(self) -> float:
        """Unix seconds, as the verifier reads them."""
        assert self.verifier is not None
        return self.verifier.clock()

    def accepts(self, token: str | None) -> bool:
        """Whether ``token`` is for the verifier (JWT on and the token JWT-shaped)."""
        return self.verifier is not None and token is not None and looks_like_jwt(token)

    async def start(self) -> None:
        if self.verifier is not None:
            await self.verifier.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # connection tokens

    def admit(self, socket: Socket, claims: TokenClaims) -> None:
        """``socket`` was admitted with ``claims``: it is that user until the token ends."""
        socket.user = claims.user
        socket.token_claims = claims
        self._schedule(socket, None, claims.expires)

    def forget(self, socket: Socket) -> None:
        """``socket`` closed: its deadlines go (the heap entries are skipped, then compacted)."""
        if socket.token_claims is None and not self._deadlines:
            return
        key = id(socket)
        self._deadlines.pop((key, None), None)
        for room in socket.rooms:
            self._deadlines.pop((key, room), None)

    def refresh_message(self, socket: Socket, packet: Event) -> None:
        """``["$refresh", {"token": ..., "room"?: ...}, id?]``: a fresh connection token (or a
        subscription token for ``room``). Answered with ``{"expires": exp}`` or an error
        (the token error's code); a refused refresh keeps the connection on its old token."""
        data = packet.data
        token = data.get("token") if type(data) is dict else None
        room = data.get("room") if type(data) is dict else None
        if self.verifier is None or type(token) is not str or (
            room is not None and type(room) is not str
        ):
            why = ("this server does not take tokens" if self.verifier is None else
                   'expected {"token": "<jwt>"} or {"token": "<jwt>", "room": "<room>"}')
            socket.reject(ErrorCode.BAD_MESSAGE, why, event="$refresh", ack_id=packet.ack_id,
                          binary=packet.binary)
            return
        task = asyncio.get_running_loop().create_task(self._refresh(socket, packet, token, room))
        self._running.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._running.discard)

    async def _refresh(self, socket: Socket, packet: Event, token: str, room: str | None) -> None:
        verifier = self.verifier
        assert verifier is not None
        expires: float | None
        try:
            if room is None:
                current = socket.token_claims
                if current is None:
                    raise TokenError(TokenErrorCode.WRONG_KIND,
                                     "this connection was not opened with a token")
                claims = await verifier.verify_async(token)
                check_refresh(current, claims)
                expires = claims.expires
            else:
                if (id(socket), room) not in self._deadlines:
                    raise TokenError(TokenErrorCode.WRONG_ROOM,
                                     f"no subscription token holds {room!r} for this socket")
                sub = await verifier.verify_subscription_async(token, room, socket.user)
                expires = sub.expires
        except TokenError as exc:
            if socket.connected:
                socket.reject(exc.code, exc.message, event="$refresh", ack_id=packet.ack_id,
                              binary=packet.binary)
            return
        if not socket.connected:
            return
        if room is None:
            socket.token_claims = claims
        self._schedule(socket, room, expires)
        if packet.ack_id is not None:
            socket.reply(packet.ack_id, {"expires": expires}, binary=packet.binary)

    # room subscription tokens

    def hold_room(self, socket: Socket, room: str, expires: float) -> None:
        """``socket`` joined ``room`` on a subscription token ending at ``expires``."""
        self._schedule(socket, room, expires)

    def drop_room(self, socket: Socket, room: str) -> None:
        self._deadlines.pop((id(socket), room), None)

    # expiry

    def _schedule(self, socket: Socket, room: str | None, expires: float | None) -> None:
        key = (id(socket), room)
        if expires is None:
            self._deadlines.pop(key, None)
            return
        assert self.verifier is not None
        deadline = expires + self.verifier.leeway
        self._deadlines[key] = (deadline, socket)
        heapq.heappush(self._heap, (deadline, next(self._seq), key[0], room))
        if len(self._heap) > 2 * len(self._deadlines) + 1024:
            self._compact()
        if self._timer is None:
            self._arm()

    def _compact(self) -> None:
        deadlines = self._deadlines
        self._heap = [e for e in self._heap
                      if (live := deadlines.get((e[2], e[3]))) is not None and live[0] == e[0]]
        heapq.heapify(self._heap)

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # scheduled outside a loop (tests of the heap alone)
            return
        self._timer = loop.call_later(self.check_interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.expire_due()
        if self._heap:
            self._arm()

    def expire_due(self, now: float | None = None) -> int:
        """Close the sockets (4003) and end the room memberships whose token ran out by
        ``now`` (default: the clock). Returns how many. The timer calls this; tests may too."""
        if self.verifier is None:
            return 0
        if now is None:
            now = self.clock()
        heap, deadlines = self._heap, self._deadlines
        done = 0
        while heap and heap[0][0] <= now:
            deadline, _, ident, room = heapq.heappop(heap)
            key = (ident, room)
            live = deadlines.get(key)
            if live is None or live[0] != deadline:
                continue  # refreshed since, or closed
            del deadlines[key]
            socket = live[1]
            if not socket.connected or (room is not None and room not in socket.rooms):
                continue  # closed, or out of the room already (server.remove_room)
            done += 1
            if room is None:
                logger.info("closing %s: token expired", socket.id,
                            extra={"event": "close", "sid": socket.id, "code": 4003})
                socket.fail(CloseCode.TOKEN_EXPIRED, "token_expired")
            else:
                socket.leave(room)
                socket.send_system("$left", {"room": room, "reason": "token_expired"})
        return done

    def pending(self) -> int:
        """Deadlines held (connection and room tokens of open sockets)."""
        return len(self._deadlines)

    def describe(self) -> dict[str, Any]:
        return {"deadlines": len(self._deadlines), "heap": len(self._heap)}


def verifier_for(config: Config, clock: Callable[[], float]) -> TokenVerifier | None:
    """The verifier the ``jwt_*`` options describe (None: JWT off). ``clock`` (Unix seconds)
    also paces the JWKS reloads. Raises ConfigError naming the key option."""
    sources = [n for n in ("jwt_secret", "jwt_public_key", "jwt_jwks")
               if getattr(config, n) is not None]
    if not sources:
        return None
    try:
        return TokenVerifier.from_options(
            jwt_secret=config.jwt_secret, jwt_public_key=config.jwt_public_key,
            jwt_jwks=config.jwt_jwks, jwt_audience=config.jwt_audience,
            jwt_issuer=config.jwt_issuer, jwt_leeway=config.jwt_leeway,
            jwt_jwks_refresh_interval=config.jwt_jwks_refresh_interval,
            jwt_max_token_bytes=config.jwt_max_token_bytes,
            clock=clock, monotonic=clock,
        )
    except ValueError as exc:
        raise ConfigError(sources[0], str(exc)) from None
