"""Property-based fuzzing of a live server (hypothesis): random envelopes, payload types,
unicode, nesting depth, huge numbers and ack ids, as JSON text frames and as MessagePack binary
frames, and random raw frame sequences (opcodes, fin/RSV bits, fragments, control and close
frames, invalid UTF-8, sizes around the limit).

Every example talks to the server over a raw connection (``rawws``) and checks the answer
against an independent model of docs/protocol.md and RFC 6455:

- what the server sends is well formed: unmasked whole frames, valid JSON / MessagePack
  envelopes, close frames with a valid code and a UTF-8 reason, nothing after its close frame;
- every reply is accounted for: an ack (or ack error) for an id the example sent, a ``$error``
  with a documented code, a ``$pong`` for a ``$ping``; while the connection stays open every
  reply the model requires arrives, in the right frame type (binary for MessagePack requests);
- the server closes exactly when the model says so, with one of the codes the model allows
  (1002 bad framing, 1007 bad UTF-8, 1009 too big, or the echo of the client's close);
- a well-behaved ``smartsocket.Client`` on the same server keeps working (neighbours unaffected);
- nothing is logged at ERROR except the errors the example provoked on purpose.

After all examples of a test: no socket, room, task, per-IP count or pending ack is left over,
and no asyncio task leaked.

One server per test runs on a private event loop; the sync ``@given`` function drives each
example with ``loop.run_until_complete``. ``SMARTSOCKET_FUZZ_EXAMPLES`` raises the number of
examples for a longer local run.

The ``test_regression_*`` tests at the end pin the defects the fuzzing found, each with the
smallest input that shows it.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import gc
import itertools
import json
import logging
import os
import struct
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    RawClient,
)
from smartsocket import Client, Config, SmartSocket, Socket, demo
from smartsocket.demo import ChatMessage, RoomRequest, create_app
from smartsocket.errors import ConnectionClosed
from smartsocket.testing import running

T = TypeVar("T")

# --- the server under test ------------------------------------------------------------------

MAX_SIZE = 64 * 1024  # max_message_size: small, so the size limit is exercised
MAX_NAME = 128  # max_name_length (the default)
MAX_PENDING = 8  # max_pending_acks: small, so too_many_pending is reachable
MAX_ROOMS = 4  # max_rooms_per_socket: small, so room_limit is reachable
MAX_ACK_ID = 2**53 - 1
SLOW_DELAY = 0.01  # the async handler's sleep
ASK_TIMEOUT = 0.05  # the server-to-client call's timeout
BOOM = "fuzz: handler raised on purpose"
# Upper bound of a wait for the server (in this process) to answer: generous, as a loaded
# 2-core machine stalls for seconds; a wait ends as soon as the answer is there.
WAIT = 10.0
# A fuzz test does a fixed amount of work (derandomized examples): its time is the machine's
# speed. 100 examples took 33 s on a loaded machine and hit the 60 s default timeout at times.
pytestmark = pytest.mark.timeout(600)
CLIENT_CODE = "client_says_no"  # the code our answers to the server's calls refuse with

EXAMPLES = int(os.environ.get("SMARTSOCKET_FUZZ_EXAMPLES", "100"))

FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=False,
    report_multiple_bugs=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)

# Error codes a client may see (docs/protocol.md section 5), plus the application's own:
# the demo's not_in_room, and what the "ask" handler relays (AckTimeout's "timeout", and the
# code our answers refuse with).
DOCUMENTED_CODES = frozenset(
    {
        "bad_message",
        "reserved_event",
        "unknown_ack",
        "unknown_event",
        "invalid_payload",
        "internal_error",
        "unauthorized",
        "invalid_name",
        "rate_limited",
        "room_limit",
        "too_many_pending",
    }
)
ANY_CODE = DOCUMENTED_CODES | {"not_in_room", "timeout", CLIENT_CODE}
LOCAL_NAMES = frozenset({"connect", "disconnect", "error"})


# join's payload: {"room", "name"?} in newer demos, {"room"} before.
JoinRequest: type[Any] = getattr(demo, "JoinRequest", RoomRequest)


class Point(msgspec.Struct):
    x: int
    y: int


@dataclass
class Tracker:
    """Every socket the server admitted (weakly), to check nothing of them is left over."""

    sockets: list[weakref.ref[Socket]] = field(default_factory=list)


def make_app(tracker: Tracker) -> SmartSocket:
    """The demo app plus a typed, an async, a raising and a calling-back handler."""
    config = Config(
        max_message_size=MAX_SIZE,
        rate_limit_messages=0,
        rate_limit_bytes=0,
        error_limit=0,  # the model answers every invalid message (test_hostile covers the rule)
        max_pending_acks=MAX_PENDING,
        max_rooms_per_socket=MAX_ROOMS,
        max_name_length=MAX_NAME,
        ping_interval=600.0,  # no heartbeat during a test: the raw clients do not answer it
        ping_timeout=600.0,
    )
    server = create_app(config)

    @server.on_connection
    def track(socket: Socket) -> None:
        tracker.sockets.append(weakref.ref(socket))

    @server.on("point")
    def point(socket: Socket, data: Point) -> dict[str, int]:
        return {"sum": data.x + data.y}

    @server.on("slow")
    async def slow(socket: Socket, data: Any) -> Any:
        await asyncio.sleep(SLOW_DELAY)
        return data

    @server.on("boom")
    def boom(socket: Socket, data: Any) -> None:
        raise RuntimeError(BOOM)

    @server.on("ask")
    async def ask(socket: Socket, data: Any) -> Any:
        # AckTimeout and the client's AckError propagate: they become the sender's ack error.
        try:
            return await socket.call("question", data, timeout=ASK_TIMEOUT)
        except ConnectionClosed:
            return None  # the asker left: nobody to answer
        except (TypeError, OverflowError):
            return "unencodable"  # data that does not fit the format the call picked

    return server


# --- encoding what we send ------------------------------------------------------------------


@dataclass(frozen=True)
class RawJSON:
    """A JSON value given as text: what json.dumps cannot produce (1e400, NaN, "\\ud800",
    2000-deep arrays, 5000-digit numbers, syntax errors)."""

    text: str


@dataclass(frozen=True)
class RawPack:
    """A MessagePack value given as bytes (ext types, float32, maps with array keys, invalid
    bytes, truncated items, deep nesting)."""

    data: bytes


def dump_json(value: Any, ascii_only: bool = True, spaced: bool = False) -> str:
    item_sep, key_sep = (", ", ": ") if spaced else (",", ":")
    if isinstance(value, RawJSON):
        return value.text
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert value == value and abs(value) != float("inf"), value
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, list | tuple):
        return "[" + item_sep.join(dump_json(v, ascii_only, spaced) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + item_sep.join(
            json.dumps(k, ensure_ascii=ascii_only) + key_sep + dump_json(v, ascii_only, spaced)
            for k, v in value.items()
        ) + "}"
    raise TypeError(f"cannot dump {value!r} as JSON")


def dump_pack(value: Any) -> bytes:
    if isinstance(value, RawPack):
        return value.data
    if isinstance(value, list | tuple):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack("!H", n)
        return head + b"".join(dump_pack(v) for v in value)
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack("!H", n)
        return head + b"".join(dump_pack(k) + dump_pack(v) for k, v in value.items())
    return msgspec.msgpack.encode(value)


class Msg:
    """One message as sent: its payload, its frame type, and the ack ids it asks with (so that
    replies to messages the model cannot decode can still be accounted for)."""

    __slots__ = ("binary", "ids", "payload")

    def __init__(self, payload: bytes, binary: bool, ids: tuple[int, ...] = ()) -> None:
        self.payload = payload
        self.binary = binary
        self.ids = ids

    def __repr__(self) -> str:
        kind = "binary" if self.binary else "text"
        shown = self.payload if len(self.payload) <= 160 else self.payload[:160] + b"..."
        return f"Msg({kind}, {len(self.payload)} bytes: {shown!r})"


def _ids_of(envelope: Any) -> tuple[int, ...]:
    if type(envelope) is list and len(envelope) == 3 and valid_id(envelope[2]):
        return (envelope[2],)
    return ()


def json_msg(envelope: Any, ascii_only: bool = True, spaced: bool = False) -> Msg:
    return Msg(dump_json(envelope, ascii_only, spaced).encode(), False, _ids_of(envelope))


def pack_msg(envelope: Any) -> Msg:
    return Msg(dump_pack(envelope), True, _ids_of(envelope))


def sized_echo(target: int, binary: bool, ack_id: int) -> Msg:
    """``["echo", "xx..", ack_id]`` of exactly ``target`` bytes (as close as the format allows)."""
    encode: Callable[[Any], bytes] = (
        msgspec.msgpack.encode if binary else msgspec.json.encode
    )
    pad = max(0, target - len(encode(["echo", "", ack_id])))
    payload = encode(["echo", "x" * pad, ack_id])
    for _ in range(4):  # MessagePack string headers grow with the length
        if len(payload) == target or pad == 0:
            break
        pad = max(0, pad - (len(payload) - target))
        payload = encode(["echo", "x" * pad, ack_id])
    return Msg(payload, binary, (ack_id,))


# --- strategies: values ---------------------------------------------------------------------

EDGE_TEXT = [
    "", " ", "\x00", "\x1f", "\x7f", "\u0085", "\u00a0", "\u2028", "\ufeff", "\ufffd",
    "\U0001f600", "\U0010ffff", '"', "\\", "/", "é" * 3, "a\r\nb", "\t",
]
texts = st.one_of(st.text(max_size=24), st.sampled_from(EDGE_TEXT))

EDGE_INTS = [0, 1, -1, 2**31, 2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64 - 1]
BIG_INTS = [2**64, -(2**63) - 1, 2**100, -(2**100), 10**300]

JSON_SPECIALS = [
    "1e400", "-1e400", "1e-400", "NaN", "-NaN", "Infinity", "-Infinity", "-0", "-0.0", "1E2",
    "0.1e1", "1" * 400, "1" * 5000, "0." + "0" * 400 + "1",
    '"\\ud800"', '"\\udfff\\ud800"', '"a\\udc00b"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\/"',
    '"\\uD834\\uDD1E"', '"\\u00e9"',
    # not JSON at all: the whole message is a bad_message
    "00", "01", "+1", ".5", "1.", "tru", '"\\x41"', "'single'", "[1,]", "{1:2}", '"\\u12"',
]

PACK_SPECIALS = [
    b"\xd4\x05\x01",  # fixext1, type 5
    b"\x81\x92\x01\x02\x01",  # map with an array key
    b"\x81\xc0\x01",  # map with a nil key
    b"\xc7\x00\x07",  # ext8, empty, type 7
    b"\xd4\x80\x00",  # fixext1, type -128
    b"\xca\x7f\xc0\x00\x00",  # float32 NaN
    b"\xca\x3f\x80\x00\x00",  # float32 1.0
    b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00",  # float64 inf
    b"\xd6\xff\x00\x00\x00\x01",  # timestamp32
    b"\xd7\xff" + b"\x00" * 7 + b"\x01",  # timestamp64
    b"\xc7\x0c\xff" + b"\x00" * 11 + b"\x01",  # timestamp96
    b"\xd5\xff\x00\x00",  # timestamp ext of an invalid length
    b"\xa2\xff\xfe",  # str with invalid UTF-8
    b"\xa3\xed\xa0\x80",  # str holding an encoded surrogate
    b"\xc1",  # the never-used byte
    b"\xc4\x05ab",  # truncated bin: swallows what follows
    b"\x81\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\x01",  # map with a float key
    b"\x81\xc4\x01x\x01",  # map with a bin key
    b"\x82\xa1a\x01\xa1a\x02",  # map with a duplicate key
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # int64 min
    b"\xdc\x00\x00",  # array16, empty
    b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G items
    b"\xdf\xff\xff\xff\xff",  # map32 claiming 4G pairs
    b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
]

# Nesting: shallow, around msgspec's limit (it follows Python's recursion limit, 1000), far past.
depths = st.one_of(
    st.integers(1, 64), st.integers(900, 1100), st.sampled_from([500, 2000, 10_000, 30_000])
)


def deep_json(depth: int, objects: bool) -> RawJSON:
    if objects:
        return RawJSON('{"a":' * depth + "0" + "}" * depth)
    return RawJSON("[" * depth + "]" * depth)


def deep_pack(depth: int, maps: bool) -> RawPack:
    if maps:
        return RawPack(b"\x81\xa1a" * depth + b"\xc0")
    return RawPack(b"\x91" * depth + b"\xc0")


json_specials = st.one_of(
    st.sampled_from([RawJSON(t) for t in JSON_SPECIALS]), st.sampled_from(BIG_INTS)
)
pack_specials = st.sampled_from([RawPack(b) for b in PACK_SPECIALS])
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from(EDGE_INTS + BIG_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    json_specials,
)
json_values = st.one_of(
    st.recursive(
        json_leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)
        ),
        max_leaves=10,
    ),
    st.builds(deep_json, depths, st.booleans()),
)
pack_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from(EDGE_INTS),
    st.floats(),  # NaN and infinities are valid MessagePack
    texts,
    st.binary(max_size=24),
    pack_specials,
)
pack_values = st.one_of(
    st.recursive(
        pack_leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(texts, st.integers(-3, 3)), inner, max_size=4),
        ),
        max_leaves=10,
    ),
    st.builds(deep_pack, depths, st.booleans()),
)

HANDLED = [
    "echo", "slow", "point", "boom", "ask", "join", "leave", "chat", "members", "typing",
    "nohandler",
]
ODD_NAMES = [
    "$ping", "$pong", "$auth", "$welcome", "$error", "$", "$$x", "$echo",
    "connect", "disconnect", "error", "", " ", "Echo", "echo ", " echo", "echo\x00",
    "x" * MAX_NAME, "x" * (MAX_NAME + 1), "é" * MAX_NAME, "é" * (MAX_NAME + 1),
    "\U0001f600" * MAX_NAME, "\x00", "a\nb", "\u2028", "\u00a0", "\x7f", "\U0001f600",
]
names = st.one_of(
    st.sampled_from(HANDLED),
    st.sampled_from(HANDLED),
    st.sampled_from(ODD_NAMES),
    texts,
    st.text(min_size=MAX_NAME - 2, max_size=MAX_NAME + 300),
)
room_names = st.one_of(
    st.sampled_from(
        ["lobby", "a", "", " ", "x" * MAX_NAME, "x" * (MAX_NAME + 1), "a\x00", "a\x7f", "\u2028"]
    ),
    texts,
)
valid_ids = st.one_of(st.integers(1, MAX_ACK_ID), st.sampled_from([1, 2, 3, 4, MAX_ACK_ID]))
json_bad_ids: st.SearchStrategy[Any] = st.sampled_from(
    [0, -1, 2**53, 2**63, 2**64, 2**100, -(2**64), 1.0, 1.5, -0.0, 1e300, True, False, None,
     "1", "", [], {}, [1]]
)
pack_bad_ids: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([0, -1, 2**53, 2**63, 2**64 - 1, -(2**63), 1.0, 1.5, True, False, None, "1",
                     b"\x01", [], {}]),
    st.sampled_from([RawPack(b"\xca\x3f\x80\x00\x00"), RawPack(b"\xd4\x05\x01")]),
)


def handler_data(values: st.SearchStrategy[Any], ints: st.SearchStrategy[int]) -> Any:
    """Payloads shaped for the typed handlers (valid and not), and anything else."""
    return st.one_of(
        values,
        st.fixed_dictionaries({"x": ints, "y": ints}),
        st.fixed_dictionaries({"x": values, "y": ints}),
        st.fixed_dictionaries({"room": room_names}),
        st.fixed_dictionaries({"room": room_names, "text": texts}),
        st.fixed_dictionaries({"room": room_names, "name": st.one_of(texts, values)}),
        st.fixed_dictionaries({"room": room_names, "typing": st.one_of(st.booleans(), values)}),
        st.fixed_dictionaries({"room": values, "text": values}),
    )


def error_infos(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries({"code": texts, "message": texts}),
        st.fixed_dictionaries({"code": texts}),
        st.fixed_dictionaries(
            {"code": texts, "message": texts, "retryAfter": st.one_of(
                values, st.floats(allow_nan=False, allow_infinity=False)
            )}
        ),
        st.fixed_dictionaries({"code": values, "message": values}),
        st.fixed_dictionaries({"message": texts}),
        values,
    )


def envelopes(
    values: st.SearchStrategy[Any],
    bad_ids: st.SearchStrategy[Any],
    ints: st.SearchStrategy[int],
    odd: st.SearchStrategy[Any],
) -> st.SearchStrategy[Any]:
    """Envelopes of every shape; ``odd``: the format's special values, given often to the
    handlers that pass data on (echo it, sleep on it, relay it to the client)."""
    ids = st.one_of(valid_ids, valid_ids, bad_ids)
    data = handler_data(values, ints)
    odd_heads = st.sampled_from([None, True, False, 1.5, [], {}, [1], {"a": 1}])
    return st.one_of(
        st.tuples(st.sampled_from(HANDLED), data, valid_ids).map(list),  # real calls
        st.tuples(st.sampled_from(["echo", "slow", "ask"]), values, valid_ids).map(list),
        st.tuples(
            st.sampled_from(["ask", "echo", "slow", "$ping"]),
            st.one_of(odd, st.lists(odd, min_size=1, max_size=2)),
            valid_ids,
        ).map(list),
        st.tuples(st.just("ask"), odd).map(list),
        st.tuples(st.sampled_from(HANDLED), data).map(list),
        st.tuples(names, data, ids).map(list),
        st.tuples(names, data).map(list),
        st.tuples(names).map(list),
        st.tuples(ids, values).map(list),  # ack replies
        st.tuples(ids).map(list),
        st.tuples(ids, st.one_of(st.none(), values), error_infos(values)).map(list),
        st.tuples(odd_heads, values).map(list),
        st.lists(values, min_size=4, max_size=6),
        st.just([]),
        values,  # not an array at all
    )


@st.composite
def json_messages(draw: st.DrawFn) -> Msg:
    choice = draw(st.integers(0, 19))
    if choice == 0:  # UTF-8 text that is probably not an envelope
        return Msg(draw(st.text(max_size=40)).encode(), False)
    if choice == 1:  # around the size limit
        return sized_echo(draw(st.integers(MAX_SIZE - 4, MAX_SIZE + 4)), False, draw(valid_ids))
    if choice == 2:  # names with lone surrogates (JSON allows the escapes)
        name = draw(st.sampled_from(['"\\ud800"', '"echo\\udc00"', '"$\\ud800"']))
        return json_msg([RawJSON(name), draw(json_values), draw(valid_ids)])
    envelope = draw(envelopes(
        json_values, json_bad_ids, st.integers(-(2**70), 2**70), json_specials
    ))
    return json_msg(envelope, ascii_only=draw(st.booleans()), spaced=draw(st.booleans()))


@st.composite
def pack_messages(draw: st.DrawFn) -> Msg:
    choice = draw(st.integers(0, 19))
    if choice == 0:  # bytes that are probably not MessagePack
        return Msg(draw(st.binary(max_size=40)), True)
    if choice == 1:
        return sized_echo(draw(st.integers(MAX_SIZE - 4, MAX_SIZE + 4)), True, draw(valid_ids))
    if choice == 2:  # an envelope cut short
        whole = pack_msg(
            draw(envelopes(pack_values, pack_bad_ids, st.integers(-5, 5), pack_specials))
        )
        cut = draw(st.integers(0, max(0, len(whole.payload) - 1)))
        return Msg(whole.payload[:cut], True)
    envelope = draw(envelopes(
        pack_values, pack_bad_ids, st.integers(-(2**63), 2**64 - 1), pack_specials
    ))
    return pack_msg(envelope)


# --- the model: what the server must (or may) answer ------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One message from the server, parsed."""

    kind: str  # "ack", "error" ($error), "pong" ($pong event) or "question" (server's call)
    ack_id: int | None
    value: Any  # ack result, $error info, $pong data, question data
    error: dict[str, Any] | None  # the info of an ack error
    binary: bool

    def describe(self) -> str:
        frame = "binary" if self.binary else "text"
        if self.kind == "ack" and self.error is not None:
            return f"ack error id={self.ack_id} code={self.error.get('code')!r} ({frame})"
        if self.kind == "ack":
            return f"ack id={self.ack_id} result={_short(self.value)} ({frame})"
        if self.kind == "error":
            return f"$error {_short(self.value)}"
        return f"{self.kind} id={self.ack_id} data={_short(self.value)} ({frame})"


