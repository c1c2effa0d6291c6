"""JWT connection tokens, $refresh, expiry (4003) and room policies against a live server: real
sockets on 127.0.0.1, tokens signed with PyJWT (tests/tokenkit.py), clocks injected (the
server's ``_access.token_clock``), never real seconds of waiting for an expiry."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import websockets

import tokenkit as tk
from smartsocket import SmartSocket, Socket
from smartsocket.errors import ConfigError
from smartsocket.policies import RoomPolicy
from smartsocket.testing import running, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LIMITS_OFF = {"rate_limit_messages": 0, "rate_limit_bytes": 0}


def jwt_server(clock: tk.FakeClock, **options: Any) -> SmartSocket:
    options.setdefault("jwt_secret", tk.SECRET)
    server = SmartSocket(**LIMITS_OFF, **options)
    server._access.token_clock = clock
    server.on("whoami", lambda socket: {"user": socket.user, "name": socket.claims.get("name"),
                                        "identity": socket.identity})

    def join(socket: Socket, data: dict[str, Any]) -> bool:
        socket.join(data["room"], token=data.get("token"))
        return True

    def publish(socket: Socket, data: dict[str, Any]) -> int:
        return socket.publish(data["room"], "said", data.get("text"))

    server.on("join", join)
    server.on("publish", publish)
    return server


@asynccontextmanager
async def connect(server: SmartSocket, token: str | None = None, *,
                  how: str = "header") -> AsyncIterator[Any]:
    url, headers = server.url, {}
    if token is not None and how == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None and how == "query":
        url += f"?token={token}"
    async with websockets.connect(url, additional_headers=headers) as ws:
        if token is not None and how == "auth":
            assert json.loads(await ws.recv())[0] == "$auth_required"
            await ws.send(json.dumps(["$auth", {"token": token}]))
        yield ws


async def recv(ws: Any, name: str | int | None = None) -> Any:
    """The next message (skipping $ping); with ``name``, the next with that event or ack id."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message[0] == "$ping":
            continue
        if name is None or message[0] == name:
            return message


async def call(ws: Any, ack_id: int, event: str, data: Any = None) -> Any:
    await ws.send(json.dumps([event, data, ack_id]))
    return await recv(ws, ack_id)


async def welcomed(ws: Any) -> dict[str, Any]:
    name, data = await recv(ws)
    assert name == "$welcome", (name, data)
    return dict(data)


async def closed_with(ws: Any) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        for _ in range(100):
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


async def refused_at_upgrade(server: SmartSocket, token: str) -> str:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(server.url,
                                      additional_headers={"Authorization": f"Bearer {token}"}):
            pass
    assert info.value.response.status_code == 401
    return info.value.response.body.decode().strip()


# --- connection tokens


@pytest.mark.parametrize("how", ["header", "query", "auth"])
async def test_valid_token_in_each_place_names_the_user(how: str) -> None:
    clock = tk.FakeClock()
    async with running(jwt_server(clock)) as server, connect(
        server, tk.sign(tk.claims(name="Ann")), how=how
    ) as ws:
        await welcomed(ws)
        assert await call(ws, 1, "whoami") == [1, {"user": "ann", "name": "Ann",
                                                   "identity": "ann"}]


