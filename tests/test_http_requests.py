"""Plain requests served by async handlers (``Serve``): bodies, keep-alive, limits, disconnects.

Raw sockets against ``transport.create_server`` with a router of the test's own: the bytes on
the wire are the test's, so each limit can be crossed exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from smartsocket.testing import running
from smartsocket.transport import (
    HandshakeRequest,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    Serve,
    ServedConnections,
    create_server,
)

TIMEOUT = 10.0


@dataclass
class App:
    """The test's handlers and what they saw."""

    seen: list[HttpRequest] = field(default_factory=list)
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def echo(self, request: HttpRequest) -> HttpResponse:
        self.seen.append(request)
        body = json.dumps({
            "method": request.method, "path": request.path, "query": dict(request.query),
            "body": request.body.decode(), "x": request.header("X-Test"),
            "peer": request.peer[0],
        }).encode()
        return HttpResponse(200, body, "application/json")

    async def hold(self, request: HttpRequest) -> HttpResponse:
        """A long-poll: answers when released; notes its cancellation."""
        self.seen.append(request)
        self.holding.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return HttpResponse(200, b"released")

    async def fail(self, request: HttpRequest) -> HttpResponse:
        raise RuntimeError("handler bug")

    async def close(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"bye", headers={"Connection": "close"})

    def route(self, request: HandshakeRequest) -> HttpResponse | Serve:
        if request.path == "/echo":
            return Serve(self.echo)
        if request.path == "/small":
            return Serve(self.echo, max_body=10)
        if request.path == "/hold":
            return Serve(self.hold)
        if request.path == "/fail":
            return Serve(self.fail)
        if request.path == "/close":
            return Serve(self.close)
        if request.path == "/json":
            return Serve(self.echo, max_body=10, errors=json_error)
        return HttpResponse(404, b"not found\n")


def json_error(status: int, reason: str) -> HttpResponse:
    return HttpResponse(status, json.dumps({"error": reason}).encode(), "application/json")