@dataclass(frozen=True)
class Expect:
    """Something the server must (``required``) or may send."""

    what: str
    required: bool
    accepts: Callable[[Reply], bool]


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def valid_id(value: Any) -> bool:
    return type(value) is int and 0 < value <= MAX_ACK_ID


def same(a: Any, b: Any) -> bool:
    """Strict equality: same types all the way down (1 is not 1.0 nor True), NaN equals NaN,
    dicts in the same order. Iterative: values may nest deeper than Python recurses."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if type(x) is float:
            if not (x == y or (x != x and y != y)):
                return False
        elif type(x) in (list, tuple):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif type(x) is dict:
            if len(x) != len(y):
                return False
            for (kx, vx), (ky, vy) in zip(x.items(), y.items(), strict=True):
                stack += [(kx, ky), (vx, vy)]
        elif x != y:
            return False
    return True


def encodable(value: Any, binary: bool) -> bool:
    try:
        (msgspec.msgpack.encode if binary else msgspec.json.encode)(value)
    except (TypeError, OverflowError, ValueError):
        return False
    return True


def decode_deep(decode: Callable[[bytes], Any], payload: bytes) -> Any:
    """``decode(payload)``; a value nested deeper than this stack allows is decoded again on a
    fresh thread, whose stack is empty (msgspec follows Python's recursion limit)."""
    try:
        return decode(payload)
    except RecursionError:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(decode, payload).result()


def ack_ok(ack_id: int, result: Any, binary: bool, *, required: bool = True) -> Expect:
    def accepts(r: Reply) -> bool:
        return (
            r.kind == "ack" and r.ack_id == ack_id and r.error is None and r.binary == binary
            and same(r.value, result)
        )

    frame = "binary" if binary else "text"
    return Expect(f"ack id={ack_id} result={_short(result)} ({frame})", required, accepts)


def ack_err(ack_id: int, codes: frozenset[str], binary: bool, *, required: bool = True) -> Expect:
    def accepts(r: Reply) -> bool:
        return (
            r.kind == "ack" and r.ack_id == ack_id and r.error is not None
            and r.error["code"] in codes and r.binary == binary
        )

    frame = "binary" if binary else "text"
    return Expect(f"ack error id={ack_id} code in {sorted(codes)} ({frame})", required, accepts)


def ack_any(ack_id: int, *, required: bool) -> Expect:
    def accepts(r: Reply) -> bool:
        return r.kind == "ack" and r.ack_id == ack_id and (
            r.error is None or r.error["code"] in ANY_CODE
        )

    return Expect(f"ack or ack error id={ack_id}", required, accepts)


def error_event(codes: frozenset[str], *, required: bool = True) -> Expect:
    def accepts(r: Reply) -> bool:
        return r.kind == "error" and r.value["code"] in codes

    return Expect(f"$error code in {sorted(codes)}", required, accepts)


def pong_for(data: Any, binary: bool) -> Expect:
    def accepts(r: Reply) -> bool:
        return r.kind == "pong" and r.binary == binary and same(r.value, data)

    return Expect(f"$pong {_short(data)}", True, accepts)


def either(*options: Expect) -> Expect:
    return Expect(
        " or ".join(o.what for o in options),
        any(o.required for o in options),
        lambda r: any(o.accepts(r) for o in options),
    )


def anything_for(ids: Sequence[int]) -> list[Expect]:
    """What a message the model cannot decode may get: refusals, and answers to its ids."""
    out = [error_event(ANY_CODE, required=False)]
    out += [ack_any(i, required=False) for i in ids]
    out.append(Expect("$pong", False, lambda r: r.kind == "pong"))
    out.append(Expect("question", False, lambda r: r.kind == "question"))
    return out


def refuse(code: str, ack_id: int | None, binary: bool, *, required: bool = True) -> Expect:
    """docs/protocol.md 5: an ack error when the event asked for an ack, else $error."""
    codes = frozenset({code})
    if ack_id is not None:
        return ack_err(ack_id, codes, binary, required=required)
    return error_event(codes, required=required)


def nesting(value: Any) -> int:
    """How deep containers nest (iteratively: the value may be deeper than Python recurses)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | tuple):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
            stack.extend((k, depth + 1) for k in item)
    return deepest


# Messages nested deeper than this are decoded by msgspec only up to Python's recursion limit,
# which depends on the stack depth where decoding happens: the server may refuse them
# (bad_message) or answer them; it must not fail.
SURE_DEPTH = 500


def model(msg: Msg, asking: bool) -> list[Expect]:
    """What the server answers to one whole message (docs/protocol.md 2, 3, 5 and the
    handlers). ``asking``: the example may have server calls pending, so its ack replies may
    resolve them instead of getting unknown_ack."""
    try:
        obj = (msgspec.msgpack.decode if msg.binary else msgspec.json.decode)(msg.payload)
    except RecursionError:
        return anything_for(msg.ids)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return [error_event(frozenset({"bad_message"}))]
    if nesting(obj) > SURE_DEPTH:
        return anything_for(msg.ids)
    return envelope_model(obj, msg.binary, asking)


def envelope_model(obj: Any, binary: bool, asking: bool) -> list[Expect]:
    bad = [error_event(frozenset({"bad_message"}))]
    if type(obj) is not list or not 1 <= len(obj) <= 3:
        return bad
    head = obj[0]
    if type(head) is int:  # an ack reply or ack error
        if not valid_id(head) or len(obj) == 1:
            return bad
        if len(obj) == 3:
            info = obj[2]
            if not (
                type(info) is dict and type(info.get("code")) is str
                and type(info.get("message", "")) is str
            ):
                return bad
        # No call of the server is pending unless the example asked it to call back.
        return [error_event(frozenset({"unknown_ack"}), required=not asking)]
    if type(head) is not str:
        return bad
    ack_id = None
    if len(obj) == 3:
        if not valid_id(obj[2]):
            return bad
        ack_id = obj[2]
    data = obj[1] if len(obj) > 1 else None
    if not head:
        return [refuse("bad_message", ack_id, binary)]
    if head[0] == "$":
        if head == "$ping":
            return [pong_for(data, binary)]
        if head == "$pong":
            return []  # no heartbeat is pending: ignored
        if head == "$auth":
            return [refuse("bad_message", ack_id, binary)]  # already authenticated
        return [refuse("reserved_event", ack_id, binary)]
    if len(head) > MAX_NAME or not head.isprintable():
        return [refuse("invalid_name", ack_id, binary)]
    if head in LOCAL_NAMES:
        return [refuse("reserved_event", ack_id, binary)]
    return handler_model(head, data, ack_id, binary)


def _convert(data: Any, kind: type[T]) -> T | None:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError:
        return None


def handler_model(name: str, data: Any, ack_id: int | None, binary: bool) -> list[Expect]:
    def answer(result: Any) -> list[Expect]:
        if ack_id is None:
            return []
        if not encodable(result, binary):  # the reply cannot be sent: the handler failed
            return [ack_err(ack_id, frozenset({"internal_error"}), binary)]
        return [ack_ok(ack_id, result, binary)]

    if name == "echo":
        return answer(data)
    if name == "slow":
        if ack_id is None:
            return []
        return [either(ack_ok(ack_id, data, binary),
                       ack_err(ack_id, frozenset({"too_many_pending"}), binary))]
    if name == "boom":
        return [refuse("internal_error", ack_id, binary)]
    if name == "ask":
        question = Expect("question", False, lambda r: r.kind == "question")
        if ack_id is None:
            return [question, error_event(ANY_CODE, required=False)]
        # The reply may hold bytes from our answer: then it is binary whatever the request was.
        return [question, ack_any(ack_id, required=True)]
    if name == "point":
        point = _convert(data, Point)
        if point is None:
            return [refuse("invalid_payload", ack_id, binary)]
        return answer({"sum": point.x + point.y})
    if name in ("members", "typing"):  # demo events for room members: not modelled closely
        if ack_id is None:
            return [error_event(ANY_CODE, required=False)]
        return [ack_any(ack_id, required=True)]
    if name in ("join", "leave"):
        request = _convert(data, JoinRequest if name == "join" else RoomRequest)
        if request is None:
            return [refuse("invalid_payload", ack_id, binary)]
        room = request.room
        if name == "leave":
            return answer({"room": room})
        if not room or len(room) > MAX_NAME or not room.isprintable():  # README: "Names"
            return [refuse("invalid_name", ack_id, binary)]
        joined = answer({"room": room, "members": 1})  # nobody else joins rooms
        refusals = [refuse("room_limit", ack_id, binary, required=False)]
        return [either(*joined, *refusals)] if joined else refusals
    if name == "chat":
        message = _convert(data, ChatMessage)
        if message is None:
            return [refuse("invalid_payload", ack_id, binary)]
        outside = refuse("not_in_room", ack_id, binary, required=False)
        sent = answer({"delivered": 0})  # nobody else is in the example's rooms
        return [either(*sent, outside)] if sent else [outside]
    if ack_id is None:
        return []
    return [ack_err(ack_id, frozenset({"unknown_event"}), binary)]


# --- raw frames and the RFC 6455 reference ----------------------------------------------------


class WireFrame:
    """A frame as we send it, valid or not. (A plain class: hypothesis prints its repr, which
    keeps long payloads short.)"""

    __slots__ = ("fin", "length", "masked", "opcode", "payload", "rsv1", "rsv2", "rsv3")

    def __init__(
        self, opcode: int, payload: bytes = b"", fin: bool = True, rsv1: bool = False,
        rsv2: bool = False, rsv3: bool = False, masked: bool = True, length: int = 0,
    ) -> None:
        self.opcode = opcode
        self.payload = payload
        self.fin = fin
        self.rsv1 = rsv1
        self.rsv2 = rsv2
        self.rsv3 = rsv3
        self.masked = masked
        self.length = length  # payload length encoding: 0 the shortest, 16 or 64 forced

    def encode(self) -> bytes:
        b0 = (
            (self.fin << 7) | (self.rsv1 << 6) | (self.rsv2 << 5) | (self.rsv3 << 4)
            | (self.opcode & 0x0F)
        )
        n = len(self.payload)
        mask_bit = 0x80 if self.masked else 0
        form = self.length or (0 if n < 126 else 16 if n < 65536 else 64)
        if form == 16 and n >= 65536:
            form = 64  # 16 bits cannot hold it
        if form == 0:
            header = bytes((b0, mask_bit | n))
        elif form == 16:
            header = struct.pack("!BBH", b0, mask_bit | 126, n)
        else:
            header = struct.pack("!BBQ", b0, mask_bit | 127, n)
        if not self.masked:
            return header + self.payload
        key = os.urandom(4)
        stream = (key * (n // 4 + 1))[:n]
        masked = (int.from_bytes(self.payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            n, "big"
        ) if n else b""
        return header + key + masked

    def __repr__(self) -> str:
        flags = "".join(
            name for name, on in (("F", self.fin), ("1", self.rsv1), ("2", self.rsv2),
                                  ("3", self.rsv3), ("M", self.masked)) if on
        )
        shown = self.payload if len(self.payload) <= 60 else self.payload[:60] + b"..."
        extra = f" len{self.length}" if self.length else ""
        return f"<op {self.opcode:#x} {flags}{extra} {len(self.payload)}B {shown!r}>"


def rfc_valid_close_code(code: int) -> bool:
    """RFC 6455 7.4: codes that may appear on the wire."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass
class Plan:
    """What the server must do with a frame sequence (RFC 6455 + docs/protocol.md 1)."""

    messages: list[tuple[bytes, bool]] = field(default_factory=list)  # completed, in order
    pings: list[bytes] = field(default_factory=list)  # ping payloads it must answer
    close: frozenset[int] | None = None  # codes it may close with; None: it stays open
    client_closed: bool = False  # the sequence holds a valid close: the server echoes it
    failing_frame: int | None = None  # index of the frame that ends the connection


def framing_violations(f: WireFrame, after_close: bool) -> set[int]:
    """Errors visible in the frame itself (header, and a close frame's payload): the codes a
    server may fail the connection with as soon as it parses the frame."""
    n = len(f.payload)
    control = f.opcode >= 8
    found: set[int] = set()
    if f.opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        found.add(1002)
    if not f.masked:
        found.add(1002)
    if control and (not f.fin or n > 125):
        found.add(1002)
    if (f.length == 16 and n < 126) or (f.length == 64 and n < 65536):
        found.add(1002)  # RFC 6455 5.2: the minimal number of bytes
    if not control and n > MAX_SIZE:
        found.add(1009)
    if f.rsv1 or f.rsv2 or f.rsv3:
        found.add(1002)  # no extension negotiated
    if f.opcode == OP_CLOSE:
        if after_close:
            found.add(1002)  # a second close frame
        if n == 1 or (n >= 2 and not rfc_valid_close_code(int.from_bytes(f.payload[:2], "big"))):
            found.add(1002)
        try:
            f.payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            found.update((1007, 1002))  # Autobahn 7.5.1 accepts either
    return found


def reference(frames: Sequence[WireFrame]) -> Plan:
    """An independent reading of RFC 6455's rules. At the first frame that breaks them the
    server fails the connection, with one of that frame's violations' codes.

    One allowance for how picows reads: it parses the frame after the one it delivers, so a
    framing error in frame i+1 may be reported before frame i is handled: its codes are
    allowed too, and what frame i would have caused may be lost with the connection."""
    plan = Plan()
    open_binary: bool | None = None  # the open fragmented message's type
    parts: list[bytes] = []
    size = 0
    utf8: codecs.IncrementalDecoder | None = None

    def end(index: int, codes: set[int], *, echo: bool = False) -> Plan:
        if index + 1 < len(frames):  # the frame picows read ahead
            codes |= framing_violations(frames[index + 1], frames[index].opcode == OP_CLOSE)
        plan.close = frozenset(codes)
        plan.failing_frame = None if echo else index
        plan.client_closed = echo
        return plan

    for index, f in enumerate(frames):
        n = len(f.payload)
        violations = framing_violations(f, False)
        if violations:
            return end(index, violations)
        if f.opcode == OP_CLOSE:  # a valid close: echoed (1000 for an empty one)
            code = int.from_bytes(f.payload[:2], "big") if n else 1000
            return end(index, {code}, echo=True)
        if f.opcode == OP_PING:
            plan.pings.append(f.payload)
            continue
        if f.opcode == OP_PONG:
            continue
        if f.opcode == OP_CONTINUATION:
            if open_binary is None:
                return end(index, {1002})
            size += n
            if size > MAX_SIZE:
                return end(index, {1009})
            parts.append(f.payload)
            if utf8 is not None:
                try:
                    utf8.decode(f.payload, f.fin)
                except UnicodeDecodeError:
                    return end(index, {1007})
            if f.fin:
                plan.messages.append((b"".join(parts), open_binary))
                open_binary, parts, size, utf8 = None, [], 0, None
            continue
        # a new data message
        if open_binary is not None:
            return end(index, {1002})
        binary = f.opcode == OP_BINARY
        if f.fin:
            if not binary:
                try:
                    f.payload.decode("utf-8")
                except UnicodeDecodeError:
                    return end(index, {1007})
            plan.messages.append((f.payload, binary))
            continue
        open_binary, parts, size = binary, [f.payload], n
        if not binary:
            utf8 = codecs.getincrementaldecoder("utf-8")()
            try:
                utf8.decode(f.payload, False)
            except UnicodeDecodeError:
                return end(index, {1007})
    return plan


# --- strategies: frame sequences --------------------------------------------------------------

INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
VALID_CLOSE = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000,
               3999, 4000, 4999]
