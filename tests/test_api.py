"""The server HTTP API (``POST /smartsocket/api/<op>``) against a live server and a 2-node
cluster on the real Redis; HTTP requests made with aiohttp, sockets are real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from clusters import BROKERS, Node, clients, node_processes
from smartsocket import Client, SmartSocket
from smartsocket.errors import ConfigError
from smartsocket.server.api import BATCH_SLICE
from smartsocket.server.api_schema import schema
from smartsocket.testing import Recorder, running

SECRET = "test-secret-0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}
TIMEOUT = 10.0


def room() -> str:
    return "r-" + uuid.uuid4().hex[:8]


async def post(
    http: aiohttp.ClientSession, base: str, op: str, body: Any = None, *,
    headers: dict[str, str] | None = None, raw: bytes | None = None,
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one API request."""
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    sent = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    async with http.post(f"{base}/smartsocket/api/{op}", data=data, headers=sent) as r:
        text = await r.read()
        return r.status, json.loads(text) if text.startswith(b"{") else text


@contextlib.asynccontextmanager
async def live(**options: Any) -> AsyncIterator[tuple[SmartSocket, str, aiohttp.ClientSession]]:
    options.setdefault("api_secret", SECRET)
    async with running(**options) as server, aiohttp.ClientSession() as http:
        yield server, f"http://127.0.0.1:{server.port}", http


@contextlib.asynccontextmanager
async def client(server: SmartSocket, *rooms: str) -> AsyncIterator[Client]:
    c = Client(server.url, reconnect=False)
    await c.connect()
    try:
        for name in rooms:
            assert await server.join(c.sid, name)
        yield c
    finally:
        await c.close()


# auth and routing ---------------------------------------------------------------------------


async def test_off_without_a_secret() -> None:
    async with running() as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}"
        status, _ = await post(http, base, "publish", {"room": "a", "event": "e"})
        assert status == 404
        async with http.get(f"{base}/smartsocket/api/openapi.json") as r:
            assert r.status == 404


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "unauthorized"),
        ("Basic " + SECRET, 401, "unauthorized"),
        ("Bearer ", 401, "unauthorized"),
        ("Bearer " + SECRET[:-1] + "x", 403, "forbidden"),
        ("Bearer " + SECRET + "x", 403, "forbidden"),
        ("bearer " + SECRET, 200, None),
    ],
)
async def test_bearer_secret(authorization: str | None, status: int, code: str | None) -> None:
    async with live() as (_, base, http):
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        async with http.post(f"{base}/smartsocket/api/stats", data=b"{}", headers=headers) as r:
            assert r.status == status
            body = await r.json()
            if code is not None:
                assert body["error"]["code"] == code
            if status == 401:
                assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_refused_requests_name_the_problem() -> None:
    async with live() as (_, base, http):
        status, body = await post(http, base, "nope")
        assert (status, body["error"]["code"]) == (404, "unknown_operation")
        async with http.get(f"{base}/smartsocket/api/publish", headers=AUTH) as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
        status, body = await post(
            http, base, "publish", raw=b"room=a", headers={"Content-Type": "text/plain"}
        )
        assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
        status, body = await post(http, base, "publish", raw=b"{not json")
        assert (status, body["error"]["code"]) == (400, "invalid_json")
        # nested past the decoder's depth (it was a 500 with a traceback in the log)
        deep = b'{"room": "a", "event": "e", "data": ' + b"[" * 1200 + b"]" * 1200 + b"}"
        status, body = await post(http, base, "publish", raw=deep)
        assert (status, body["error"]["code"]) == (400, "invalid_json")
        status, body = await post(http, base, "batch", raw=b'{"operations": [' + deep + b"]}")
        assert (status, body["error"]["code"]) == (400, "invalid_json")
        shallow = b'{"room": "a", "event": "e", "data": ' + b"[" * 500 + b"]" * 500 + b"}"
        assert (await post(http, base, "publish", raw=shallow))[0] == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event": "e"}, "room"),  # missing
        ({"room": 5, "event": "e"}, "room"),  # wrong type
        ({"room": "a", "event": "e", "colour": 1}, "colour"),  # unknown
        ({"room": "", "event": "e"}, "room"),  # the naming rule
        ({"room": "a\u202e", "event": "e"}, "room"),
        ({"room": "a", "event": "$welcome"}, "event"),  # reserved
        ({"room": "a", "event": "e", "exclude": "sid"}, "exclude"),
        ({"op": "broadcast", "room": "a", "event": "e"}, "op"),  # another operation's tag
    ],
)
async def test_bad_fields_are_named(body: dict[str, Any], field: str) -> None:
    async with live() as (_, base, http):
        status, answer = await post(http, base, "publish", body)
        assert status == 400 and answer["error"]["field"] == field, answer