@contextlib.asynccontextmanager
async def serving(
    app: App, served: ServedConnections | None = None, **limits: object
) -> AsyncIterator[int]:
    server = await create_server(
        app.route, host="127.0.0.1", port=0, max_message_size=1 << 20,
        handshake_timeout=TIMEOUT, http_limits=HttpLimits(**limits),  # type: ignore[arg-type]
        served=served,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def request(
        self, method: str, path: str, body: bytes = b"", *headers: str,
        version: str = "HTTP/1.1",
    ) -> None:
        lines = [f"{method} {path} {version}", "Host: x", *headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def answer(self, *, head_only: bool = False) -> Answer:
        async with asyncio.timeout(TIMEOUT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = b"" if head_only else await self.reader.readexactly(length)
        return Answer(int(status_line.split(" ")[1]), headers, body)

    async def at_eof(self) -> bool:
        """Whether the server closed the connection (EOF or reset) with nothing more sent."""
        async with asyncio.timeout(TIMEOUT):
            try:
                return await self.reader.read() == b""
            except ConnectionResetError:
                return True

    def close(self) -> None:
        self.writer.close()


async def test_a_post_body_reaches_the_handler_with_the_request() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.request("POST", "/echo?a=1&a=2", b'{"hello": "world"}', "X-Test: yes")
        answer = await client.answer()
        assert answer.status == 200 and answer.headers["content-type"] == "application/json"
        assert json.loads(answer.body) == {
            "method": "POST", "path": "/echo", "query": {"a": ["1", "2"]},
            "body": '{"hello": "world"}', "x": "yes", "peer": "127.0.0.1",
        }
        client.close()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_any_method_is_served(method: str) -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.request(method, "/echo", b"x" if method in ("PUT", "PATCH") else b"")
        answer = await client.answer()
        assert answer.status == 200 and json.loads(answer.body)["method"] == method
        client.close()


async def test_head_gets_headers_only() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.request("HEAD", "/echo")
        answer = await client.answer(head_only=True)
        assert answer.status == 200 and int(answer.headers["content-length"]) > 0
        client.request("GET", "/echo")  # the next answer starts right after the head
        assert json.loads((await client.answer()).body)["method"] == "GET"
        client.close()


async def test_keep_alive_serves_consecutive_and_pipelined_requests() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        for i in range(3):
            client.request("POST", f"/echo?i={i}", b"body")
            answer = await client.answer()
            assert answer.headers["connection"] == "keep-alive"
            assert json.loads(answer.body)["query"] == {"i": [str(i)]}
        # pipelined: both in one write, answered in order
        client.request("POST", "/echo?i=a", b"1")
        client.request("POST", "/echo?i=b", b"22")
        first, second = await client.answer(), await client.answer()
        assert json.loads(first.body)["body"] == "1" and json.loads(second.body)["body"] == "22"
        client.close()


@pytest.mark.parametrize("how", ["close header", "HTTP/1.0", "handler", "sync answer"])
async def test_connection_close_when_asked_or_http_1_0(how: str) -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        if how == "close header":
            client.request("POST", "/echo", b"x", "Connection: close")
        elif how == "HTTP/1.0":
            client.request("POST", "/echo", b"x", version="HTTP/1.0")
        elif how == "handler":
            client.request("GET", "/close")
        else:
            client.request("GET", "/nowhere")
        answer = await client.answer()
        assert answer.headers["connection"] == "close"
        assert await client.at_eof()
        client.close()


async def test_keep_alive_ends_after_max_requests() -> None:
    app = App()
    async with serving(app, keepalive_requests=3) as port:
        client = await Client.open(port)
        for _ in range(2):
            client.request("GET", "/echo")
            assert (await client.answer()).headers["connection"] == "keep-alive"
        client.request("GET", "/echo")
        assert (await client.answer()).headers["connection"] == "close"
        assert await client.at_eof()
        client.close()


async def test_idle_keep_alive_connection_is_closed() -> None:
    app = App()
    async with serving(app, keepalive_timeout=0.05) as port:
        client = await Client.open(port)
        client.request("GET", "/echo")
        assert (await client.answer()).status == 200
        assert await client.at_eof()  # dropped after the idle time
        client.close()


@pytest.mark.parametrize(("path", "limit"), [("/echo", 100), ("/small", 10)])
async def test_body_over_the_limit_gets_413_without_being_sent(path: str, limit: int) -> None:
    app = App()
    async with serving(app, max_body=100) as port:
        client = await Client.open(port)
        client.send(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
        )  # the head alone: the answer comes without the body
        answer = await client.answer()
        assert answer.status == 413 and str(limit).encode() in answer.body
        assert app.seen == []
        client.close()
        client = await Client.open(port)  # exactly the limit: served
        client.request("POST", path, b"x" * limit)
        assert (await client.answer()).status == 200
        client.close()


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Transfer-Encoding: chunked", 411),
        ("Content-Length: -1", 400),
        ("Content-Length: 1x", 400),
        ("Content-Length: 1\r\nContent-Length: 2", 400),
    ],
)
async def test_chunked_and_invalid_lengths_are_refused(header: str, status: int) -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.send(f"POST /echo HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
        assert (await client.answer()).status == status
        assert app.seen == []
        client.close()


async def test_a_body_that_does_not_arrive_in_time_drops_the_connection() -> None:
    app = App()
    async with serving(app, body_timeout=0.05) as port:
        client = await Client.open(port)
        client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        assert await client.at_eof()
        assert app.seen == []
        client.close()


async def test_request_head_over_16k_gets_431_on_a_served_path() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.request("POST", "/echo", b"x", "Cookie: " + "c" * 20_000)
        assert (await client.answer()).status == 431
        client.close()


async def test_client_gone_cancels_a_held_request() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.request("GET", "/hold")
        await asyncio.wait_for(app.holding.wait(), TIMEOUT)
        request = app.seen[0]
        assert not request.disconnected.is_set()
        client.close()
        await asyncio.wait_for(app.cancelled.wait(), TIMEOUT)
        assert request.disconnected.is_set()


async def test_a_held_request_answers_when_released() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.request("GET", "/hold")
        await asyncio.wait_for(app.holding.wait(), TIMEOUT)
        app.release.set()
        answer = await client.answer()
        assert answer.status == 200 and answer.body == b"released"
        client.close()


async def test_handler_failure_is_a_500_and_the_connection_stays_usable() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.request("GET", "/fail")
        assert (await client.answer()).status == 500
        client.request("GET", "/echo")
        assert (await client.answer()).status == 200
        client.close()


async def test_connections_per_ip_are_limited() -> None:
    app = App()
    async with serving(app, max_per_ip=1) as port:
        first = await Client.open(port)
        first.request("GET", "/hold")
        await asyncio.wait_for(app.holding.wait(), TIMEOUT)
        second = await Client.open(port)
        second.request("GET", "/echo")
        answer = await second.answer()
        assert answer.status == 429
        second.close()
        first.close()
        await asyncio.wait_for(app.cancelled.wait(), TIMEOUT)
        third = await Client.open(port)  # the first one's place is free again
        third.request("GET", "/echo")
        assert (await third.answer()).status == 200
        third.close()


async def test_server_answers_405_to_other_methods_on_get_routes() -> None:
    async with running() as server:
        client = await Client.open(server.port)
        client.request("POST", "/smartsocket/health", b"{}")
        answer = await client.answer()
        assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD"
        client.close()


async def test_a_websocket_upgrade_after_served_requests_on_one_connection() -> None:
    app = App()
    async with serving(app, max_per_ip=1) as port:
        client = await Client.open(port)
        client.request("GET", "/echo")
        assert (await client.answer()).status == 200
        client.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )  # handed to picows; our router answers 404 for it
        assert (await client.answer()).status == 404
        client.close()
        other = await Client.open(port)  # the per-IP place was given back at the hand-over
        other.request("GET", "/echo")
        assert (await other.answer()).status == 200
        other.close()


@pytest.mark.parametrize(
    ("header", "status"),
    [("Content-Length: 11", 413), ("Transfer-Encoding: chunked", 411), ("Content-Length: x", 400)],
)
async def test_a_route_words_the_gate_refusals_itself(header: str, status: int) -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.send(f"POST /json HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
        answer = await client.answer()
        assert answer.status == status and answer.headers["content-type"] == "application/json"
        assert "error" in json.loads(answer.body)
        client.close()


async def test_expect_100_continue_gets_its_interim_answer() -> None:
    app = App()
    async with serving(app) as port:
        client = await Client.open(port)
        client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\n\r\n")
        interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(b"hello")
        answer = await client.answer()
        assert answer.status == 200 and json.loads(answer.body)["body"] == "hello"
        client.close()
        client = await Client.open(port)  # refused before the body: no interim answer
        client.send(b"POST /small HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 11\r\n\r\n")
        assert (await client.answer()).status == 413
        client.close()


async def test_shutdown_closes_idle_connections_then_held_requests() -> None:
    app = App()
    served = ServedConnections()
    async with serving(app, served) as port:
        idle, held, answering = [await Client.open(port) for _ in range(3)]
        idle.request("GET", "/echo")
        assert (await idle.answer()).headers["connection"] == "keep-alive"
        held.request("GET", "/hold")
        await asyncio.wait_for(app.holding.wait(), TIMEOUT)
        served.close(busy=False)  # first step: idle ones go, held ones may still answer
        assert await idle.at_eof()
        answering.request("GET", "/echo")  # new requests are still answered, and closed
        answer = await answering.answer()
        assert answer.status == 200 and answer.headers["connection"] == "close"
        served.close()  # second step: what is still held gets 503
        answer = await held.answer()
        assert answer.status == 503 and answer.headers["connection"] == "close"
        assert app.seen[1].disconnected.is_set()
        await asyncio.wait_for(app.cancelled.wait(), TIMEOUT)
        for client in (idle, held, answering):
            client.close()


async def test_server_close_ends_kept_alive_api_connections() -> None:
    async with running(api_secret="s" * 16) as server:
        client = await Client.open(server.port)
        client.request("POST", "/smartsocket/api/stats", b"{}",
                       "Authorization: Bearer " + "s" * 16, "Content-Type: application/json")
        assert (await client.answer()).headers["connection"] == "keep-alive"
        await server.close()
        assert await client.at_eof()
        client.close()
