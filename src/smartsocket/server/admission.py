"""Who may connect, and when a connection becomes a socket the application sees.

Checks at the upgrade (origin, authentication when credentials are already there) answer
with an HTTP error before any WebSocket exists.

Credentials are checked in this order: a JWT-shaped token (three dot-separated parts) goes
to the JWT verifier when one is configured (``jwt_*``; ``server/tokens.py``) and that answer
is final; any other credentials go to the ``authenticate`` hook if there is one, else to the
API keys. After the upgrade: the per-IP limit, async
authentication hooks and the ``$auth`` message. A socket is *admitted* (gets ``$welcome`` and
reaches ``on_connection``) only once authenticated; until then it may send only ``$auth`` and
``$ping``, for at most ``auth_timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smartsocket.auth.errors import TokenError, TokenErrorCode
from smartsocket.auth.tokens import TokenClaims
from smartsocket.handlers import Handler
from smartsocket.protocol import envelope
from smartsocket.protocol.codes import CloseCode
from smartsocket.protocol.envelope import Event
from smartsocket.security import (
    ApiKeys,
    AuthError,
    AuthRequest,
    bearer_token,
    origin_allowed,
    parse_cookies,
    parse_origins,
)
from smartsocket.server.users import user_of
from smartsocket.transport import HandshakeRequest, HttpResponse

if TYPE_CHECKING:
    from smartsocket.config import Config
    from smartsocket.metrics import Stats
    from smartsocket.server.socket import Socket
    from smartsocket.server.tokens import TokenSessions

logger = logging.getLogger("smartsocket.security")

_UNAUTHORIZED = HttpResponse(401, b"unauthorized\n", headers={"WWW-Authenticate": "Bearer"})


class Admission:
    """Origin, authentication and per-IP policy of one server (for one configuration: the
    server makes a new one, with the same hook, when it is reconfigured). ``spawn`` runs async
    hooks; ``admit`` gets each socket once authenticated (``Resumer.admit``)."""

    def __init__(
        self, config: Config, *, spawn: Callable[[Any], None], admit: Callable[[Socket], None],
        tokens: TokenSessions, stats: Stats | None = None, hook: Handler | None = None,
        pending: Callable[[Any], int] = lambda ip: 0,
    ) -> None:
        self._config = config
        # Connections of an address that are not sockets yet but count as theirs: Socket.IO
        # sessions without a socket (server/socketio/endpoint.py).
        self._pending = pending
        self._spawn = spawn
        self._admit = admit
        self._tokens = tokens
        self._stats = stats
        self._origins = parse_origins(config.allowed_origins)
        self._api_keys = ApiKeys(config.api_keys) if config.api_keys else None
        self._hook = hook
        self._per_ip: dict[Any, int] = {}

    @property
    def hook(self) -> Handler | None:
        """The application's authentication hook (``server.authenticate``)."""
        return self._hook

    @property
    def required(self) -> bool:
        return self._hook is not None or self._api_keys is not None or self._tokens.enabled

    def set_hook(self, fn: Callable[..., Any]) -> None:
        self._hook = Handler(fn, max_args=1, called_with="(request: AuthRequest)")

    # at the upgrade

    def check_upgrade(self, request: HandshakeRequest) -> HttpResponse | tuple[bool, Any]:
        """An HTTP refusal, or (authenticated, identity) for the new socket."""
        if not origin_allowed(request.headers.get("Origin"), self._origins):
            logger.info(
                "refused origin %r", request.headers.get("Origin"),
                extra={"event": "limit", "limit": "origin"},
            )
            return HttpResponse(403, b"origin not allowed\n")
        if not self.required:
            return True, None
        token = bearer_token(request.headers, request.query)
        if self._tokens.accepts(token):
            return self._check_jwt(token)
        hook = self._hook
        if hook is not None and hook.is_async:
            return False, None  # runs once the socket is open (see open())
        auth = self._auth_request(request, None)
        try:
            identity = self._call_sync(auth)
        except AuthError as exc:
            logger.info("authentication refused: %s", exc)
            return _UNAUTHORIZED
        if identity is None and auth.token is not None:
            return _UNAUTHORIZED  # wrong credentials: no second chance through $auth
        return identity is not None, identity

    def _check_jwt(self, token: Any) -> HttpResponse | tuple[bool, Any]:
        verifier = self._tokens.verifier
        assert verifier is not None
        try:
            return True, verifier.verify(token)
        except TokenError as exc:
            if exc.code is TokenErrorCode.UNKNOWN_KEY and verifier.jwks is not None:
                return False, None  # maybe a rotation: open() reloads the key set and retries
            logger.info("token refused at the upgrade: %s", exc)
            return HttpResponse(401, f"unauthorized: {exc.code}\n".encode(),
                                headers={"WWW-Authenticate": "Bearer"})

    # after the upgrade

    def open(self, socket: Socket) -> bool:
        """A new connection; False if it was refused (and is being closed)."""
        limit = self._config.max_connections_per_ip
        ip = _ip(socket.remote_address)
        count = self._per_ip.get(ip, 0) + 1
        self._per_ip[ip] = count
        if limit and count + self._pending(ip) > limit:
            logger.info(
                "too many connections from %s", ip,
                extra={"event": "limit", "limit": "connections_per_ip", "ip": str(ip)},
            )
            socket.fail(CloseCode.TRY_AGAIN_LATER, "too many connections from your address")
            return False
        if socket.authenticated:
            if isinstance(socket.identity, TokenClaims):  # verified at the upgrade
                self._admit_claims(socket, socket.identity)
            return True
        socket.set_deadline(self._config.auth_timeout, self._auth_timed_out)
        token = bearer_token(socket.request.headers, socket.request.query)
        hook = self._hook
        if token is not None and self._tokens.accepts(token):
            self._spawn(self._verify_jwt(socket, token))
        elif hook is not None and hook.is_async:
            auth = self._auth_request(socket.request, socket.remote_address)
            self._spawn(self._authenticate_async(socket, auth, upgrade=True))
        else:
            self._ask_for_credentials(socket)
        return True

    def _ask_for_credentials(self, socket: Socket) -> None:
        """Tell a socket that came without credentials, at once, that it must send ``$auth``:
        a client with nothing to send fails fast instead of waiting out ``auth_timeout``."""
        timeout = self._config.auth_timeout
        socket.send_encoded(envelope.encode_event("$auth_required", {
            "timeout": round(timeout * 1000),
            "message": f"this server requires authentication: send $auth within {timeout:g} s",
        }), False)

    def count(self, ip: Any) -> int:
        """Open sockets (native and Socket.IO) of the address ``ip``."""
        return self._per_ip.get(ip, 0)

    def close(self, socket: Socket) -> None:
        ip = _ip(socket.remote_address)
        count = self._per_ip.get(ip, 0) - 1
        if count > 0:
            self._per_ip[ip] = count
        else:
            self._per_ip.pop(ip, None)
        socket.clear_deadline()
        self._tokens.forget(socket)

    def auth_message(self, socket: Socket, packet: Event) -> None:
        """``["$auth", {"token": ...} | anything]`` from a socket not authenticated yet (the
        socket refuses it once authenticated)."""
        if socket.authenticated or not self.required:  # (not required: sockets start authenticated)
            return
        data = packet.data
        token = data.get("token") if type(data) is dict else None
        auth = self._auth_request(socket.request, socket.remote_address, auth=data)
        if type(token) is str:
            auth = _with_token(auth, token)
            if self._tokens.accepts(token):
                self._spawn(self._verify_jwt(socket, token))
                return
        hook = self._hook
        if hook is not None and hook.is_async:
            self._spawn(self._authenticate_async(socket, auth, upgrade=False))
            return
        try:
            identity = self._call_sync(auth)
        except AuthError as exc:
            logger.info("authentication refused: %s", exc)
            identity = None
        self._settle(socket, identity, final=True)

    async def _verify_jwt(self, socket: Socket, token: str) -> None:
        """A JWT from ``$auth``, or one whose key set needed a reload: final either way."""
        verifier = self._tokens.verifier
        assert verifier is not None
        try:
            claims = await verifier.verify_async(token)
        except TokenError as exc:
            logger.info("token refused: %s", exc)
            if socket.connected and not socket.authenticated:
                expired = exc.code is TokenErrorCode.EXPIRED
                self._refuse(socket, CloseCode.TOKEN_EXPIRED if expired
                             else CloseCode.UNAUTHORIZED, str(exc.code))
            return
        if socket.connected and not socket.authenticated:
            self._admit_claims(socket, claims)
            self._settle(socket, claims.user, final=True)

    def _admit_claims(self, socket: Socket, claims: TokenClaims) -> None:
        socket.identity = claims.user
        socket.data["identity"] = claims.user
        self._tokens.admit(socket, claims)

    async def _authenticate_async(
        self, socket: Socket, auth: AuthRequest, *, upgrade: bool
    ) -> None:
        assert self._hook is not None
        try:
            identity = await self._hook.fn(*(auth,)[: self._hook.arity])
        except AuthError as exc:
            logger.info("authentication refused: %s", exc)
            identity = None
        except Exception:
            logger.exception("authenticate hook failed")
            identity = None
        # At the upgrade, no identity and no credentials yet: wait for $auth.
        final = not upgrade or auth.token is not None
        self._settle(socket, identity, final=final)
        if identity is None and not final and socket.connected and not socket.authenticated:
            self._ask_for_credentials(socket)

    def _settle(self, socket: Socket, identity: Any, *, final: bool) -> None:
        if not socket.connected or socket.authenticated:
            return
        if identity is None:
            if final:
                self._refuse(socket)
            return
        socket.authenticated = True
        socket.identity = identity
        socket.data["identity"] = identity
        if socket.token_claims is None:  # a token names its user itself (TokenSessions)
            socket.user = user_of(identity)
        socket.clear_deadline()
        self._admit(socket)

    def _refuse(self, socket: Socket, code: int = CloseCode.UNAUTHORIZED,
                reason: str = "unauthorized") -> None:
        stats = self._stats
        if stats is not None:
            stats.rejected_connections += 1
        socket.fail(code, reason)

    def _auth_timed_out(self, socket: Socket) -> None:
        socket.clear_deadline()  # fired: forget it
        if socket.connected and not socket.authenticated:
            self._refuse(socket)

    def _call_sync(self, auth: AuthRequest) -> Any:
        if self._hook is not None:
            return self._hook.fn(*(auth,)[: self._hook.arity])
        if self._api_keys is None:  # JWT only, and these credentials are not a JWT
            return None
        return self._api_keys.identify(auth.token)

    @staticmethod
    def _auth_request(
        request: HandshakeRequest, remote: tuple[Any, ...] | None, auth: Any = None
    ) -> AuthRequest:
        return AuthRequest(
            path=request.path,
            headers=request.headers,
            query=request.query,
            remote_address=remote,
            token=bearer_token(request.headers, request.query),
            auth=auth,
            cookies=parse_cookies(request.headers),
        )


def _with_token(auth: AuthRequest, token: str) -> AuthRequest:
    from dataclasses import replace

    return replace(auth, token=token)


def _ip(address: tuple[Any, ...] | None) -> Any:
    return address[0] if address else None