INVALID_CLOSE = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]

any_message = st.one_of(json_messages(), pack_messages())


def split_payload(payload: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(payload) + 1) for c in cuts), len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


control_frames = st.builds(
    WireFrame,
    st.sampled_from([OP_PING, OP_PONG]),
    st.one_of(st.binary(max_size=125), st.binary(min_size=126, max_size=130)),
    fin=st.one_of(st.just(True), st.just(True), st.booleans()),
)


@st.composite
def close_frames(draw: st.DrawFn) -> WireFrame:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        payload = b""
    elif kind == 1:
        payload = draw(st.binary(min_size=1, max_size=1))
    else:
        code = draw(st.one_of(
            st.sampled_from(VALID_CLOSE), st.sampled_from(INVALID_CLOSE), st.integers(0, 65535)
        ))
        reason = draw(st.one_of(
            st.text(max_size=30).map(str.encode),
            st.sampled_from(INVALID_UTF8),
            st.integers(120, 124).map(lambda n: b"r" * n),  # 123 bytes fit, 124 do not
        ))
        payload = code.to_bytes(2, "big") + reason
    return WireFrame(OP_CLOSE, payload)


@st.composite
def message_units(draw: st.DrawFn) -> tuple[list[WireFrame], list[Msg]]:
    """A message, maybe fragmented with control frames in between, maybe with one frame
    broken."""
    kind = draw(st.integers(0, 9))
    if kind == 0:  # text with invalid UTF-8 somewhere
        bad = draw(st.sampled_from(INVALID_UTF8))
        msg = Msg(b'["echo","' + bad + b'",' + b"1]", False)
    elif kind == 1:  # around the size limit
        msg = sized_echo(draw(st.integers(MAX_SIZE - 2, MAX_SIZE + 2)), draw(st.booleans()),
                         draw(valid_ids))
    else:
        msg = draw(any_message)
    pieces = split_payload(msg.payload, draw(st.lists(st.integers(0, 2**16), max_size=3)))
    frames: list[WireFrame] = []
    for i, piece in enumerate(pieces):
        opcode = (OP_BINARY if msg.binary else OP_TEXT) if i == 0 else OP_CONTINUATION
        frames.append(WireFrame(opcode, piece, fin=i == len(pieces) - 1))
        if i < len(pieces) - 1 and draw(st.integers(0, 3)) == 0:
            frames.append(draw(control_frames))
    if draw(st.integers(0, 4)) == 0:  # break one frame
        index = draw(st.integers(0, len(frames) - 1))
        old = frames[index]
        mutation = draw(st.sampled_from(
            ["fin", "rsv1", "rsv2", "rsv3", "opcode", "unmasked", "length16", "length64"]
        ))
        if mutation == "fin":
            new = WireFrame(old.opcode, old.payload, not old.fin)
        elif mutation == "opcode":
            new = WireFrame(draw(st.integers(0, 15)), old.payload, old.fin)
        elif mutation == "unmasked":
            new = WireFrame(old.opcode, old.payload, old.fin, masked=False)
        elif mutation.startswith("length"):
            new = WireFrame(old.opcode, old.payload, old.fin, length=int(mutation[6:]))
        else:
            new = WireFrame(old.opcode, old.payload, old.fin, **{mutation: True})
        frames[index] = new
    return frames, [msg]


