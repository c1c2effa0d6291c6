"""Envelopes of protocol v1: the arrays inside text (JSON) and binary (MessagePack) frames.

    event:          ["name", data]
    event with ack: ["name", data, id]            id: positive int, unique per sender while pending
    with meta:      ["name", data, id|null, meta] server to client: the message's position for
                                                  recovery; client to server: idempotency key
    ack reply:      [id, result]
    ack error:      [id, null, {"code": "...", "message": "..."}]

Sans-I/O: bytes in, packets out, and back. The server and both clients share it.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from smartsocket.protocol.codes import ErrorCode

# Largest ack id accepted: ids must survive a round trip through JavaScript numbers.
MAX_ACK_ID: Final = 2**53 - 1

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
_msgpack_encode = msgspec.msgpack.Encoder().encode
_msgpack_decode = msgspec.msgpack.Decoder().decode


# What encoding an arbitrary value may raise: unsupported types, ints outside MessagePack's
# 64-bit range, nesting deeper than msgspec's encoder allows.
ENCODE_ERRORS: Final = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)


class EnvelopeError(ValueError):
    """A message that is not a valid v1 envelope; ``code`` is the error code to report."""

    def __init__(self, code: ErrorCode, message: str, *, ack_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ack_id = ack_id


class InvalidUTF8(ValueError):
    """A text message whose bytes are not UTF-8 (RFC 6455 8.1: close with 1007)."""


class Event(msgspec.Struct, frozen=True, gc=False):
    """An inbound event; ``ack_id`` is set when the sender waits for a reply. ``binary``: it
    came in a binary (MessagePack) frame, so its reply goes in one too."""

    name: str
    data: Any
    ack_id: int | None = None
    binary: bool = False
    meta: Any = None  # 4th item: position (server to client) or idempotency key (to server)


class AckErrorInfo(msgspec.Struct, frozen=True, gc=False):
    code: str
    message: str
    retry_after: float | None = None


class AckReply(msgspec.Struct, frozen=True, gc=False):
    """A reply to an event we sent with an ack id; ``error`` is set for an ack error."""

    ack_id: int
    result: Any
    error: AckErrorInfo | None = None


Packet = Event | AckReply


def decode(payload: bytes | memoryview, *, binary: bool) -> Packet:
    """Decode one whole message into a packet.

    Raises ``InvalidUTF8`` for a text message that is not UTF-8 and ``EnvelopeError`` for
    anything else that is not a v1 envelope.
    """
    try:
        obj = _msgpack_decode(payload) if binary else _json_decode(payload)
    except UnicodeDecodeError as exc:
        if binary:
            raise EnvelopeError(ErrorCode.BAD_MESSAGE, "invalid UTF-8 in MessagePack") from exc
        raise InvalidUTF8("text message is not valid UTF-8") from exc
    except RecursionError as exc:  # msgspec refuses arrays/objects nested ~1000 deep
        raise EnvelopeError(ErrorCode.BAD_MESSAGE, "message nested too deeply") from exc
    except msgspec.DecodeError as exc:
        # JSON syntax outside strings is ASCII, so a syntax error may hide bad UTF-8 there.
        if not binary and not _is_utf8(payload):
            raise InvalidUTF8("text message is not valid UTF-8") from exc
        kind = "MessagePack" if binary else "JSON"
        raise EnvelopeError(ErrorCode.BAD_MESSAGE, f"malformed {kind}: {exc}") from exc
    return parse(obj, binary=binary)


def parse(obj: Any, *, binary: bool = False) -> Packet:
    """Turn a decoded array into a packet, validating its shape."""
    if type(obj) is not list or not 1 <= len(obj) <= 4:
        raise EnvelopeError(ErrorCode.BAD_MESSAGE, "a message must be an array of 1 to 4 items")
    head = obj[0]
    if type(head) is str:
        ack_id: int | None = None
        size = len(obj)
        if size >= 3 and (size == 3 or obj[2] is not None):
            ack_id = _check_ack_id(obj[2])
        if not head:
            raise EnvelopeError(ErrorCode.BAD_MESSAGE, "event name is empty", ack_id=ack_id)
        if size == 4:
            meta = obj[3]
            if meta is None:
                raise EnvelopeError(ErrorCode.BAD_MESSAGE, "4th item must not be null",
                                    ack_id=ack_id)
            return Event(head, obj[1], ack_id, binary, meta)
        return Event(head, obj[1] if size > 1 else None, ack_id, binary)
    if type(head) is int:
        ack_id = _check_ack_id(head)
        if len(obj) == 1:
            raise EnvelopeError(ErrorCode.BAD_MESSAGE, "ack reply without a result")
        if len(obj) == 4:
            raise EnvelopeError(ErrorCode.BAD_MESSAGE, "an ack reply has 2 or 3 items")
        if len(obj) == 3:
            return AckReply(ack_id, None, _parse_error(obj[2]))
        return AckReply(ack_id, obj[1])
    raise EnvelopeError(ErrorCode.BAD_MESSAGE, "first item must be an event name or an ack id")


def _check_ack_id(value: Any) -> int:
    if type(value) is not int or not 0 < value <= MAX_ACK_ID:
        raise EnvelopeError(
            ErrorCode.BAD_MESSAGE, f"ack id must be an integer in 1..{MAX_ACK_ID}"
        )
    return value


def _parse_error(value: Any) -> AckErrorInfo:
    if type(value) is dict:
        code = value.get("code")
        message = value.get("message", "")
        retry = value.get("retryAfter")
        if type(code) is str and type(message) is str:
            return AckErrorInfo(code, message, retry if type(retry) in (int, float) else None)
    raise EnvelopeError(ErrorCode.BAD_MESSAGE, 'ack error must be {"code": str, "message": str}')


def _is_utf8(payload: bytes | memoryview) -> bool:
    try:
        bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def needs_binary(data: Any) -> bool:
    """Whether ``data`` holds bytes at the top level or one level down.

    Such payloads go in binary (MessagePack) frames so bytes arrive as bytes. Deeper bytes would
    be base64 text in JSON: pass ``binary=True`` when sending such payloads.
    """
    kind = type(data)
    if kind is bytes or kind is bytearray or kind is memoryview:
        return True
    # Plain loops: a generator inside any() costs more than the check itself on small payloads.
    if kind is dict:
        for value in data.values():
            if type(value) in _BYTES_TYPES:
                return True
    elif kind is list or kind is tuple:
        for value in data:
            if type(value) in _BYTES_TYPES:
                return True
    return False


_BYTES_TYPES: Final = frozenset({bytes, bytearray, memoryview})


def encode_event(
    name: str, data: Any, ack_id: int | None = None, *, binary: bool = False, meta: Any = None
) -> bytes:
    """Encode an event (with an ack id when the sender waits for a reply; with ``meta``, the
    4th item: a recovery position or an idempotency key)."""
    if meta is not None:
        packet: tuple[Any, ...] = (name, data, ack_id, meta)
    elif ack_id is None:
        packet = (name, data)
    else:
        packet = (name, data, ack_id)
    return _msgpack_encode(packet) if binary else _json_encode(packet)


def with_meta(payload: bytes, meta: Any, *, binary: bool) -> bytes:
    """An event encoded without ack id or meta (``["name", data]``), with ``meta`` added as its
    4th item: ``["name", data, null, meta]``. For a payload encoded once and positioned later
    (a cluster node adds a room message's position when it delivers it)."""
    if binary:
        if payload[:1] != b"\x92":
            raise ValueError("not a 2-item MessagePack event")
        return b"\x94" + payload[1:] + b"\xc0" + _msgpack_encode(meta)
    if payload[-1:] != b"]":
        raise ValueError("not a JSON event")
    return payload[:-1] + b",null," + _json_encode(meta) + b"]"


def encode_ack(ack_id: int, result: Any, *, binary: bool = False) -> bytes:
    return _msgpack_encode((ack_id, result)) if binary else _json_encode((ack_id, result))


def encode_ack_error(
    ack_id: int, code: str, message: str, *, binary: bool = False,
    retry_after: float | None = None,
) -> bytes:
    info: dict[str, Any] = {"code": code, "message": message}
    if retry_after is not None:
        info["retryAfter"] = retry_after
    packet = (ack_id, None, info)
    return _msgpack_encode(packet) if binary else _json_encode(packet)


def encode_error(
    code: str,
    message: str,
    *,
    event: str | None = None,
    ack_id: int | None = None,
    retry_after: float | None = None,
) -> bytes:
    """Encode a ``$error`` event: something the peer sent was refused."""
    info: dict[str, Any] = {"code": code, "message": message}
    if event is not None:
        info["event"] = event
    if ack_id is not None:
        info["id"] = ack_id
    if retry_after is not None:
        info["retryAfter"] = retry_after
    return _json_encode(("$error", info))