@pytest.mark.parametrize(("token", "code"), [
    (tk.sign(tk.claims(exp=tk.NOW - 60)), "token_expired"),
    (tk.sign(tk.claims(nbf=tk.NOW + 60)), "token_not_yet_valid"),
    (tk.sign(tk.claims(), key="another-secret-another-secret-0123"), "token_invalid"),
    (tk.forge({"alg": "none", "typ": "JWT"}, tk.claims()), "token_algorithm"),
    (tk.sign(tk.claims(aud="someone-else")), "token_audience"),
    (tk.sign(tk.claims(iss="https://evil.example")), "token_issuer"),
    (tk.sign({"sub": "ann", "room": "chat:1", "exp": tk.NOW + 60}), "token_wrong_kind"),
    # A header nested past the JSON decoder's depth (2.4 KB, under the size limit): it was an
    # HTTP 500 at the upgrade and, through $auth, a socket left waiting for auth_timeout.
    (tk.b64(b'{"alg":"HS256","x":' + b"[" * 1200 + b"]" * 1200 + b"}") + "."
     + tk.b64(b"{}") + ".c2ln", "token_invalid"),
])
async def test_wrong_tokens_are_refused_at_the_upgrade_and_in_auth(token: str,
                                                                   code: str) -> None:
    clock = tk.FakeClock()
    options: dict[str, Any] = {}
    good = tk.sign(tk.claims())
    if code in ("token_audience", "token_issuer"):
        good = tk.sign(tk.claims(aud="chat-app", iss="https://login.example"))
        options = {"jwt_audience": "chat-app", "jwt_issuer": "https://login.example"}
        if code == "token_issuer":
            token = tk.sign(tk.claims(aud="chat-app", iss="https://evil.example"))
    async with running(jwt_server(clock, **options)) as server:
        assert await refused_at_upgrade(server, token) == f"unauthorized: {code}"
        async with connect(server, token, how="auth") as ws:
            close = await closed_with(ws)
        assert close == ((4003, code) if code == "token_expired" else (4001, code))
        assert server.stats()["raw"]["rejectedConnections"] == 2
        async with connect(server, good) as ws:  # others still get in
            await welcomed(ws)


async def test_hs_rs_confusion_is_refused(tmp_path: Path) -> None:
    key = tk.rsa_key()
    pem = tmp_path / "auth.pem"
    pem.write_bytes(tk.public_pem(key))
    clock = tk.FakeClock()
    server = jwt_server(clock, jwt_secret=None, jwt_public_key=str(pem))
    async with running(server):
        forged = tk.forge({"alg": "HS256", "typ": "JWT"}, tk.claims(), hmac_key=tk.public_pem(key))
        assert await refused_at_upgrade(server, forged) == "unauthorized: token_algorithm"
        async with connect(server, tk.sign(tk.claims(), key=key, alg="RS256")) as ws:
            await welcomed(ws)


async def test_leeway_takes_a_little_skew() -> None:
    clock = tk.FakeClock()
    async with running(jwt_server(clock, jwt_leeway=30)) as server:
        async with connect(server, tk.sign(tk.claims(exp=tk.NOW - 20))) as ws:
            await welcomed(ws)  # expired 20 s ago, within the 30 s leeway
        async with connect(server, tk.sign(tk.claims(nbf=tk.NOW + 20))) as ws:
            await welcomed(ws)
        assert await refused_at_upgrade(
            server, tk.sign(tk.claims(exp=tk.NOW - 40))) == "unauthorized: token_expired"


async def test_api_keys_still_work_beside_jwt() -> None:
    clock = tk.FakeClock()
    async with running(jwt_server(clock, api_keys="plain-key")) as server:
        async with connect(server, "plain-key") as ws:
            await welcomed(ws)
            _, reply = await call(ws, 1, "whoami")
            assert reply["user"] is None and reply["identity"].startswith("key:")
        async with connect(server, tk.sign(tk.claims())) as ws:
            await welcomed(ws)
        assert await refused_at_upgrade(server, "a.b.c") == "unauthorized: token_invalid"


def test_bad_jwt_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jwt_secret"):
        SmartSocket(jwt_secret="short")
    with pytest.raises(ConfigError, match="jwt_public_key"):
        SmartSocket(jwt_secret=tk.SECRET, jwt_public_key=str(tmp_path / "x.pem"))
    with pytest.raises(ConfigError, match="jwt_public_key"):
        SmartSocket(jwt_public_key=str(tmp_path / "missing.pem"))


# --- JWKS over HTTP: unknown kid, then a rotation