random_frames = st.builds(
    WireFrame,
    st.integers(0, 15),
    st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode)),
    fin=st.booleans(),
    rsv1=st.booleans(),
    rsv2=st.booleans(),
    rsv3=st.booleans(),
    masked=st.one_of(st.just(True), st.just(True), st.booleans()),
    length=st.sampled_from([0, 0, 0, 16, 64]),
)
frame_units = st.one_of(
    message_units(),
    message_units(),
    message_units(),
    control_frames.map(lambda f: ([f], [])),
    close_frames().map(lambda f: ([f], [])),
    random_frames.map(lambda f: ([f], [])),
    st.integers(MAX_SIZE + 1, MAX_SIZE + 8).map(  # one frame over the limit
        lambda n: ([WireFrame(OP_BINARY, b"\x00" * n)], [])
    ),
)


@st.composite
def frame_sequences(draw: st.DrawFn) -> tuple[list[WireFrame], list[Msg]]:
    frames: list[WireFrame] = []
    msgs: list[Msg] = []
    for unit_frames, unit_msgs in draw(st.lists(frame_units, min_size=1, max_size=6)):
        frames += unit_frames
        msgs += unit_msgs
    return frames, msgs


# --- answers to the server's calls --------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """How the example answers a ``question`` the server calls it with."""

    how: str  # ignore, result, error, twice, wrong (an id the server did not use)
    binary: bool
    value: Any

    def frames(self, ack_id: int) -> list[bytes]:
        if self.how == "ignore":
            return []
        target = ack_id + 1000 if self.how == "wrong" else ack_id
        envelope: list[Any] = (
            [target, None, {"code": CLIENT_CODE, "message": "no"}]
            if self.how == "error"
            else [target, self.value]
        )
        binary = (self.binary or isinstance(self.value, bytes)) and not isinstance(
            self.value, RawJSON
        )
        payload = dump_pack(envelope) if binary else dump_json(envelope).encode()
        frame = WireFrame(OP_BINARY if binary else OP_TEXT, payload).encode()
        return [frame, frame] if self.how == "twice" else [frame]


