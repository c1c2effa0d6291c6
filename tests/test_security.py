"""Security and limits: every limit crossed, with its documented outcome, neighbours unharmed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from smartsocket import AckError, Client, ConfigError, SmartSocket, Socket, Unauthorized
from smartsocket.demo import create_app
from smartsocket.security import AuthError, AuthRequest, LimitExceeded
from smartsocket.testing import Recorder, running, wait_for

KEY = "s3cret-key"
LIMITS_OFF = {"rate_limit_messages": 0, "rate_limit_bytes": 0}


async def expect_close(ws: Any, code: int) -> None:
    with pytest.raises(websockets.ConnectionClosed) as info:
        for _ in range(100):
            await asyncio.wait_for(ws.recv(), 3)
    assert info.value.rcvd is not None and info.value.rcvd.code == code, info.value


async def expect_status(url: str, status: int, **kwargs: Any) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):
            pass
    assert info.value.response.status_code == status


async def assert_works(server: SmartSocket) -> None:
    client = Client(server.url, reconnect=False, headers={"Authorization": f"Bearer {KEY}"})
    await client.connect()
    assert await client.call("echo", "fine") == "fine"
    await client.close()


# authentication


async def test_api_key_in_header_query_or_auth_message() -> None:
    server = create_app().__class__(api_keys=f"other,{KEY}")
    server.on("whoami", lambda socket, data: socket.identity)
    async with running(server):
        by_header = Client(server.url, reconnect=False, headers={"Authorization": f"Bearer {KEY}"})
        await by_header.connect()
        identity = await by_header.call("whoami")
        assert identity.startswith("key:") and KEY not in identity
        await by_header.close()
        by_query = Client(server.url + f"?token={KEY}", reconnect=False)
        await by_query.connect()
        assert await by_query.call("whoami") == identity
        await by_query.close()
        async with websockets.connect(server.url) as ws:  # no key yet: no $welcome
            name, required = json.loads(await ws.recv())  # but word that it must authenticate
            assert name == "$auth_required" and required["timeout"] == 10_000
            await ws.send(json.dumps(["whoami", None, 1]))
            assert json.loads(await ws.recv())[2]["code"] == "unauthorized"
            await ws.send(json.dumps(["$auth", {"token": KEY}]))
            name, welcome = json.loads(await ws.recv())
            assert name == "$welcome" and welcome["sid"]
            await ws.send(json.dumps(["whoami", None, 2]))
            assert json.loads(await ws.recv()) == [2, identity]


async def test_api_keys_as_a_python_list() -> None:
    async with running(SmartSocket(api_keys=["other", KEY])) as server:
        server.on("echo", lambda socket, data: data)
        await assert_works(server)
        await expect_status(server.url + "?token=k1,k2", 401)


async def test_wrong_key_gets_401_and_wrong_auth_message_4001() -> None:
    async with running(SmartSocket(api_keys=KEY, auth_timeout=5)) as server:
        server.on("echo", lambda socket, data: data)
        await expect_status(server.url, 401, additional_headers={"Authorization": "Bearer nope"})
        await expect_status(server.url + "?token=nope", 401)
        async with websockets.connect(server.url) as ws:
            await ws.send(json.dumps(["$auth", {"token": "nope"}]))
            await expect_close(ws, 4001)
        assert server.stats()["raw"]["rejectedConnections"] == 3
        await assert_works(server)


async def test_silent_unauthenticated_socket_is_closed_after_auth_timeout() -> None:
    async with running(SmartSocket(api_keys=KEY, auth_timeout=0.2)) as server:
        server.on("echo", lambda socket, data: data)
        async with websockets.connect(server.url) as ws:
            started = asyncio.get_running_loop().time()
            await expect_close(ws, 4001)
            # Closed by the auth timer (nothing else closes a silent socket), not before it.
            assert asyncio.get_running_loop().time() - started >= 0.15
        assert server.sockets == {}  # never admitted, never seen by the application
        await assert_works(server)


async def test_python_client_stops_reconnecting_after_4001() -> None:
    async with running(SmartSocket(api_keys=KEY)) as server:
        client = Client(server.url, reconnect_delay=0.01, reconnect_delay_max=0.02)
        with pytest.raises(ConnectionError):  # no $welcome, then 4001 on the wrong key
            await Client(server.url, headers={"Authorization": "Bearer bad"}).connect()
        assert client.sid is None


@pytest.mark.parametrize("hook", ["api_keys", "sync", "async"])
async def test_python_client_without_credentials_fails_at_once(hook: str) -> None:
    """Not after auth_timeout (30 s here) with "no $welcome": at once, naming the cause."""
    server = SmartSocket(auth_timeout=30, api_keys=KEY if hook == "api_keys" else None)
    if hook == "sync":
        server.authenticate(lambda request: None)
    elif hook == "async":

        @server.authenticate
        async def nobody(request: AuthRequest) -> Any:
            return None

    async with running(server):
        client = Client(server.url)  # reconnect on: it must not retry either
        with pytest.raises(Unauthorized) as info:
            await asyncio.wait_for(client.connect(), 5)
        assert info.value.code == "auth_required" and "token" in str(info.value)
        assert isinstance(info.value, ConnectionError)
        await wait_for(lambda: not server._connections.open)  # the client closed its side
        with pytest.raises(Unauthorized) as info:  # wrong credentials: HTTP 401 or 4001
            await asyncio.wait_for(Client(server.url + "?token=nope").connect(), 5)
        assert info.value.code == "unauthorized"


async def test_custom_hooks_sync_with_cookies_and_async_with_auth_message() -> None:
    server = SmartSocket()
    seen: list[AuthRequest] = []

    @server.authenticate
    def by_cookie(request: AuthRequest) -> Any:
        seen.append(request)
        if request.cookies.get("session") == "alice-session":
            return {"user": "alice"}
        if request.cookies.get("session") == "banned":
            raise AuthError("banned user")
        return None

    server.on("who", lambda socket, data: socket.data["identity"])
    async with running(server):
        async with websockets.connect(
            server.url, additional_headers={"Cookie": "theme=dark; session=alice-session"}
        ) as ws:
            await ws.recv()  # $welcome
            await ws.send(json.dumps(["who", None, 1]))
            assert json.loads(await ws.recv()) == [1, {"user": "alice"}]
        await expect_status(server.url, 401, additional_headers={"Cookie": "session=banned"})
        assert seen[0].headers.get("Cookie") is not None

    server2 = SmartSocket()

    @server2.authenticate
    async def by_token(request: AuthRequest) -> Any:
        await asyncio.sleep(0.01)  # e.g. a database lookup
        return {"user": "bob"} if request.token == "bob-token" else None

    server2.on("who", lambda socket, data: socket.identity)
    async with running(server2):
        async with websockets.connect(server2.url) as ws:
            await ws.send(json.dumps(["$auth", {"token": "bob-token"}]))
            first = json.loads(await ws.recv())  # the upgrade's hook may say "required" first
            if first[0] == "$auth_required":
                first = json.loads(await ws.recv())
            assert first[0] == "$welcome"
            await ws.send(json.dumps(["who", None, 1]))
            assert json.loads(await ws.recv()) == [1, {"user": "bob"}]
        async with websockets.connect(server2.url + "?token=wrong") as ws:
            await expect_close(ws, 4001)  # async hooks answer just after the upgrade


async def test_cli_demo_honours_api_keys() -> None:
    import os
    import subprocess
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "SMARTSOCKET_API_KEYS": KEY},
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()[-1]
        await expect_status(url + "?token=wrong", 401)
        client = Client(url + f"?token={KEY}", reconnect=False)
        await client.connect()
        assert await client.call("echo", 1) == 1
        await client.close()
    finally:
        proc.kill()
        await proc.wait()


# origins


async def test_origin_allow_list() -> None:
    server = create_app().__class__(
        allowed_origins="https://app.example.com, https://*.example.org", **LIMITS_OFF
    )
    server.on("echo", lambda socket, data: data)
    async with running(server):
        for origin in ("https://app.example.com", "https://a.b.example.org"):
            async with websockets.connect(server.url, origin=origin) as ws:  # type: ignore[arg-type]
                await ws.recv()
        for origin in ("https://evil.com", "http://app.example.com", "https://example.org.evil"):
            await expect_status(server.url, 403, origin=origin)
        async with websockets.connect(server.url) as ws:  # not a browser: no Origin header
            await ws.recv()


# connection limits


async def test_connections_per_ip_closes_1013() -> None:
    async with running(SmartSocket(max_connections_per_ip=2)) as server:
        server.on("echo", lambda socket, data: data)
        a = await websockets.connect(server.url)
        b = await websockets.connect(server.url)
        c = await websockets.connect(server.url)
        await expect_close(c, 1013)
        await a.close()
        await wait_for(lambda: len(server._connections.open) == 1)
        d = await websockets.connect(server.url)
        assert json.loads(await d.recv())[0] == "$welcome"
        await b.close()
        await d.close()


async def test_handshake_timeout_drops_idle_tcp() -> None:
    async with running(SmartSocket(handshake_timeout=0.2)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        data = await asyncio.wait_for(reader.read(), 3)  # EOF once the timeout fires
        assert data == b""
        writer.close()


async def test_room_and_name_limits() -> None:
    server = SmartSocket(max_rooms_per_socket=2, max_name_length=10)

    @server.on("join")
    def join(socket: Socket, room: str) -> int:
        socket.join(room)
        return len(socket.rooms)

    async with running(server):
        client = Client(server.url, reconnect=False)
        await client.connect()
        errors = Recorder(client, "error")
        assert await client.call("join", "a") == 1
        assert await client.call("join", "b") == 2
        assert await client.call("join", "a") == 2  # already in: not a new room
        cases = (("c", "room_limit"), ("x" * 11, "invalid_name"), ("a\nb", "invalid_name"))
        for room, code in cases:
            with pytest.raises(AckError) as info:
                await client.call("join", room)
            assert info.value.code == code
        client.send("e" * 11, 1)
        assert (await errors.next("error"))["code"] == "invalid_name"
        assert await client.call("join", "b") == 2  # still working
        await client.close()


async def test_pending_acks_limit_both_directions() -> None:
    server = SmartSocket(max_pending_acks=2, **LIMITS_OFF)
    sockets: list[Socket] = []
    server.on_connection(sockets.append)

    @server.on("slow")
    async def slow(socket: Socket, data: Any) -> str:
        await asyncio.sleep(0.3)
        return "done"

    async with running(server):
        client = Client(server.url, reconnect=False)

        async def hang(data: Any) -> None:
            await asyncio.sleep(5)

        client.on("hang", hang)
        await client.connect()
        calls = [asyncio.ensure_future(client.call("slow")) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[:2] == ["done", "done"]
        assert isinstance(results[2], AckError) and results[2].code == "too_many_pending"
        pending = [asyncio.ensure_future(sockets[0].call("hang", timeout=1)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(AckError) as info:
            await sockets[0].call("hang")
        assert info.value.code == "too_many_pending"
        for task in pending:
            task.cancel()
        await client.close()


# rate limits


async def test_rate_limit_refuses_with_retry_after_then_recovers() -> None:
    server = SmartSocket(rate_limit_messages=20, rate_limit_burst=5, rate_limit_bytes=0)
    server.on("echo", lambda socket, data: data)
    async with running(server):
        client = Client(server.url, reconnect=False)
        await client.connect()
        results = await asyncio.gather(
            *(client.call("echo", i) for i in range(8)), return_exceptions=True
        )
        assert results[:5] == [0, 1, 2, 3, 4]
        refused = results[5:]
        assert all(isinstance(r, AckError) and r.code == "rate_limited" for r in refused)
        assert all(0 < r.retry_after <= 0.1 for r in refused)  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
        assert await client.call("echo", "again") == "again"
        assert server.stats()["raw"]["rateLimited"] == 3
        await client.close()


async def test_sustained_abuse_closes_4008_and_others_carry_on() -> None:
    server = SmartSocket(
        rate_limit_messages=10, rate_limit_burst=10, rate_limit_strikes=20, rate_limit_bytes=0
    )
    server.on("echo", lambda socket, data: data)
    async with running(server):
        bystander = Client(server.url, reconnect=False)
        await bystander.connect()
        async with websockets.connect(server.url) as ws:
            await ws.recv()
            for i in range(60):
                await ws.send(json.dumps(["echo", i]))
            errors = 0
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 3))
                    if message[0] == "$error":
                        assert message[1]["code"] == "rate_limited" and message[1]["retryAfter"] > 0
                        errors += 1
            assert info.value.rcvd is not None and info.value.rcvd.code == 4008
            assert errors >= 20
        assert server.stats()["raw"]["rateLimitCloses"] == 1
        assert await bystander.call("echo", "unaffected") == "unaffected"
        await bystander.close()


async def test_byte_rate_and_per_event_and_per_room_limits() -> None:
    server = create_app()
    server.config = server.config.replace(
        rate_limit_messages=0, rate_limit_bytes=10_000, room_rate_limit_messages=2
    )
    server.rate_limit("cheap", 1, burst=1)
    server.on("cheap", lambda socket, data: "ok")
    async with running(server):
        client = Client(server.url, reconnect=False, compression=False)
        await client.connect()
        assert await client.call("echo", "x" * 15_000) == "x" * 15_000  # burst: 20,000 bytes
        with pytest.raises(AckError) as info:
            await client.call("echo", "x" * 15_000)
        assert info.value.code == "rate_limited"
        assert await client.call("cheap") == "ok"
        with pytest.raises(AckError):
            await client.call("cheap")  # the override: 1 per second
        await client.call("join", {"room": "r"})  # the demo's presence notice: 1 broadcast
        for _ in range(3):  # room burst: 4 broadcasts
            await client.call("chat", {"room": "r", "text": "hi"})
        with pytest.raises(AckError) as info:
            await client.call("chat", {"room": "r", "text": "one too many"})
        assert info.value.code == "rate_limited" and info.value.retry_after
        await client.close()


@pytest.mark.parametrize(("burst", "allowed"), [(0, 1), (5, 5)])
async def test_room_rate_limit_burst_is_an_option(burst: float, allowed: int) -> None:
    """A rate this low refills nothing during the test: the burst alone decides (default:
    twice the rate, at least one broadcast)."""
    server = SmartSocket(room_rate_limit_messages=0.001, room_rate_limit_burst=burst)
    async with running(server):
        room = server.room("r")
        for _ in range(allowed):
            room.broadcast("tick")
        with pytest.raises(LimitExceeded) as info:
            room.broadcast("tick")
        assert info.value.code == "rate_limited" and info.value.retry_after
    with pytest.raises(ConfigError, match="room_rate_limit_burst"):
        SmartSocket(room_rate_limit_burst=0.5)


# stats token


async def test_stats_token() -> None:
    import urllib.error
    import urllib.request

    async with running(SmartSocket(stats_token="tok")) as server:
        url = f"http://127.0.0.1:{server.port}/smartsocket/stats"

        def fetch(target: str, headers: dict[str, str]) -> int:
            try:
                with urllib.request.urlopen(urllib.request.Request(target, headers=headers)) as r:
                    body = r.read()
                    assert b"tok" not in body
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                exc.close()
                return exc.code

        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, fetch, url, {}) == 401
        assert await loop.run_in_executor(None, fetch, url + "?token=bad", {}) == 401
        assert await loop.run_in_executor(None, fetch, url + "?token=tok", {}) == 200
        ok = await loop.run_in_executor(None, fetch, url, {"Authorization": "Bearer tok"})
        assert ok == 200


# the I/O-free parts


@pytest.mark.parametrize("start", [0, 3_600 * 10**9, 400 * 86_400 * 10**9, 2**62])
def test_token_bucket(start: int) -> None:
    """Integer nanoseconds from an injected clock: the same answers whatever the clock's
    origin (time.monotonic() counts from boot: floats lost the 0.1 s below after an uptime)."""
    from smartsocket.security import TokenBucket

    t = start
    bucket = TokenBucket(rate=10, burst=2, now=t)
    assert bucket.take(t) == 0 and bucket.take(t) == 0
    assert bucket.take(t) == 0.1  # empty: one token in 0.1 s
    assert bucket.take(t + 100_000_000) == 0
    assert bucket.take(t + 10**10) == 0 and bucket.take(t + 10**10) == 0  # refills to burst only
    assert bucket.take(t + 10**10) == 0.1
    assert bucket.take(t - 5 * 10**9) == 0.1  # a clock read from before does not refill


def test_origin_patterns() -> None:
    from smartsocket.security import origin_allowed, parse_origins

    patterns = parse_origins("https://a.com, https://*.b.com:8443")
    assert origin_allowed("https://a.com", patterns)
    assert origin_allowed("HTTPS://A.COM/", patterns)
    assert origin_allowed("https://x.y.b.com:8443", patterns)
    assert not origin_allowed("https://b.com:8443", patterns)
    assert not origin_allowed("https://x.b.com", patterns)  # wrong port
    assert not origin_allowed("https://a.com.evil.net", patterns)
    assert not origin_allowed("null", patterns)
    assert origin_allowed(None, patterns)
    assert parse_origins("*") is None and parse_origins(None) is None
    for bad in ("a.com", "ftp://a.com", "https://a.com/path"):
        with pytest.raises(ValueError):
            parse_origins(bad)


def test_api_keys_identify_without_revealing() -> None:
    from smartsocket.security import ApiKeys

    keys = ApiKeys(" one , two ")
    assert keys.identify("two") is not None and "two" not in (keys.identify("two") or "")
    assert keys.identify("one") != keys.identify("two")
    assert keys.identify("three") is None and keys.identify(None) is None
    assert keys.identify("on") is None
