"""Users: who a connection belongs to, and this node's index of the connections of each user.

A socket's user (``socket.user``) comes from what the authentication hook returned
(``user_of``), or from ``server.set_user(socket, user)``. ``Users`` files every *admitted*
socket that has one under it, from its welcome to its close, so ``server.to_user`` and
``server.disconnect_user`` find a user's connections here without a scan. It holds only open,
admitted sockets (bounded by ``max_connections``); a resumed session is a new admission of
the same user (a resume needs the same identity), a take-over closes the old connection first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from smartsocket.auth.tokens import TokenClaims
from smartsocket.protocol.names import check_user

__all__ = ["Users", "check_user", "user_of"]

if TYPE_CHECKING:
    from smartsocket.server.socket import Socket

logger = logging.getLogger("smartsocket.server")


def user_of(identity: Any) -> str | None:
    """The user an authentication hook's result names: ``identity["user"]`` for a mapping,
    ``identity.user`` for an object (``auth.TokenClaims``: the token's ``sub``); a str, or an
    int (made a str). None when there is none; any other value is logged and ignored."""
    if type(identity) is TokenClaims:
        return identity.user  # the token's sub: verified a non-empty str
    if identity is None or isinstance(identity, str | bytes):
        return None  # a bare str names the credentials (API keys: "key:<hash>"), not a user
    if isinstance(identity, Mapping):
        value = identity.get("user")
    else:
        value = getattr(identity, "user", None)
    if value is None:
        return None
    try:
        return check_user(value)
    except (TypeError, ValueError) as exc:
        logger.warning("the authentication result names no usable user: %s", exc)
        return None


class Users:
    """The admitted sockets of each user on this node."""

    __slots__ = ("_by_user", "_filed")

    def __init__(self) -> None:
        self._by_user: dict[str, dict[Socket, None]] = {}
        # The user each socket is filed under: its close unfiles it from there even if
        # ``socket.user`` was reassigned behind our back.
        self._filed: dict[Socket, str] = {}

    def __len__(self) -> int:
        """How many users have a connection here."""
        return len(self._by_user)

    def __contains__(self, user: object) -> bool:
        return user in self._by_user

    def add(self, socket: Socket) -> None:
        """``socket`` was admitted (welcomed): file it under its user, if it has one."""
        user = socket.user
        if user is not None:
            self._filed[socket] = user
            self._by_user.setdefault(user, {})[socket] = None

    def remove(self, socket: Socket) -> None:
        """``socket`` closed (or changes user)."""
        user = self._filed.pop(socket, None)
        if user is None:
            return
        sockets = self._by_user[user]
        del sockets[socket]
        if not sockets:
            del self._by_user[user]

    def change(self, socket: Socket, user: str | None, admitted: bool) -> None:
        """Give ``socket`` another user (None: none); ``admitted``: it is filed here."""
        if admitted:
            self.remove(socket)
        socket.user = user
        if admitted:
            self.add(socket)

    def sockets(self, user: str) -> list[Socket]:
        """The user's connections here (a copy: closing them changes the index)."""
        return list(self._by_user.get(user, ()))

    def count(self, user: str) -> int:
        return len(self._by_user.get(user, ()))

    def names(self) -> list[str]:
        """The users with a connection here."""
        return list(self._by_user)

    @property
    def filed(self) -> int:
        """How many sockets are filed (for tests and stats)."""
        return len(self._filed)