answers = st.lists(
    st.builds(
        Answer,
        st.sampled_from(["ignore", "result", "result", "error", "twice", "wrong"]),
        st.booleans(),
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**64 - 1),
            texts,
            st.binary(max_size=8),
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from([RawJSON(str(2**100)), RawJSON(str(-(2**70))), RawJSON("1e400")]),
        ),
    ),
    min_size=1,
    max_size=4,
)


# --- the live server and one example ----------------------------------------------------------


def _matching(
    left: Sequence[Any], right: Sequence[Any], edge: Callable[[Any, Any], bool]
) -> list[int]:
    """Indices of ``left`` that a maximum bipartite matching leaves unmatched (Kuhn)."""
    adjacency = [[j for j, r in enumerate(right) if edge(item, r)] for item in left]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in adjacency[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return [i for i in range(len(left)) if not augment(i, set())]


def unmatched_replies(replies: Sequence[Reply], expects: Sequence[Expect]) -> list[Reply]:
    """Replies that no expectation accounts for."""
    return [replies[i] for i in _matching(replies, expects, lambda r, e: e.accepts(r))]


def missing_expects(replies: Sequence[Reply], expects: Sequence[Expect]) -> list[Expect]:
    """Required expectations that no reply satisfies. (With ``unmatched_replies`` empty too,
    one matching does both, by the Mendelsohn-Dulmage theorem.)"""
    required = [e for e in expects if e.required]
    return [required[i] for i in _matching(required, replies, lambda e, r: e.accepts(r))]


def parse_reply(frame: Frame) -> Reply:
    """A data frame from the server as a protocol message; AssertionError if malformed."""
    assert frame.fin and not frame.masked, f"server frames are whole and unmasked: {frame}"
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3), f"RSV bit without deflate: {frame}"
    binary = frame.opcode == OP_BINARY
    if binary:
        value = decode_deep(msgspec.msgpack.decode, frame.payload)
    else:
        value = decode_deep(lambda b: json.loads(b.decode("utf-8")), frame.payload)
    assert type(value) is list and 2 <= len(value) <= 3, f"not an envelope: {value!r}"
    head = value[0]
    if type(head) is int:
        assert valid_id(head), f"ack id out of range: {value!r}"
        if len(value) == 2:
            return Reply("ack", head, value[1], None, binary)
        info = value[2]
        assert value[1] is None and type(info) is dict, f"malformed ack error: {value!r}"
        assert type(info.get("code")) is str and type(info.get("message")) is str, value
        return Reply("ack", head, None, info, binary)
    assert type(head) is str, f"not an envelope: {value!r}"
    if head == "$error":
        info = value[1]
        assert len(value) == 2 and type(info) is dict, f"malformed $error: {value!r}"
        assert type(info.get("code")) is str and type(info.get("message")) is str, value
        assert info["code"] in ANY_CODE, f"undocumented error code: {value!r}"
        return Reply("error", None, info, None, binary)
    if head == "$pong":
        assert len(value) == 2, value
        return Reply("pong", None, value[1], None, binary)
    if head == "question":
        assert len(value) == 3 and valid_id(value[2]), f"malformed server call: {value!r}"
        return Reply("question", value[2], value[1], None, binary)
    raise AssertionError(f"unexpected event from the server: {value!r}")