@contextmanager
def jwks_server(body: list[bytes]) -> Iterator[tuple[str, list[int]]]:
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body[0])

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_jwks_unknown_kid_then_rotation() -> None:
    old, new = tk.rsa_key("old"), tk.rsa_key("new")
    body = [tk.jwks(tk.jwk(old, "k1"))]
    clock = tk.FakeClock()
    with jwks_server(body) as (url, hits):
        server = jwt_server(clock, jwt_secret=None, jwt_jwks=url)
        async with running(server):
            assert hits == [1]  # loaded at start
            async with connect(server, tk.sign(tk.claims(exp=tk.NOW + 3600), key=old,
                                               alg="RS256", kid="k1")) as ws:
                await welcomed(ws)
            # The issuer rotates to k2: the first k2 token makes the server reload the set
            # (at most once every 30 s: the JWKS reads the injected clock too).
            clock.advance(31)
            body[0] = tk.jwks(tk.jwk(old, "k1"), tk.jwk(new, "k2"))
            async with connect(server, tk.sign(tk.claims(exp=tk.NOW + 3600), key=new,
                                               alg="RS256", kid="k2")) as ws:
                await welcomed(ws)
            assert len(hits) == 2
            # A kid nobody published: one reload is rate-limited away, refused with 4001.
            async with connect(server, tk.sign(tk.claims(exp=tk.NOW + 3600), key=new,
                                               alg="RS256", kid="k9")) as ws:
                assert await closed_with(ws) == (4001, "token_unknown_key")
            assert len(hits) == 2


async def test_tokens_at_and_over_jwt_max_token_bytes() -> None:
    clock = tk.FakeClock()
    token = tk.sign(tk.claims(pad="x" * 300))
    limit = len(token)
    async with running(jwt_server(clock, jwt_max_token_bytes=limit)) as server, connect(
        server, token
    ) as ws:  # at the limit
        await welcomed(ws)
    async with running(jwt_server(clock, jwt_max_token_bytes=len(token) - 1)) as server:
        assert await refused_at_upgrade(server, token) == "unauthorized: token_invalid"
        async with connect(server, token, how="auth") as ws:
            assert await closed_with(ws) == (4001, "token_invalid")
        async with connect(server, tk.sign(tk.claims())) as ws:  # others still get in
            await welcomed(ws)


async def test_jwks_refresh_interval_bounds_reloads_by_unknown_kids() -> None:
    key = tk.rsa_key("old")
    clock = tk.FakeClock()
    with jwks_server([tk.jwks(tk.jwk(key, "k1"))]) as (url, hits):
        server = jwt_server(clock, jwt_secret=None, jwt_jwks=url, jwt_jwks_refresh_interval=2)
        async with running(server):
            assert hits == [1]
            for step, kid, reloads in ((1.9, "k7", 1), (0.1, "k8", 2), (0.0, "k9", 2)):
                clock.advance(step)  # under the interval no reload; at it one, then none
                token = tk.sign(tk.claims(exp=tk.NOW + 3600), key=key, alg="RS256", kid=kid)
                async with connect(server, token) as ws:
                    assert await closed_with(ws) == (4001, "token_unknown_key")
                assert len(hits) == reloads, kid


# --- refresh and expiry


async def test_refresh_keeps_the_connection_and_expiry_closes_4003() -> None:
    clock = tk.FakeClock()
    async with running(jwt_server(clock, jwt_leeway=1)) as server, connect(
        server, tk.sign(tk.claims(exp=tk.NOW + 10))
    ) as ws, connect(server, tk.sign(tk.claims(sub="bob", exp=tk.NOW + 10))) as idle:
        if True:
            await welcomed(ws)
            await welcomed(idle)
            clock.advance(8)
            fresh = tk.sign(tk.claims(iat=clock.now, exp=clock.now + 10))
            assert await call(ws, 1, "$refresh", {"token": fresh}) == [
                1, {"expires": clock.now + 10}]
            clock.advance(5)  # past the first token's exp + leeway: only bob's lapses
            assert server.expire_tokens() == 1
            assert await closed_with(idle) == (4003, "token_expired")
            assert await call(ws, 2, "whoami") == [2, {"user": "ann", "name": None,
                                                       "identity": "ann"}]
            clock.advance(10)
            assert server.expire_tokens() == 1
            assert await closed_with(ws) == (4003, "token_expired")


@pytest.mark.parametrize(("token", "code"), [
    (tk.sign(tk.claims(sub="bob")), "token_user_changed"),
    (tk.sign(tk.claims(exp=tk.NOW - 60)), "token_expired"),
    (tk.sign(tk.claims(), key="another-secret-another-secret-0123"), "token_invalid"),
    (42, "bad_message"),
])
async def test_refused_refresh_keeps_the_old_token(token: Any, code: str) -> None:
    clock = tk.FakeClock()
    async with running(jwt_server(clock)) as server, connect(
        server, tk.sign(tk.claims(exp=tk.NOW + 30))
    ) as ws:
        await welcomed(ws)
        _, _, error = await call(ws, 1, "$refresh", {"token": token})
        assert error["code"] == code
        assert server.expire_tokens() == 0
        assert (await call(ws, 2, "whoami"))[1]["user"] == "ann"
        clock.advance(40)
        assert server.expire_tokens() == 1
        assert (await closed_with(ws))[0] == 4003


