"""The HTTP API's OpenAPI 3.1 document, generated from the operations' Structs (api_ops.py),
so what the document says is what the server checks."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from smartsocket._version import __version__
from smartsocket.server import api_ops

_REF = "#/components/schemas/{name}"
_RESULTS: dict[str, dict[str, Any]] = {
    "publish": {"type": "object"},
    "broadcast": {"type": "object"},
    "send": {"type": "object", "properties": {"sent": {"type": "boolean", "description": (
        "false: the socket is not here and could not be reached (unknown, or broker down)"
    )}}},
    "call": {"type": "object", "properties": {"ack": {"description": "the socket's ack reply"}}},
    "join": {"type": "object"},
    "leave": {"type": "object"},
    "disconnect": {"type": "object"},
    "to_user": {"type": "object", "properties": {"delivered_here": {
        "type": "integer", "description": "connections of the user on the answering node; the "
        "other nodes deliver to theirs",
    }}},
    "disconnect_user": {"type": "object", "properties": {"closed": {
        "type": "integer", "description": "connections closed, counted on every node that "
        "answered in time",
    }}},
    "rooms": {"type": "object", "properties": {"rooms": {"type": "array", "items": {
        "type": "object", "properties": {
            "room": {"type": "string"}, "members": {"type": "integer"},
        },
    }}}},
    "members": {"type": "object", "properties": {"members": {"type": "array", "items": {
        "type": "object", "properties": {
            "sid": {"type": "string"}, "node": {"type": "string"},
            "presence": {"type": "object"},
        },
    }}}},
    "history": {"type": "object", "properties": {
        "epoch": {"type": ["string", "null"]}, "last": {"type": "integer"},
        "messages": {"type": "array", "items": {"type": "object", "properties": {
            "offset": {"type": "integer"}, "time": {"type": "integer",
                                                    "description": "Unix time, ms"},
            "event": {"type": "string"}, "data": {},
        }}},
    }},
    "stats": {"type": "object", "description": "the figures of /smartsocket/stats"},
    "batch": {"type": "object"},  # replaced below: results, not result
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "the request field at fault"},
        },
    }},
}
_STATUSES = {
    "400": "invalid JSON, an invalid field (named in error.field), an invalid name",
    "401": "no Bearer token", "403": "wrong API secret",
    "404": "unknown operation, or no such socket (socket_not_found)",
    "409": "recovery off (history), a room limit", "411": "chunked body: send Content-Length",
    "413": "body larger than max_http_body", "415": "body not application/json",
    "429": "room over its rate, or too many connections from the address",
    "502": "the socket answered the call with an ack error",
    "504": "no ack in time (call), or the socket's node did not answer",
}


def schema() -> dict[str, Any]:
    """The document as a dict."""
    ops = api_ops.OPERATIONS
    _, components = msgspec.json.schema_components(list(ops.values()), ref_template=_REF)
    for name in components:
        required = components[name].get("required", [])
        if "op" in required:  # optional at /smartsocket/api/<op>; required inside a batch
            required.remove("op")
    singles = [name for name in ops if name != "batch"]
    components["Batch"]["properties"]["operations"]["items"] = {
        "oneOf": [
            {"allOf": [{"$ref": _REF.format(name=ops[n].__name__)}, {"required": ["op"]}]}
            for n in singles
        ],
        "discriminator": {"propertyName": "op"},
    }
    components["Error"] = _ERROR
    paths: dict[str, Any] = {}
    for name, cls in ops.items():
        result = _RESULTS[name]
        if name == "batch":
            ok: dict[str, Any] = {"type": "object", "properties": {"results": {
                "type": "array", "items": {"oneOf": [
                    {"type": "object", "properties": {"result": {"type": "object"}}},
                    {"$ref": _REF.format(name="Error")},
                ]},
            }}}
        else:
            ok = {"type": "object", "properties": {"result": result}}
        responses: dict[str, Any] = {"200": {
            "description": "done", "content": {"application/json": {"schema": ok}},
        }}
        for status, text in _STATUSES.items():
            responses[status] = {"description": text, "content": {
                "application/json": {"schema": {"$ref": _REF.format(name="Error")}},
            }}
        paths[f"/smartsocket/api/{name}"] = {"post": {
            "operationId": name,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": {"$ref": _REF.format(name=cls.__name__)},
            }}},
            "responses": responses,
        }}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SmartSocket server HTTP API",
            "version": __version__,
            "description": "Publish and manage sockets of a SmartSocket server or cluster "
                           "from anywhere. See docs/api.md.",
        },
        "security": [{"apiSecret": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiSecret": {"type": "http", "scheme": "bearer"}},
        },
    }


@cache
def document() -> bytes:
    """The document as served (built once)."""
    return msgspec.json.encode(schema())