def check_close_frame(frame: Frame, allowed: frozenset[int]) -> int:
    """What every close frame the server sends must satisfy (RFC 6455 5.5.1, 7.4)."""
    assert frame.fin and not frame.masked, frame
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3), frame
    assert len(frame.payload) >= 2, f"server close frame without a code: {frame}"
    code = frame.close_code
    assert code is not None
    assert rfc_valid_close_code(code), f"server sent close code {code}: {frame}"
    frame.close_reason.decode("utf-8")
    assert code in allowed, f"server closed with {code}, expected one of {sorted(allowed)}: {frame}"
    return code


def expected_record(record: logging.LogRecord) -> bool:
    """Errors the examples provoke on purpose: the raising handler; the server reporting that a
    handler's result does not fit the reply's format (a 2**64 sum, or a client's 2**100 answer
    relayed to a MessagePack asker); picows reporting a client's framing error (it logs those
    at ERROR). Anything else (an exception that escaped to picows or asyncio) is a bug."""
    if "fuzz_expected" in record.__dict__:
        return bool(record.__dict__["fuzz_expected"])
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, RuntimeError) and str(exc) == BOOM and "'boom'" in record.getMessage():
        return True
    if record.name.startswith("smartsocket") and isinstance(
        exc, OverflowError | TypeError | RecursionError
    ):
        return True
    return record.name.startswith("picows") and record.getMessage().startswith("WS parser error")


def describe_record(record: logging.LogRecord) -> str:
    exc = record.exc_info[1] if record.exc_info else None
    suffix = f" [{type(exc).__name__}: {exc}]" if exc is not None else ""
    return f"{record.name} {record.levelname}: {record.getMessage()}{suffix}"