async def test_refresh_of_an_api_key_connection_is_refused() -> None:
    clock = tk.FakeClock()
    async with running(jwt_server(clock, api_keys="plain-key")) as server, connect(
        server, "plain-key"
    ) as ws:
        await welcomed(ws)
        _, _, error = await call(ws, 1, "$refresh", {"token": tk.sign(tk.claims())})
        assert error["code"] == "token_wrong_kind"


async def test_expiry_heap_stays_bounded_by_live_sockets() -> None:
    clock = tk.FakeClock()
    async with running(jwt_server(clock)) as server:
        for _ in range(5):
            async with connect(server, tk.sign(tk.claims(exp=tk.NOW + 3600))) as ws:
                await welcomed(ws)
        await wait_for(lambda: not server.sockets, 5)
        assert server._access.tokens.pending() == 0


# --- room policies


def policy_server(clock: tk.FakeClock, **options: Any) -> SmartSocket:
    server = jwt_server(clock, **options)
    server.policy("lobby")  # anyone
    server.policy("members", join="authenticated")
    server.policy("chat:*", join="grant", publish="grant", presence=True)
    server.policy("user:*", join="user")
    server.policy("private:*", join="subscription")
    server.policy("mixed:*", join=["grant", "subscription"])
    server.policy("admin", join="server", publish="server")
    server.policy("news", rate=1, burst=2)
    return server


async def joined(ws: Any, ack_id: int, room: str, token: str | None = None) -> Any:
    data: dict[str, Any] = {"room": room}
    if token is not None:
        data["token"] = token
    return await call(ws, ack_id, "join", data)


async def test_every_join_rule_allowed_and_refused() -> None:
    clock = tk.FakeClock()
    server = policy_server(clock, api_keys="plain-key")
    async with running(server):
        ann = tk.sign(tk.claims(rooms={"chat:*": ["join"], "chat:vip": ["join", "publish"]}))
        async with connect(server, ann) as ws, connect(server, "plain-key") as anon:
            await welcomed(ws)
            await welcomed(anon)
            assert await joined(ws, 1, "lobby") == [1, True]
            assert await joined(anon, 1, "lobby") == [1, True]
            assert await joined(ws, 2, "members") == [2, True]
            assert (await joined(anon, 2, "members"))[2]["message"].startswith(
                "not_authenticated")
            assert await joined(ws, 3, "chat:general") == [3, True]
            assert (await joined(anon, 3, "chat:general"))[2]["code"] == "forbidden"
            assert await joined(ws, 4, "user:ann") == [4, True]
            _, _, error = await joined(ws, 5, "user:bob")
            assert (error["code"], error["message"].split(":")[0]) == ("forbidden",
                                                                       "not_owner")
            _, _, error = await joined(ws, 6, "admin")
            assert error["message"].startswith("server_only")
            me = next(s for s in server.sockets.values() if s.user == "ann")
            me.join("admin", by_server=True)  # the app's own decision: never refused
            assert "admin" in me.rooms
            assert await joined(ws, 8, "elsewhere") == [8, True]  # no policy, no deny


async def test_deny_by_default_refuses_unmatched_rooms() -> None:
    clock = tk.FakeClock()
    async with running(policy_server(clock, rooms_deny_by_default=True)) as server, connect(
        server, tk.sign(tk.claims())
    ) as ws:
        await welcomed(ws)
        _, _, error = await joined(ws, 1, "elsewhere")
        assert error["code"] == "forbidden" and error["message"].startswith("no_policy")
        assert await joined(ws, 2, "lobby") == [2, True]
        _, _, error = await call(ws, 3, "publish", {"room": "elsewhere", "text": "x"})
        assert error["message"].startswith("no_policy")