async def test_bad_fields_of_other_operations() -> None:
    async with live() as (_, base, http):
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("join", {"sid": "x", "room": "a", "timeout": 0}, "timeout"),
            ("disconnect", {"sid": "x", "code": 1006}, "code"),
            ("disconnect", {"sid": "x", "reason": "é" * 62}, "reason"),
            ("history", {"room": "a", "limit": 0}, "limit"),
            ("call", {"sid": "x", "event": "e", "timeout": 301}, "timeout"),
            ("batch", {"operations": [{"op": "batch", "operations": []}]}, "operations[0].op"),
            ("batch", {"operations": [{"room": "a", "event": "e"}]}, "operations[0].op"),
            ("batch", {"operations": [{"op": "send", "sid": 1, "event": "e"}]},
             "operations[0].sid"),
        ]
        for op, body, field in cases:
            status, answer = await post(http, base, op, body)
            assert status == 400 and answer["error"]["field"] == field, (op, answer)


async def test_body_over_max_http_body_gets_413_unread() -> None:
    async with live(max_http_body=1024) as (server, base, http):
        body = {"room": "a", "event": "e", "data": "x" * 900}
        status, _ = await post(http, base, "publish", body)
        assert status == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            f"POST /smartsocket/api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{SECRET}\r\nContent-Type: application/json\r\nContent-Length: 1025\r\n\r\n".encode()
        )  # the head only: the answer does not wait for the body
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413")
        assert json.loads(body)["error"]["code"] == "body_too_large"
        writer.close()