class Live:
    """One server (and one well-behaved neighbour) on a private loop, for one test."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.loop = asyncio.new_event_loop()
        self.tracker = Tracker()
        self.count = 0
        self._running = running(make_app(self.tracker))
        self._started = False
        self._bystander: Client | None = None
        try:
            self.server: SmartSocket = self.run(self._running.__aenter__())
            self._started = True
            self._bystander = Client(self.server.url, reconnect=False)
            self.run(self._bystander.connect())
            self.baseline_tasks = self.loop.run_until_complete(self._tasks())
        except BaseException:
            self.close()
            raise

    @property
    def bystander(self) -> Client:
        assert self._bystander is not None
        return self._bystander

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @staticmethod
    async def _tasks() -> set[asyncio.Task[Any]]:
        return asyncio.all_tasks() - {asyncio.current_task()}

    def close(self) -> None:
        try:
            if self._bystander is not None:
                self.run(self._bystander.close())
            if self._started:
                self.run(self._running.__aexit__(None, None, None))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def forget_tracebacks(self) -> None:
        """Captured records keep their tracebacks, and through them the sockets of the
        handlers that raised: keep the text (for the report), drop the objects."""
        formatter = logging.Formatter()
        for record in self.caplog.records:
            record.fuzz_expected = expected_record(record)  # decided while the exception is here
            if record.exc_info:
                record.exc_text = record.exc_text or formatter.formatException(record.exc_info)
                record.exc_info = None

    def new_errors(self, since: int) -> list[logging.LogRecord]:
        return [
            r for r in self.caplog.records[since:]
            if r.levelno >= logging.ERROR and not expected_record(r)
        ]

    # one example

    def example(
        self, frames: Sequence[WireFrame], msgs: Sequence[Msg], replies_to: Sequence[Answer],
        *, cuts: Sequence[int] = (), polite_end: bool = True,
    ) -> None:
        self.count += 1
        since = len(self.caplog.records)
        self.run(self._example(frames, msgs, replies_to, cuts, polite_end, since), timeout=20)
        gc.collect(1)  # "Future/Task exception was never retrieved" shows now, not later
        errors = self.new_errors(since)
        assert not errors, "server logged errors:\n" + "\n".join(map(describe_record, errors))
        self.forget_tracebacks()

    async def _example(
        self, frames: Sequence[WireFrame], msgs: Sequence[Msg], replies_to: Sequence[Answer],
        cuts: Sequence[int], polite_end: bool, since: int,
    ) -> None:
        server = self.server
        sentinel = b"sentinel %d" % self.count
        frames = [*frames, WireFrame(OP_PING, sentinel)]
        plan = reference(frames)
        by_payload = {(m.payload, m.binary): m for m in msgs}
        asking = any(b"ask" in m.payload for m in msgs)
        expects: list[Expect] = []
        for payload, binary in plan.messages:
            msg = by_payload.get((payload, binary))
            if msg is None:  # assembled from pieces of several messages
                expects += anything_for(())
            else:
                expects += model(msg, asking)
        if plan.close is not None:  # what was queued may be dropped with the connection
            expects = [Expect(e.what, False, e.accepts) for e in expects]

        ws = await RawClient.open(server.port)
        try:
            response = await ws.handshake()
            assert response.status == 101, response
            welcome = json.loads((await ws.recv_frame()).payload)
            assert welcome[0] == "$welcome" and welcome[1]["maxMessageSize"] == MAX_SIZE
            socket = server.sockets[welcome[1]["sid"]]
            wire = b"".join(f.encode() for f in frames)
            for piece in split_payload(wire, list(cuts)):
                ws.send_raw(piece)
                if cuts:
                    await asyncio.sleep(0.001)
            await self._converse(ws, plan, expects, replies_to, since, polite_end)
        finally:
            ws.close()
        await _wait(
            lambda: socket not in server._connections.open, 3.0, "the server to release the socket"
        )
        assert not socket.connected and len(socket._acks) == 0 and not socket._rooms, socket
        assert socket.id not in server.sockets
        reply = await self.bystander.call("echo", {"example": self.count}, timeout=2.0)
        assert reply == {"example": self.count}, reply

    async def _converse(
        self, ws: RawClient, plan: Plan, expects: list[Expect], replies_to: Sequence[Answer],
        since: int, polite_end: bool,
    ) -> None:
        replies: list[Reply] = []
        pongs: Counter[bytes] = Counter()
        # RFC 6455 5.5.3: pings read before their pongs went out may be answered by one pong,
        # for the latest (the server does: a ping flood costs one pong per read). The sentinel
        # is the last ping: its pong is owed; any other pong must answer a ping we sent.
        owed = Counter(plan.pings[-1:])
        close: Frame | None = None
        questions = 0
        deadline = time.monotonic() + WAIT

        def settled() -> bool:
            if plan.close is not None:
                return False  # wait for the close frame
            return not (owed - pongs) and not missing_expects(replies, expects)

        while not settled():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.new_errors(since):
                break
            try:
                frame = await ws.recv_frame(timeout=min(remaining, 0.05))
            except TimeoutError:
                continue
            except EOFError:
                raise AssertionError("server dropped TCP without a close frame") from None
            if frame.opcode == OP_CLOSE:
                close = frame
                break
            if frame.opcode == OP_PONG:
                assert frame.fin and not frame.masked, frame
                pongs[frame.payload] += 1
                continue
            assert frame.opcode in (OP_TEXT, OP_BINARY), f"unexpected frame {frame}"
            reply = parse_reply(frame)
            replies.append(reply)
            if reply.kind == "question" and reply.ack_id is not None:
                answer = replies_to[questions % len(replies_to)]
                questions += 1
                for data in answer.frames(reply.ack_id):
                    ws.send_raw(data)
                    # too late, or twice, or a 1e400 the decoder refuses
                    expects.append(
                        error_event(frozenset({"unknown_ack", "bad_message"}), required=False)
                    )

        errors = self.new_errors(since)
        assert not errors, "server logged errors:\n" + "\n".join(map(describe_record, errors))
        unexpected = unmatched_replies(replies, expects)
        assert not unexpected, "unexpected replies:\n" + "\n".join(
            r.describe() for r in unexpected
        ) + "\nexpected:\n" + "\n".join(e.what for e in expects)
        extra_pongs = pongs - Counter(plan.pings)
        assert not extra_pongs, f"pongs for pings never sent (or ignored): {extra_pongs}"

        if plan.close is None:
            assert close is None, (
                f"server closed unexpectedly: {close}, code {close.close_code}"
                if close is not None else ""
            )
            missing = missing_expects(replies, expects)
            assert not missing, "no reply (the server hung or dropped it):\n" + "\n".join(
                e.what for e in missing
            )
            assert not (owed - pongs), f"pings not answered: {owed - pongs}"
            if not polite_end:
                return
            ws.send_close(1000)
            while True:  # late replies (async handlers) may come before the close echo
                frame = await ws.recv_frame(timeout=2.0)
                if frame.opcode == OP_CLOSE:
                    close = frame
                    break
                if frame.opcode in (OP_TEXT, OP_BINARY):
                    parse_reply(frame)
            check_close_frame(close, frozenset({1000}))
        else:
            assert close is not None, (
                f"server did not close the connection (expected {sorted(plan.close)})"
            )
            check_close_frame(close, plan.close)
            if not plan.client_closed:
                ws.send_close(close.close_code)
        # RFC 6455 5.5.1: nothing after a close frame; the server then drops TCP itself.
        rest = await ws.read_until_eof(timeout=2.5)
        assert rest == b"", f"server sent bytes after its close frame: {rest[:200]!r}"

    # after all examples

    def check_no_leaks(self) -> None:
        self.loop.run_until_complete(self._check_no_leaks())  # no wait_for: it adds a task
        gc.collect()
        errors = self.new_errors(0)
        assert not errors, "server logged errors:\n" + "\n".join(map(describe_record, errors))
        self.forget_tracebacks()
        gc.collect()
        survivors = [
            s for ref in self.tracker.sockets if (s := ref()) is not None
            and s.id != self.bystander.sid
        ]
        assert not survivors, f"sockets still referenced after closing: {survivors}"

    async def _check_no_leaks(self) -> None:
        async with asyncio.timeout(10):
            await self._check_no_leaks_now()

    async def _check_no_leaks_now(self) -> None:
        server = self.server
        await _wait(lambda: not server._tasks, 3.0, "the server's tasks to finish")
        assert list(server.sockets) == [self.bystander.sid], dict(server.sockets)
        assert len(server._connections.open) == 1, server._connections.open
        assert len(server.rooms) == 0, list(server.rooms)
        per_ip = getattr(getattr(server, "_admission", None), "_per_ip", None)
        assert per_ip in (None, {"127.0.0.1": 1}), per_ip  # per-IP counts (if that is where)
        for ref in self.tracker.sockets:
            socket = ref()
            if socket is None or socket.id == self.bystander.sid:
                continue
            assert not socket.connected, socket
            assert len(socket._acks) == 0, f"{socket} still has pending acks"
            assert socket._running == 0, f"{socket} still owes {socket._running} acks"
            assert not socket._rooms, socket
            assert getattr(socket, "_auth_timer", None) is None, socket
        await asyncio.sleep(0)
        leaked = await self._tasks() - self.baseline_tasks
        assert not leaked, f"asyncio tasks left running: {leaked}"
        assert await self.bystander.call("echo", "bye", timeout=2.0) == "bye"


async def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def live(caplog: pytest.LogCaptureFixture) -> Iterator[Live]:
    for name in ("smartsocket", "asyncio", "picows"):
        caplog.set_level(logging.ERROR, logger=name)
    server = Live(caplog)
    try:
        yield server
    finally:
        server.close()


# --- the fuzz tests -------------------------------------------------------------------------

cut_points = st.lists(st.integers(0, 2**20), max_size=3)


def test_fuzz_json_envelopes(live: Live) -> None:
    """Text frames: JSON envelopes of every shape, names, ids and payloads (unicode, lone
    surrogate escapes, huge and out-of-range numbers, deep nesting), sizes around the limit."""

    @FUZZ
    @given(st.lists(json_messages(), min_size=1, max_size=10), answers, st.booleans())
    def example(msgs: list[Msg], replies_to: list[Answer], polite_end: bool) -> None:
        frames = [WireFrame(OP_BINARY if m.binary else OP_TEXT, m.payload) for m in msgs]
        live.example(frames, msgs, replies_to, polite_end=polite_end)

    example()
    live.check_no_leaks()


def test_fuzz_messagepack_envelopes(live: Live) -> None:
    """Binary frames: the same envelopes as MessagePack, with bytes, ext types, timestamps,
    float32/NaN/infinities, odd map keys, invalid and truncated bytes."""

    @FUZZ
    @given(st.lists(pack_messages(), min_size=1, max_size=10), answers, st.booleans())
    def example(msgs: list[Msg], replies_to: list[Answer], polite_end: bool) -> None:
        frames = [WireFrame(OP_BINARY if m.binary else OP_TEXT, m.payload) for m in msgs]
        live.example(frames, msgs, replies_to, polite_end=polite_end)

    example()
    live.check_no_leaks()


def test_fuzz_raw_frames(live: Live) -> None:
    """Raw frame sequences: fragments with control frames between them, reserved opcodes,
    fin/RSV bits, unmasked frames, non-minimal lengths, close frames with any code and reason,
    invalid UTF-8, frames and messages around the size limit; sent in one write or in pieces."""

    @FUZZ
    @given(frame_sequences(), answers, cut_points, st.booleans())
    def example(
        sequence: tuple[list[WireFrame], list[Msg]], replies_to: list[Answer], cuts: list[int],
        polite_end: bool,
    ) -> None:
        frames, msgs = sequence
        live.example(frames, msgs, replies_to, cuts=cuts, polite_end=polite_end)

    example()
    live.check_no_leaks()


# --- regressions: the smallest inputs that show what the fuzzing found ------------------------


@pytest.fixture
def logged_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """Unexpected ERROR records so far (after a garbage collection, which is when asyncio
    reports a Future or Task exception that was never retrieved)."""
    for name in ("smartsocket", "asyncio", "picows"):
        caplog.set_level(logging.ERROR, logger=name)

    def errors() -> list[str]:
        gc.collect()
        return [
            describe_record(r) for r in caplog.records
            if r.levelno >= logging.ERROR and not expected_record(r)
        ]

    return errors


async def open_raw(server: SmartSocket) -> tuple[RawClient, Socket]:
    """A raw connection past ``$welcome``, and the server's socket for it."""
    ws = await RawClient.open(server.port)
    try:
        assert (await ws.handshake()).status == 101
        welcome = json.loads((await ws.recv_frame()).payload)
        assert welcome[0] == "$welcome", welcome
    except BaseException:
        ws.close()
        raise
    return ws, server.sockets[welcome[1]["sid"]]


def show(frame: Frame) -> str:
    if frame.opcode == OP_CLOSE:
        return f"close {frame.close_code} {frame.close_reason!r}"
    return f"opcode {frame.opcode:#x} {frame.payload[:80]!r}"


async def assert_echo_works(ws: RawClient) -> None:
    ws.send_text(b'["echo","still here",424242]')
    frame = await ws.recv_frame()
    assert frame.opcode == OP_TEXT, f"the connection should still work, got {show(frame)}"
    assert json.loads(frame.payload) == [424242, "still here"], show(frame)


DEEP = {
    "json-arrays-1000": (False, b'["echo",' + b"[" * 1000 + b"]" * 1000 + b",1]"),
    "json-objects-10000": (False, b'["echo",' + b'{"a":' * 10_000 + b"0" + b"}" * 10_000 + b",1]"),
    "msgpack-arrays-30000": (True, b"\x93\xa4echo" + b"\x91" * 30_000 + b"\xc0\x01"),
    "msgpack-maps-10000": (True, b"\x93\xa4echo" + b"\x81\xa1a" * 10_000 + b"\xc0\x01"),
}


