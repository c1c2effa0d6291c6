"""Long-polling without sticky sessions: a polling request that lands on a node that does not
hold its Engine.IO session is served there through the cluster.

In a cluster a session's sid names its node (``<node>.<id>``, as native socket ids do). A
GET or POST whose sid names another node is forwarded, body and all, to that node's inbox
(``$sio.http``); the owner serves it on the session as if it had come in itself
(``polling.answer_get`` / ``answer_post``) and sends the answer back (``$sio.http.reply``),
which the first node writes out with its own CORS headers. A forwarding node whose client
goes away cancels the held GET on the owner (``$sio.http.cancel``), so the client's next GET
is not "a second GET". The sessions never move: only the WebSocket upgrade must reach the
owner (a probe elsewhere is refused and the client stays on polling).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from smartsocket.http_requests import HttpRequest, HttpResponse
from smartsocket.protocol.socketio.errors import EngineErrorCode
from smartsocket.server.socketio import polling
from smartsocket.server.socketio.session import ClientSession

logger = logging.getLogger("smartsocket.socketio")

FORWARD = "$sio.http"
REPLY = "$sio.http.reply"
CANCEL = "$sio.http.cancel"
_MARGIN = 5.0  # seconds on top of the ping bound before a forwarded GET is given up


class ClusterLink(Protocol):
    """What the relay needs of the node (``cluster.node.ClusterNode``)."""

    node_id: str
    active: bool

    @property
    def nodes(self) -> Mapping[str, Any]: ...

    def on_server_event(self, name: str, handler: Callable[..., Any]) -> None: ...

    def emit_to_node(self, node: str, name: str, data: Any) -> bool: ...


class PollRelay:
    """This node's side of forwarded polling requests, both ways."""

    __slots__ = ("_cluster", "_ids", "_serving", "_sessions", "_waiting", "timeout")

    def __init__(self, cluster: ClusterLink, sessions: Mapping[str, ClientSession]) -> None:
        self._cluster = cluster
        self._sessions = sessions
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}  # forwarded from here
        self._serving: dict[tuple[str, int], asyncio.Task[None]] = {}  # forwarded to here
        self.timeout = 30.0  # the endpoint sets it: ping interval + timeout + a margin
        cluster.on_server_event(FORWARD, self._serve)
        cluster.on_server_event(REPLY, self._replied)
        cluster.on_server_event(CANCEL, self._cancel)

    def configure(self, ping_bound: float) -> None:
        self.timeout = ping_bound + _MARGIN

    def new_sid(self) -> str:
        """A session id naming this node when it is in a cluster."""
        token = secrets.token_urlsafe(15)
        cluster = self._cluster
        return f"{cluster.node_id}.{token}" if cluster.active else token

    def owner(self, sid: str) -> str | None:
        """The other live node ``sid`` names, if any."""
        cluster = self._cluster
        node, dot, _ = sid.partition(".")
        if not dot or not cluster.active or node == cluster.node_id:
            return None
        return node if node in cluster.nodes else None

    # the node the request landed on

    async def forward(
        self, request: HttpRequest, owner: str, sid: str, cors: Mapping[str, str]
    ) -> HttpResponse:
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = {"i": request_id, "m": request.method, "s": sid, "b": request.body}
        try:
            if not self._cluster.emit_to_node(owner, FORWARD, message):
                return polling.engine_error(EngineErrorCode.UNKNOWN_SID, 400, cors)
            try:
                reply = await asyncio.wait_for(future, self.timeout)
            except TimeoutError:  # the owner went away: the client starts over
                return polling.engine_error(EngineErrorCode.UNKNOWN_SID, 400, cors)
            except asyncio.CancelledError:
                self._cluster.emit_to_node(owner, CANCEL, {"i": request_id})
                raise
        finally:
            self._waiting.pop(request_id, None)
        headers = dict(cors)
        return HttpResponse(int(reply["st"]), bytes(reply["b"]), str(reply["t"]), headers)

    def _replied(self, data: Any, src: str) -> None:
        if type(data) is not dict or type(data.get("i")) is not int:
            return
        future = self._waiting.get(data["i"])
        if future is not None and not future.done():
            future.set_result(data)

    # the node that holds the session

    def _serve(self, data: Any, src: str) -> None:
        if type(data) is not dict or type(data.get("i")) is not int:
            return
        request_id: int = data["i"]
        sid, method, body = data.get("s"), data.get("m"), data.get("b")
        session = self._sessions.get(sid) if type(sid) is str else None
        if session is None or method not in ("GET", "POST") or (
            method == "POST" and type(body) is not bytes
        ):
            self._answer(src, request_id,
                         polling.engine_error(EngineErrorCode.UNKNOWN_SID, 400, {}))
            return
        if method == "POST":
            assert type(body) is bytes
            self._answer(src, request_id, polling.answer_post(session, body, {}))
            return
        key = (src, request_id)
        task = asyncio.get_running_loop().create_task(self._held_get(src, request_id, session))
        self._serving[key] = task
        task.add_done_callback(lambda _: self._serving.pop(key, None))

    async def _held_get(self, src: str, request_id: int, session: ClientSession) -> None:
        response = await polling.answer_get(session, {})
        self._answer(src, request_id, response)

    def _cancel(self, data: Any, src: str) -> None:
        if type(data) is dict and type(data.get("i")) is int:
            task = self._serving.get((src, data["i"]))
            if task is not None:
                task.cancel()

    def _answer(self, node: str, request_id: int, response: HttpResponse) -> None:
        reply = {"i": request_id, "st": response.status, "b": response.body,
                 "t": response.content_type}
        if not self._cluster.emit_to_node(node, REPLY, reply):
            logger.info("the answer to a forwarded polling request to %s was not sent", node)

    def close(self) -> None:
        for task in list(self._serving.values()):
            task.cancel()
