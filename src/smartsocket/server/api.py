"""The server HTTP API: ``POST /smartsocket/api/<operation>``, JSON in and out (docs/api.md).

Off unless ``api_secret`` is set (then every path under the prefix is a 404). Requests carry
``Authorization: Bearer <api_secret>`` (compared in constant time), checked on the request
head, before any body byte is read. The operations themselves are ``server/api_ops.py``; the
OpenAPI document served at ``/smartsocket/api/openapi.json`` is ``server/api_schema.py``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from functools import partial
from typing import Any

import msgspec

from smartsocket.server import api_ops, api_schema
from smartsocket.server.api_ops import ApiError, Batch, Context, Op, Publish
from smartsocket.transport import HandshakeRequest, HttpRequest, HttpResponse, Serve

logger = logging.getLogger("smartsocket.api")

PREFIX = "/smartsocket/api/"
OPENAPI = PREFIX + "openapi.json"
_JSON = "application/json"
_encode = msgspec.json.Encoder().encode
_DECODERS = {name: msgspec.json.Decoder(cls) for name, cls in api_ops.OPERATIONS.items()}
# What the gate's own refusals (on the request head) are called in a JSON error.
_GATE_CODES = {
    400: "invalid_request", 411: "length_required", 413: "body_too_large",
    429: "too_many_requests",
}
# Operations of a batch run between two turns of the event loop: a batch of 20,000 publishes
# (1 MiB) held the loop, and every connection, for ~0.4 s in one turn.
BATCH_SLICE = 64
_PUBLISHED: dict[str, Any] = {"result": {}}  # one publish's result in a batch (never changed)
_AT = re.compile(r" - at `\$\.?(.*)`$")
_NAMED = re.compile(r"(?:missing required|contains unknown) field `([^`]*)`")


def error(status: int, code: str, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(
        status, _encode(ApiError(status, code, message, field).body()), _JSON, headers or {}
    )


def gate_error(status: int, reason: str) -> HttpResponse:
    return error(status, _GATE_CODES.get(status, "invalid_request"), reason)


def validation_field(message: str) -> str | None:
    """The field a msgspec validation error names: ``operations[2].room``, or None when it
    is about the body as a whole."""
    at = _AT.search(message)
    path = at.group(1) if at else ""
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


class HttpApi:
    """The API of one server (``server.api``): routes requests under ``PREFIX``."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def route(self, request: HandshakeRequest) -> HttpResponse | Serve:
        """The answer to a request head under ``PREFIX``: a refusal, or how to serve it."""
        secret = self._ctx.server.config.api_secret
        if not secret:
            return HttpResponse(404, b"not found\n")  # off: as if there were no API
        path = request.path
        if path == OPENAPI:
            if request.method not in ("GET", "HEAD"):
                return error(405, "method_not_allowed", "use GET", headers={"Allow": "GET, HEAD"})
            return HttpResponse(200, api_schema.document(), _JSON)
        refusal = _authorize(request, secret)
        if refusal is not None:
            return refusal
        name = path[len(PREFIX):] if path.startswith(PREFIX) else ""
        if name not in _DECODERS:
            return error(404, "unknown_operation", f"no operation {name!r}; see {OPENAPI}")
        if request.method != "POST":
            return error(405, "method_not_allowed", "use POST", headers={"Allow": "POST"})
        length = (request.headers.get("Content-Length") or "0").strip()
        kind = (request.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        if length != "0" and kind != _JSON:
            return error(415, "unsupported_media_type", "send the body as application/json")
        return Serve(partial(self._serve, name), errors=gate_error)

    async def _serve(self, name: str, request: HttpRequest) -> HttpResponse:
        try:
            op: Op = _DECODERS[name].decode(request.body or b"{}")
        except msgspec.ValidationError as exc:
            message = str(exc)
            return error(400, "invalid_field", message, validation_field(message))
        except msgspec.DecodeError as exc:
            return error(400, "invalid_json", f"the body is not JSON: {exc}")
        except RecursionError:  # msgspec refuses arrays/objects nested ~1000 deep
            return error(400, "invalid_json", "the body is nested too deeply")
        try:
            if type(op) is Batch:
                return HttpResponse(200, _encode({"results": await self._batch(op)}), _JSON)
            result = await api_ops.run(self._ctx, op)
        except ApiError as exc:
            return HttpResponse(exc.status, _encode(exc.body()), _JSON)
        except Exception:
            logger.exception("HTTP API operation %s failed", name)
            return error(500, "internal_error", "the operation failed; see the server log")
        return HttpResponse(200, _encode({"result": result}), _JSON)

    async def _batch(self, batch: Batch) -> list[dict[str, Any]]:
        """Each operation in order, each with its own result or error (one failing does not
        stop the others). The waits for a congested broker link add up to at most
        ``message_timeout`` per batch: past it, what cannot go out is refused
        (``overloaded``), so one client's batch cannot hold a request for hours."""
        results: list[dict[str, Any]] = []
        run_now, run_later, ctx = api_ops.run_now, api_ops.run_later, self._ctx
        names = api_ops.Names(ctx.server.config.max_name_length)
        publish = api_ops.Publisher(ctx.server, names).publish
        cluster = ctx.cluster
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.server.config.message_timeout
        for index, op in enumerate(batch.operations):
            if index and not index % BATCH_SLICE:
                await asyncio.sleep(0)  # the other connections' turn
            try:
                if cluster.congested:  # backpressure, not loss
                    await api_ops.make_room(ctx, max(0.0, deadline - loop.time()))
                if type(op) is Publish:  # the hot path: no coroutine, no dict per publish
                    publish(op)
                    results.append(_PUBLISHED)
                    continue
                result = run_now(ctx, op, names)
                if result is None:
                    result = await run_later(ctx, op)
                results.append({"result": result})
            except ApiError as exc:
                results.append(exc.body())
        return results


def _authorize(request: HandshakeRequest, secret: str) -> HttpResponse | None:
    scheme, _, token = (request.headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(
            401, "unauthorized", "send Authorization: Bearer <api_secret>",
            headers={"WWW-Authenticate": 'Bearer realm="smartsocket-api"'},
        )
    if not hmac.compare_digest(token.strip().encode(), secret.encode()):
        return error(403, "forbidden", "wrong API secret")
    return None