@pytest.mark.parametrize(("binary", "payload"), DEEP.values(), ids=DEEP.keys())
async def test_regression_deep_nesting_is_a_bad_message(
    logged_errors: Callable[[], list[str]], binary: bool, payload: bytes
) -> None:
    """A message nested deeper than msgspec decodes (it follows Python's recursion limit) is
    not an envelope: bad_message, and the connection lives. (It was: RecursionError out of
    Socket.on_message, logged by picows, close 1011.)"""
    async with running(make_app(Tracker())) as server:
        ws, _ = await open_raw(server)
        try:
            (ws.send_binary if binary else ws.send_text)(payload)
            frame = await ws.recv_frame()
            assert frame.opcode in (OP_TEXT, OP_BINARY), f"expected bad_message, got {show(frame)}"
            reply = (msgspec.msgpack.decode if frame.opcode == OP_BINARY else json.loads)(
                frame.payload
            )
            refused = reply[0] == "$error" and reply[1]["code"] == "bad_message"
            refused_ack = reply[:2] == [1, None] and reply[2]["code"] == "bad_message"
            assert refused or refused_ack, reply
            await assert_echo_works(ws)
        finally:
            ws.close()
    assert not logged_errors()


async def test_regression_nesting_at_the_decoders_limit(
    logged_errors: Callable[[], list[str]],
) -> None:
    """Around the depth where decoding stops working, every message gets an answer (its ack
    or $pong, or a bad_message / internal_error refusal) and the connection lives. (Decoding
    succeeded a few levels deeper than encoding the reply: RecursionError out of encode_ack /
    encode_event, logged by picows, close 1011.)"""
    failures: list[str] = []
    fine = frozenset({"bad_message", "internal_error"})
    async with running(make_app(Tracker())) as server:
        for binary in (False, True):
            for kind in ("echo", "$ping"):
                for depth in range(800, 1001):
                    inner = (
                        b"\x91" * depth + b"\xc0" if binary else b"[" * depth + b"]" * depth
                    )
                    value = RawPack(inner) if binary else RawJSON(inner.decode())
                    envelope: list[Any] = ["echo", value, 1] if kind == "echo" else [kind, value]
                    msg = pack_msg(envelope) if binary else json_msg(envelope)
                    ws, _ = await open_raw(server)
                    try:
                        (ws.send_binary if binary else ws.send_text)(msg.payload)
                        frame = await ws.recv_frame(WAIT)
                        ok = False
                        if frame.opcode in (OP_TEXT, OP_BINARY):
                            reply = parse_reply(frame)
                            ok = (
                                (reply.kind == "ack" and reply.ack_id == 1 and kind == "echo"
                                 and (reply.error is None or reply.error["code"] in fine))
                                or (reply.kind == "pong" and kind == "$ping")
                                or (reply.kind == "error" and reply.value["code"] in fine)
                            )
                        if not ok:
                            fmt = "msgpack" if binary else "json"
                            failures.append(f"{kind} {fmt} depth {depth}: {show(frame)}")
                    finally:
                        ws.close()
    assert not failures, f"{len(failures)} unanswered:\n" + "\n".join(failures[:12])
    assert not logged_errors()


async def test_regression_ack_error_to_a_messagepack_request_is_binary(
    logged_errors: Callable[[], list[str]],
) -> None:
    """docs/protocol.md 2: an ack error goes in a binary frame when its request came in one.
    (The bad_message for an empty event name with a valid id came as JSON text:
    Socket.on_message's ``except EnvelopeError`` calls reject() without binary=binary.)"""
    async with running(make_app(Tracker())) as server:
        ws, _ = await open_raw(server)
        try:
            ws.send_binary(msgspec.msgpack.encode(["", 1, 5]))
            frame = await ws.recv_frame()
            assert frame.opcode == OP_BINARY, f"expected a binary ack error, got {show(frame)}"
            reply = msgspec.msgpack.decode(frame.payload)
            assert reply[:2] == [5, None] and reply[2]["code"] == "bad_message", reply
        finally:
            ws.close()
    assert not logged_errors()


BAD_NEXT = {
    "unmasked": WireFrame(OP_TEXT, b'["echo",2,2]', masked=False),
    "reserved-opcode": WireFrame(0x3, b"x"),
    "fragmented-ping": WireFrame(OP_PING, b"p", fin=False),
    "long-ping": WireFrame(OP_PING, b"p" * 126),
    "close-code-1004": WireFrame(OP_CLOSE, (1004).to_bytes(2, "big")),
    "frame-over-max-size": WireFrame(OP_BINARY, b"\x00" * (MAX_SIZE + 1)),
}


@pytest.mark.parametrize("bad", BAD_NEXT.values(), ids=BAD_NEXT.keys())
async def test_regression_nothing_after_the_close_frame(
    logged_errors: Callable[[], list[str]], bad: WireFrame
) -> None:
    """RFC 6455 5.5.1: after its close frame an endpoint sends no more data frames. (picows
    reads one frame ahead: a framing error in the next frame makes it write its close frame
    at once, before the current frame is handled; that frame's ack, queued for the end of the
    loop iteration, then went out after the close frame: ServerConnection.flush_pending does not
    know picows closed.)"""
    async with running(make_app(Tracker())) as server:
        ws, socket = await open_raw(server)
        try:
            ws.send_raw(WireFrame(OP_TEXT, b'["echo","before",1]').encode() + bad.encode())
            frame = await ws.recv_frame()
            while frame.opcode != OP_CLOSE:  # the ack may come first
                assert json.loads(frame.payload) == [1, "before"], show(frame)
                frame = await ws.recv_frame()
            assert frame.close_code in (1002, 1009), show(frame)
            ws.send_close(frame.close_code)
            rest = await ws.read_until_eof()
            assert rest == b"", f"bytes after the server's close frame: {rest[:80]!r}"
        finally:
            ws.close()
        await _wait(
            lambda: socket not in server._connections.open, 3.0, "the server to drop the socket"
        )
    assert not logged_errors()


async def test_regression_unencodable_reply_of_a_sync_handler(
    logged_errors: Callable[[], list[str]],
) -> None:
    """A result that does not fit the reply's format (here a sum over 2**64 for a MessagePack
    request) is the handler's failure: ack error internal_error, the connection lives.
    (SmartSocket._invoke calls socket.reply() outside its try: OverflowError out of
    on_message, logged by picows, close 1011.)"""
    async with running(make_app(Tracker())) as server:
        ws, _ = await open_raw(server)
        try:
            ws.send_binary(msgspec.msgpack.encode(["point", {"x": 2**64 - 1, "y": 1}, 7]))
            frame = await ws.recv_frame()
            assert frame.opcode == OP_BINARY, f"expected an ack error, got {show(frame)}"
            reply = msgspec.msgpack.decode(frame.payload)
            assert reply[:2] == [7, None] and reply[2]["code"] == "internal_error", reply
            await assert_echo_works(ws)
        finally:
            ws.close()
    assert not logged_errors()


async def test_regression_unencodable_reply_of_an_async_handler(
    logged_errors: Callable[[], list[str]],
) -> None:
    """The "ask" handler returns the client's answer to ``socket.call``: 2**100 from a JSON
    answer cannot go back in the MessagePack reply its asker needs. The asker must get an
    ack error. (SmartSocket._finish calls socket.reply() outside its try: the OverflowError
    ends the task, asyncio logs "Task exception was never retrieved", and the asker never
    gets an answer.)"""
    async with running(make_app(Tracker())) as server:
        ws, _ = await open_raw(server)
        try:
            ws.send_binary(msgspec.msgpack.encode(["ask", "how much?", 7]))
            question = json.loads((await ws.recv_frame()).payload)
            assert question[0] == "question", question
            ws.send_text(f"[{question[2]},{2**100}]".encode())
            frame = await ws.recv_frame(timeout=1.0)
            reply = msgspec.msgpack.decode(frame.payload)
            assert reply[:2] == [7, None] and reply[2]["code"] == "internal_error", reply
            await assert_echo_works(ws)
        finally:
            ws.close()
    assert not logged_errors()


async def test_regression_call_with_unencodable_data_leaks_no_pending_ack(
    logged_errors: Callable[[], list[str]],
) -> None:
    """``socket.call(event, data)`` with data the chosen format cannot encode (a MessagePack
    map with an array key, relayed as JSON) raises TypeError to the handler; it must not
    leave a pending ack behind. (Socket.call reserves the ack id and its timer before
    encoding: the orphan future counts against max_pending_acks until it times out, then
    fails with an exception nobody retrieves: "Future exception was never retrieved".)"""
    async with running(make_app(Tracker())) as server:
        ws, socket = await open_raw(server)
        try:
            ws.send_binary(b"\x93\xa3ask" + b"\x81\x92\x01\x02\x01" + b"\x07")
            frame = await ws.recv_frame()
            assert msgspec.msgpack.decode(frame.payload) == [7, "unencodable"], show(frame)
            assert len(socket._acks) == 0, f"{len(socket._acks)} ack(s) pending, no call sent"
            await asyncio.sleep(ASK_TIMEOUT * 3)
            await assert_echo_works(ws)
        finally:
            ws.close()
    assert not logged_errors()