async def test_publish_rules_allowed_and_refused() -> None:
    clock = tk.FakeClock()
    async with running(policy_server(clock)) as server:
        ann = tk.sign(tk.claims(rooms={"chat:*": ["join"], "chat:vip": ["join", "publish"]}))
        async with connect(server, ann) as ws:
            await welcomed(ws)
            _, _, error = await call(ws, 1, "publish", {"room": "lobby", "text": "x"})
            assert error["message"].startswith("not_member")
            await joined(ws, 2, "lobby")
            assert await call(ws, 3, "publish", {"room": "lobby", "text": "hi"}) == [3, 1]
            await joined(ws, 4, "chat:general")
            _, _, error = await call(ws, 5, "publish", {"room": "chat:general", "text": "x"})
            assert error["message"].startswith("not_granted")
            await joined(ws, 6, "chat:vip")
            assert await call(ws, 7, "publish", {"room": "chat:vip", "text": "vip"}) == [7, 1]
            next(s for s in server.sockets.values() if s.user == "ann").join(
                "admin", by_server=True)
            _, _, error = await call(ws, 8, "publish", {"room": "admin", "text": "x"})
            assert error["message"].startswith("server_only")
            assert server.room("admin").broadcast("notice", "by the app") == 1


async def test_policy_rate_and_presence_apply_to_the_room() -> None:
    clock = tk.FakeClock()
    async with running(policy_server(clock)) as server:
        now = [0]
        server._clock = lambda: now[0]
        async with connect(server, tk.sign(tk.claims(rooms=["chat:*"]))) as ws, connect(
            server, tk.sign(tk.claims(sub="bob", rooms=["chat:*"]))
        ) as bob:
            await welcomed(ws)
            await welcomed(bob)
            await joined(ws, 1, "news")
            assert (await call(ws, 2, "publish", {"room": "news"}))[1] == 1
            assert (await call(ws, 3, "publish", {"room": "news"}))[1] == 1
            _, _, error = await call(ws, 4, "publish", {"room": "news"})
            assert error["code"] == "rate_limited"  # rate 1/s, burst 2
            now[0] += 1_000_000_000
            assert (await call(ws, 5, "publish", {"room": "news"}))[1] == 1
            await joined(ws, 6, "chat:general")
            await joined(bob, 1, "chat:general")
            _, data = await recv(ws, "$presence")
            assert data["room"] == "chat:general" and "joined" in data


async def test_subscription_tokens_join_expire_and_refresh() -> None:
    clock = tk.FakeClock()
    async with running(policy_server(clock, jwt_leeway=0)) as server, connect(
        server, tk.sign(tk.claims(exp=tk.NOW + 3600, rooms=["mixed:1"]))
    ) as ws:
        await welcomed(ws)
        # Granted by the connection token: a subscription token sent along does not bound it.
        assert await joined(ws, 10, "mixed:1", tk.sign(
            {"sub": "ann", "room": "mixed:1", "exp": tk.NOW + 1})) == [10, True]
        _, _, error = await joined(ws, 1, "private:7")
        assert error["message"].startswith("subscription_required")
        other_room = tk.sign({"sub": "ann", "room": "private:8", "exp": tk.NOW + 10})
        _, _, error = await joined(ws, 2, "private:7", other_room)
        assert error["message"].startswith("subscription_invalid")
        other_user = tk.sign({"sub": "bob", "room": "private:7", "exp": tk.NOW + 10})
        _, _, error = await joined(ws, 3, "private:7", other_user)
        assert error["message"].startswith("subscription_invalid")
        sub = tk.sign({"sub": "ann", "room": "private:7", "exp": tk.NOW + 10})
        assert await joined(ws, 4, "private:7", sub) == [4, True]
        assert await joined(ws, 5, "private:9", tk.sign(
            {"sub": "ann", "room": "private:9", "exp": tk.NOW + 10})) == [5, True]
        clock.advance(8)
        fresh = tk.sign({"sub": "ann", "room": "private:7", "exp": clock.now + 10})
        assert await call(ws, 6, "$refresh", {"token": fresh, "room": "private:7"}) == [
            6, {"expires": clock.now + 10}]
        _, _, error = await call(ws, 7, "$refresh", {"token": fresh, "room": "private:8"})
        assert error["code"] == "token_wrong_room"
        clock.advance(5)
        assert server.expire_tokens() == 1  # private:9 lapsed; private:7 was refreshed
        assert await recv(ws, "$left") == ["$left", {"room": "private:9",
                                                     "reason": "token_expired"}]
        me = next(iter(server.sockets.values()))
        assert me.rooms == {"private:7", "mixed:1"}
        clock.advance(10)
        assert server.expire_tokens() == 1
        assert await recv(ws, "$left") == ["$left", {"room": "private:7",
                                                     "reason": "token_expired"}]
        assert me.connected and me.rooms == {"mixed:1"}
        server.remove_room("mixed:1")