async def test_no_body_reading_before_authentication() -> None:
    async with live() as (server, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /smartsocket/api/publish HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 401")
        writer.close()


def test_api_secret_option() -> None:
    with pytest.raises(ConfigError, match="api_secret"):
        SmartSocket(api_secret="short")
    with pytest.raises(ConfigError, match="api_secret"):
        SmartSocket(api_secret="has a space in the middle")
    server = SmartSocket.from_env({"SMARTSOCKET_API_SECRET": SECRET})
    assert server.config.api_secret == SECRET


async def test_to_user_and_disconnect_user_reach_every_connection_of_the_user() -> None:
    async with live() as (server, base, http):
        server.authenticate(lambda auth: {"user": auth.token})
        conns = []
        for user in ("ann", "ann", "bob"):
            c = Client(server.url, reconnect=False, headers={"Authorization": f"Bearer {user}"})
            await c.connect()
            conns.append(c)
        recs = [Recorder(c, "note", "disconnect") for c in conns]
        try:
            status, body = await post(http, base, "to_user", {"user": "ann", "event": "note",
                                                              "data": [1]})
            assert (status, body["result"]) == (200, {"delivered_here": 2})
            assert [await r.next("note") for r in recs[:2]] == [[1], [1]]
            status, body = await post(http, base, "to_user", {"user": "", "event": "note"})
            assert status == 400 and body["error"]["field"] == "user"
            status, body = await post(http, base, "disconnect_user",
                                      {"user": "ann", "reason": "banned"})
            assert (status, body["result"]) == (200, {"closed": 2})
            for rec in recs[:2]:
                assert (await rec.next("disconnect")).reason == "banned"
            status, body = await post(http, base, "batch", {"operations": [
                {"op": "to_user", "user": "bob", "event": "note", "data": "hi"},
                {"op": "disconnect_user", "user": "nobody"},
            ]})
            assert body["results"] == [
                {"result": {"delivered_here": 1}}, {"result": {"closed": 0}}]
            assert await recs[2].next("note") == "hi" and conns[2].connected
        finally:
            for c in conns:
                await c.close()


async def test_openapi_document_lists_every_operation() -> None:
    document = schema()
    assert document["openapi"].startswith("3.1")
    ops = ["publish", "broadcast", "send", "call", "join", "leave", "disconnect", "to_user",
           "disconnect_user", "rooms", "members", "history", "stats", "batch"]
    assert sorted(document["paths"]) == sorted(f"/smartsocket/api/{op}" for op in ops)
    publish = document["components"]["schemas"]["Publish"]
    assert publish["required"] == ["room", "event"]
    assert set(publish["properties"]) == {"op", "room", "event", "data", "exclude"}
    async with live() as (_, base, http), http.get(f"{base}/smartsocket/api/openapi.json") as r:
        assert r.status == 200 and await r.json() == json.loads(json.dumps(document))


# operations on one node ---------------------------------------------------------------------


async def test_publish_broadcast_and_send_reach_sockets() -> None:
    async with live() as (server, base, http):
        name = room()
        async with client(server, name) as a, client(server, name) as b, client(server) as c:
            recs = [Recorder(x, "news", "all", "direct") for x in (a, b, c)]
            status, body = await post(http, base, "publish", {
                "room": name, "event": "news", "data": {"n": 1}, "exclude": [b.sid],
            })
            assert (status, body) == (200, {"result": {}})
            assert await recs[0].next("news") == {"n": 1}
            assert (await post(http, base, "broadcast", {"event": "all", "data": [1]}))[0] == 200
            for rec in recs:
                assert await rec.next("all") == [1]
            status, body = await post(http, base, "send", {"sid": c.sid, "event": "direct"})
            assert body == {"result": {"sent": True}}
            assert await recs[2].next("direct") is None
            assert recs[1].pending("news") == 0 and recs[2].pending("news") == 0


async def test_call_returns_the_ack_or_says_why_not() -> None:
    async with live() as (server, base, http), client(server) as a:
        a.on("double", lambda n: n * 2)
        never = asyncio.Event()

        async def stall(data: Any) -> None:
            await never.wait()

        a.on("stall", stall)
        status, body = await post(http, base, "call", {"sid": a.sid, "event": "double",
                                                       "data": 21})
        assert (status, body) == (200, {"result": {"ack": 42}})
        status, body = await post(http, base, "call", {"sid": a.sid, "event": "stall",
                                                       "timeout": 0.1})
        assert (status, body["error"]["code"]) == (504, "ack_timeout")
        status, body = await post(http, base, "call", {"sid": a.sid, "event": "unknown"})
        assert (status, body["error"]["code"]) == (502, "ack_error")
        status, body = await post(http, base, "call", {"sid": "gone", "event": "double"})
        assert (status, body["error"]) == (404, {
            "code": "socket_not_found", "message": "no socket 'gone' in the cluster",
            "field": "sid",
        })
        never.set()


async def test_join_leave_rooms_members_and_disconnect() -> None:
    async with live() as (server, base, http):
        name = room()
        async with client(server) as a:
            a.on("hi", lambda: None)
            assert (await post(http, base, "join", {"sid": a.sid, "room": name}))[0] == 200
            assert name in server.sockets[a.sid].rooms
            server.sockets[a.sid].presence = {"name": "ann"}
            _, body = await post(http, base, "rooms")
            assert {"room": name, "members": 1} in body["result"]["rooms"]
            _, body = await post(http, base, "members", {"room": name})
            assert body["result"]["members"] == [
                {"sid": a.sid, "node": server.node_id, "presence": {"name": "ann"}}
            ]
            assert (await post(http, base, "leave", {"sid": a.sid, "room": name}))[0] == 200
            assert name not in server.sockets[a.sid].rooms
            status, body = await post(http, base, "join", {"sid": "nobody", "room": name})
            assert (status, body["error"]["code"]) == (404, "socket_not_found")
            rec = Recorder(a, "disconnect")
            status, _ = await post(http, base, "disconnect", {"sid": a.sid, "code": 4321,
                                                              "reason": "bye"})
            assert status == 200
            closed = await rec.next("disconnect")
            assert (closed.code, closed.reason) == (4321, "bye")


async def test_history_with_recovery_and_stats() -> None:
    async with live(recovery_window=30) as (server, base, http):
        name = room()
        async with client(server, name):
            for i in range(5):
                await post(http, base, "publish", {"room": name, "event": "tick", "data": i})
            _, body = await post(http, base, "history", {"room": name, "after": 1, "limit": 3})
            result = body["result"]
            assert result["last"] == 5 and isinstance(result["epoch"], str)
            assert [(m["offset"], m["event"], m["data"]) for m in result["messages"]] == [
                (2, "tick", 1), (3, "tick", 2), (4, "tick", 3)
            ]
            _, body = await post(http, base, "history", {"room": "never-used"})
            assert body["result"] == {"epoch": None, "last": 0, "messages": []}
            _, body = await post(http, base, "stats")
            assert body["result"]["connections"] == 1


async def test_batch_runs_each_operation_in_order() -> None:
    async with live() as (server, base, http):
        name = room()
        async with client(server, name) as a:
            rec = Recorder(a, "n")
            operations: list[dict[str, Any]] = [
                {"op": "publish", "room": name, "event": "n", "data": i} for i in range(500)
            ]
            operations += [
                {"op": "join", "sid": "nobody", "room": name},
                {"op": "send", "sid": a.sid, "event": "n", "data": "last"},
                {"op": "publish", "room": "bad\u0000", "event": "n"},
            ]
            status, body = await post(http, base, "batch", {"operations": operations})
            assert status == 200
            results = body["results"]
            assert results[:500] == [{"result": {}}] * 500
            assert results[500]["error"]["code"] == "socket_not_found"
            assert results[501] == {"result": {"sent": True}}
            assert results[502]["error"]["field"] == "room"
            assert [await rec.next("n") for _ in range(501)] == [*range(500), "last"]


async def test_a_big_batch_gives_the_other_connections_their_turns() -> None:
    # 20,000 publishes (1 MiB) ran in one turn of the event loop: ~0.4 s without serving any
    # other connection. Now the loop turns every BATCH_SLICE operations (counted, not timed).
    async with live() as (_, base, http):
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        ops = [{"op": "publish", "room": "r", "event": "n", "data": i}
               for i in range(100 * BATCH_SLICE)]
        counter = asyncio.create_task(count_turns())
        try:
            before = turns
            status, body = await post(http, base, "batch", {"operations": ops})
            during = turns - before
        finally:
            counter.cancel()
        assert status == 200 and len(body["results"]) == len(ops)
        assert during >= 99, during


# a cluster of two node processes on the real Redis ------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    with node_processes(
        BROKERS["redis"], 2, tmp_path_factory.mktemp("api"), None,
        "--api-secret", SECRET, "--recovery-window", "30",
    ) as nodes:
        yield nodes