def test_policy_in_python_checks_its_arguments() -> None:
    server = SmartSocket()
    with pytest.raises(ValueError, match="grants"):
        server.policy("chat:*", join="grants")
    with pytest.raises(ValueError, match=r"\*"):
        server.policy("a*b")
    policy = server.policy("chat:*", join=["grant", "subscription"], presence=True)
    assert server.policies == {"chat:*": policy}
    with pytest.raises(ValueError, match="twice"):
        server.policy("chat:*", RoomPolicy())


# --- the config file


def test_from_file_and_precedence(tmp_path: Path) -> None:
    path = tmp_path / "smartsocket.toml"
    path.write_text(f'port = 9000\nhost = "127.0.0.1"\njwt_secret = "{tk.SECRET}"\n'
                    'jwt_leeway = 2\nrooms_deny_by_default = true\n'
                    '[rooms."chat:*"]\njoin = "grant"\npresence = true\n')
    server = SmartSocket.from_file(str(path), {"SMARTSOCKET_PORT": "9001"},
                                   jwt_leeway=3)
    assert server.config.port == 9001  # env over file
    assert server.config.host == "127.0.0.1"  # file over defaults
    assert server.config.jwt_leeway == 3.0  # keyword arguments over env and file
    assert server.config.rooms_deny_by_default
    assert set(server.policies) == {"chat:*"}


def test_cli_config_flag_layers_the_file(tmp_path: Path) -> None:
    from smartsocket.cli import build_parser, config_file_from_args, config_from_args

    path = tmp_path / "smartsocket.toml"
    path.write_text('port = 9000\nmax_connections = 5\n[rooms.lobby]\njoin = "anyone"\n')
    args = build_parser().parse_args(["serve", "--config", str(path), "--port", "9002"])
    file = config_file_from_args(args, {})
    assert file is not None and set(file.rooms) == {"lobby"}
    config = config_from_args(args, {"SMARTSOCKET_MAX_CONNECTIONS": "6",
                                     "SMARTSOCKET_PORT": "9001"}, file)
    assert (config.port, config.max_connections) == (9002, 6)  # flag > env > file
    args = build_parser().parse_args(["serve"])
    file = config_file_from_args(args, {"SMARTSOCKET_CONFIG": str(path)})
    assert file is not None and file.options["port"] == 9000


# --- the Python client: get_token, refresh ahead of expiry, reconnect after 4003


async def test_python_client_refreshes_by_itself_and_loses_nothing() -> None:
    """A "long-running" session with 10 s tokens over 120 s of driven time: the client
    refreshes ahead of each expiry (jittered), the server never closes it, and every message
    sent meanwhile arrives, in order."""
    import random

    from smartsocket import Client

    clock = tk.FakeClock()
    minted: list[float] = []

    async def get_token() -> str:
        minted.append(clock.now)
        return tk.sign(tk.claims(iat=clock.now, exp=clock.now + 10))

    server = jwt_server(clock, jwt_leeway=0)
    got: list[int] = []
    async with running(server):
        client = Client(server.url, get_token=get_token, token_clock=clock,
                        token_rng=random.Random(7))
        client.on("tick", got.append)
        await client.connect()
        me = next(iter(server.sockets.values()))
        for step in range(120):
            clock.advance(1)
            await client.check_token()
            assert server.expire_tokens() == 0, f"closed at step {step}"
            me.send("tick", step)
        await wait_for(lambda: len(got) == 120, 10)
        assert got == list(range(120)) and me.connected
        assert client.tokens is not None and client.tokens.refreshes >= 12
        # Each refresh came 2.5-3.5 s before the 10 s token ran out (a quarter, minus jitter).
        gaps = [b - a for a, b in itertools.pairwise(minted)]
        assert all(6 <= gap <= 8 for gap in gaps), gaps
        await client.close()


async def test_python_client_gets_a_new_token_after_4003() -> None:
    from smartsocket import Client

    clock = tk.FakeClock()
    tokens = [tk.sign(tk.claims(exp=tk.NOW + 10)), tk.sign(tk.claims(exp=tk.NOW + 3600))]
    calls = []

    def get_token() -> str:
        calls.append(1)
        return tokens[min(len(calls), 2) - 1]

    server = jwt_server(clock, jwt_leeway=0)
    async with running(server):
        client = Client(server.url, get_token=get_token, token_clock=clock,
                        reconnect_delay=0.01, reconnect_delay_max=0.02)
        connects: list[bool] = []
        client.on("connect", connects.append)
        await client.connect()
        first = client.sid
        assert client.tokens is not None
        client.tokens.due = None  # never refreshed: this test lets the token lapse
        clock.advance(20)
        assert server.expire_tokens() == 1
        await wait_for(lambda: len(connects) == 2 and client.connected, 10)
        assert client.sid != first and len(calls) == 2
        assert await client.call("whoami") == {"user": "ann", "name": None, "identity": "ann"}
        await client.close()


# --- the expiry heap at scale (no sockets on the wire: its bookkeeping alone)


class _Held:
    """What TokenSessions uses of a Socket."""

    def __init__(self, sid: int) -> None:
        self.id = str(sid)
        self.user: str | None = None
        self.token_claims: Any = None
        self.connected = True
        self.rooms: frozenset[str] = frozenset()
        self.closed_with: int | None = None

    def fail(self, code: int, reason: str) -> None:
        self.closed_with, self.connected = code, False


def test_expiry_heap_for_many_sockets_is_one_heap() -> None:
    from smartsocket.auth import TokenVerifier
    from smartsocket.server.tokens import TokenSessions

    clock = tk.FakeClock()
    sessions = TokenSessions(TokenVerifier(secret=tk.SECRET, leeway=0, clock=clock))
    live = [_Held(i) for i in range(20_000)]
    for i, held in enumerate(live):  # tokens ending over 20,000 s
        sessions.admit(held, _claims(f"u{i}", tk.NOW + 1 + i))
    assert sessions.pending() == 20_000
    for held in live[10_000:]:  # half of them close: their entries go at the next compaction
        sessions.forget(held)
    for i in range(5_000):  # churn: short-lived sockets come and go
        held = _Held(100_000 + i)
        sessions.admit(held, _claims("c", tk.NOW + 50_000))
        sessions.forget(held)
    assert sessions.describe()["heap"] <= 2 * sessions.pending() + 1024
    clock.advance(100)  # the first 100 tokens are due (exp < now); nothing else
    assert sessions.expire_due() == 100
    assert [h.closed_with for h in live[:101]] == [4003] * 100 + [None]
    assert sessions.expire_due() == 0


def test_a_closed_socket_is_not_held_by_its_stale_expiry_entry() -> None:
    import weakref

    from smartsocket.auth import TokenVerifier
    from smartsocket.server.tokens import TokenSessions

    clock = tk.FakeClock()
    sessions = TokenSessions(TokenVerifier(secret=tk.SECRET, leeway=0, clock=clock))
    held = _Held(1)
    sessions.admit(held, _claims("a", tk.NOW + 10))
    gone = weakref.ref(held)
    sessions.forget(held)
    del held
    assert gone() is None  # freed at the close, not when its entry comes up
    assert sessions.describe() == {"deadlines": 0, "heap": 1}
    other = _Held(2)  # a live socket due later is left alone by the stale entry
    sessions.admit(other, _claims("b", tk.NOW + 30))
    clock.advance(20)
    assert sessions.expire_due() == 0 and other.connected
    assert sessions.describe() == {"deadlines": 1, "heap": 1}
    clock.advance(20)
    assert sessions.expire_due() == 1 and other.closed_with == 4003


def _claims(user: str, exp: float) -> Any:
    from types import MappingProxyType

    from smartsocket.auth.tokens import NO_GRANTS, TokenClaims

    return TokenClaims(user=user, expires=exp, issued_at=None, grants=NO_GRANTS,
                       claims=MappingProxyType({}))