async def until_received(
    http: aiohttp.ClientSession, base: str, op: str, body: dict[str, Any], rec: Recorder,
    event: str,
) -> Any:
    """Publish until ``rec`` gets ``event``: a room joined from afar is subscribed on its
    node shortly after the join's answer."""
    for _ in range(100):
        assert (await post(http, base, op, body))[0] == 200
        with contextlib.suppress(TimeoutError):
            return await rec.next(event, timeout=0.1)
    raise AssertionError(f"{event} never arrived")


async def test_every_operation_reaches_both_nodes(cluster: list[Node]) -> None:
    n0, n1 = (node.http for node in cluster)
    name = room()
    async with clients(*cluster) as (c0, c1), aiohttp.ClientSession() as http:
        for c in (c0, c1):
            await c.call("join", {"room": name, "presence": {"on": c.sid}})
        recs = [Recorder(c, "news", "all", "direct", "disconnect") for c in (c0, c1)]
        # publish and broadcast through either node reach sockets on both
        for base in (n0, n1):
            assert (await post(http, base, "publish", {"room": name, "event": "news",
                                                       "data": base}))[0] == 200
            assert [await r.next("news") for r in recs] == [base, base]
        assert (await post(http, n1, "broadcast", {"event": "all", "data": 7}))[0] == 200
        assert [await r.next("all") for r in recs] == [7, 7]
        # send and call reach the socket on the other node
        _, body = await post(http, n0, "send", {"sid": c1.sid, "event": "direct", "data": 1})
        assert body == {"result": {"sent": True}}
        assert await recs[1].next("direct") == 1
        c1.on("double", lambda n: n * 2)
        _, body = await post(http, n0, "call", {"sid": c1.sid, "event": "double", "data": 4})
        assert body == {"result": {"ack": 8}}
        # rooms and members see the whole cluster, with presence
        _, body = await post(http, n0, "members", {"room": name})
        members = body["result"]["members"]
        assert sorted(m["sid"] for m in members) == sorted([c0.sid, c1.sid])
        assert {m["sid"]: m["presence"] for m in members} == {
            c0.sid: {"on": c0.sid}, c1.sid: {"on": c1.sid}
        }
        _, body = await post(http, n1, "rooms")
        assert {"room": name, "members": 2} in body["result"]["rooms"]
        # join and leave a socket of the other node
        other = room()
        assert (await post(http, n0, "join", {"sid": c1.sid, "room": other}))[0] == 200
        await until_received(
            http, n0, "publish", {"room": other, "event": "news", "data": "o"}, recs[1], "news"
        )
        _, body = await post(http, n1, "members", {"room": other})
        assert [m["sid"] for m in body["result"]["members"]] == [c1.sid]
        assert (await post(http, n0, "leave", {"sid": c1.sid, "room": other}))[0] == 200
        _, body = await post(http, n1, "members", {"room": other})
        assert body["result"]["members"] == []
        # history from Redis, on either node
        _, body = await post(http, n1, "history", {"room": name})
        assert [m["data"] for m in body["result"]["messages"]] == [n0, n1]
        # a batch through one node, stats of the cluster
        status, body = await post(http, n1, "batch", {"operations": [
            {"op": "publish", "room": name, "event": "news", "data": "b"},
            {"op": "send", "sid": c0.sid, "event": "direct", "data": 2},
            {"op": "stats", "cluster": True},
        ]})
        assert status == 200 and body["results"][2]["result"]["cluster"]["nodes"] == 2
        assert [await r.next("news") for r in recs] == ["b", "b"]
        assert await recs[0].next("direct") == 2
        # disconnect a socket of the other node
        assert (await post(http, n1, "disconnect", {"sid": c0.sid}))[0] == 200
        assert (await recs[0].next("disconnect")).code == 4000


async def test_auth_on_every_node(cluster: list[Node]) -> None:
    async with aiohttp.ClientSession() as http:
        for node in cluster:
            status, _ = await post(http, node.http, "stats", headers={"Authorization": "Bearer x"})
            assert status == 403
            status, _ = await post(http, node.http, "stats")
            assert status == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
async def test_curl_as_in_the_docs() -> None:
    """curl, an independent client: ``Expect: 100-continue`` (what curl sends by itself for
    large bodies) is answered, and several URLs in one command reuse one connection."""
    async with live() as (server, base, _):
        name = room()
        async with client(server, name) as a:
            rec = Recorder(a, "news")
            big = json.dumps({"room": name, "event": "news", "data": "x" * 5000})
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", "-v", "-H", f"Authorization: Bearer {SECRET}",
                "-H", "Content-Type: application/json", "-H", "Expect: 100-continue", "-d", big,
                f"{base}/smartsocket/api/publish", f"{base}/smartsocket/api/publish",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            assert proc.returncode == 0 and out == b'{"result":{}}' * 2, err
            assert b"100 Continue" in err and b"Re-using existing connection" in err
            assert [await rec.next("news") for _ in range(2)] == ["x" * 5000] * 2
