"""permessage-deflate (RFC 7692): header parsing, negotiation both sides, payload transforms."""

from __future__ import annotations

import json
import os
import random
import threading
import tracemalloc
import zlib
from typing import Any

import pytest
from websockets.extensions import permessage_deflate as ws_pmd
from websockets.frames import Frame, Opcode
from websockets.headers import build_extension, parse_extension

from smartsocket.compression import (
    DecompressedTooLarge,
    DeflateError,
    DeflateParams,
    MessageDeflater,
    MessageInflater,
    NegotiationError,
    accept_response,
    client_offer,
    compress_once,
    negotiate,
    parse_extensions,
)

TAIL = b"\x00\x00\xff\xff"
PMD = "permessage-deflate"


def chat_message(i: int = 0) -> bytes:
    """A realistic ~1 KB chat event (JSON)."""
    rng = random.Random(i)
    words = [
        *("the", "build", "staging", "login", "flow", "mobile", "redirect", "loop", "session"),
        *("cookie", "expired", "second", "pair", "eyes", "ship", "tomorrow", "morning"),
        *("review", "reconnect", "backoff", "laptop", "sleep", "retries", "client"),
    ]
    msg = {
        "room": "lobby",
        "from": f"user{i % 7}",
        "timestamp": 1764100000000 + i,
        "text": " ".join(rng.choice(words) for _ in range(90)),
        "user": {"id": f"user{i % 7}", "name": "Alice Martin", "roles": ["member", "moderator"]},
        "mentions": ["bob42", "carol7"],
        "meta": {"client": "web", "version": "2.14.1", "locale": "en-US", "edited": False},
    }
    return json.dumps(msg, separators=(",", ":")).encode()


def raw_sync_deflate(payload: bytes, wbits: int = 15) -> bytes:
    """An RFC 7692 payload made independently with plain zlib."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def raw_inflate(payload: bytes, wbits: int = 15) -> bytes:
    """Inflate with plain zlib, 64 bytes at a time so that back references must come from the
    window (zlib does not check distances that stay within one output buffer)."""
    d, data, out = zlib.decompressobj(-wbits), payload + TAIL, []
    while data:
        out.append(d.decompress(data, 64))
        data = d.unconsumed_tail
    return b"".join(out)


# --- parse_extensions -------------------------------------------------------------------------


def test_parse_simple_and_multiple_offers() -> None:
    header = (
        "permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
        "permessage-deflate, x-webkit-deflate-frame"
    )
    assert parse_extensions(header) == [
        (PMD, {"client_max_window_bits": None, "server_max_window_bits": "10"}),
        (PMD, {}),
        ("x-webkit-deflate-frame", {}),
    ]


def test_parse_whitespace_quotes_and_empty_elements() -> None:
    header = '  permessage-deflate ;client_max_window_bits = "12" ;\tserver_no_context_takeover ,'
    assert parse_extensions(header) == [
        (PMD, {"client_max_window_bits": "12", "server_no_context_takeover": None})
    ]
    assert parse_extensions('a; b="1\\0"') == [("a", {"b": "10"})]  # quoted-pair unescaped
    assert parse_extensions(", a ,, b,") == [("a", {}), ("b", {})]
    assert parse_extensions("") == []
    assert parse_extensions(" \t") == []


@pytest.mark.parametrize(
    "header",
    [
        ";",
        "a;",
        "a; =1",
        "a b",
        "a; b=",
        "a; b=c=d",
        "a; b=1 c",
        '"a"',
        'a; "b"=1',
        'a; b="unterminated',
        'a; b="1 0"',  # a quoted value must be a token once unescaped
        'a; b=""',
        "a; b=(1)",
        "a/b",
        "a; b; b",  # repeated parameter: ambiguous as a dict
    ],
)
def test_parse_garbage(header: str) -> None:
    with pytest.raises(ValueError):
        parse_extensions(header)


# --- server negotiation -----------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "x-webkit-deflate-frame", "permessage-deflate; ;"])
def test_negotiate_nothing_to_accept(header: str | None) -> None:
    assert negotiate(header) is None


def test_negotiate_plain_offer_forces_server_no_context_takeover() -> None:
    params = negotiate(PMD)
    assert params == DeflateParams(server_no_context_takeover=True)
    assert params.response_header() == "permessage-deflate; server_no_context_takeover"


def test_negotiate_client_max_window_bits() -> None:
    # Without a value, our default window (15) needs no answer; with a cap it is announced.
    params = negotiate("permessage-deflate; client_max_window_bits")
    assert params is not None
    assert params.client_max_window_bits == 15
    assert "client_max_window_bits" not in params.response_header()
    params = negotiate("permessage-deflate; client_max_window_bits", max_window_bits=12)
    assert params is not None
    assert params.client_max_window_bits == 12
    assert params.response_header().endswith("; client_max_window_bits=12")
    # With a value: echoed, never raised above it.
    params = negotiate("permessage-deflate; client_max_window_bits=10", max_window_bits=12)
    assert params is not None
    assert params.client_max_window_bits == 10
    assert params.response_header().endswith("; client_max_window_bits=10")
    # Not offered: never named, even with a smaller cap (RFC 7692 7.1.2.2).
    params = negotiate(PMD, max_window_bits=10)
    assert params is not None
    assert params.client_max_window_bits == 15
    assert "client_max_window_bits" not in params.response_header()


def test_negotiate_server_max_window_bits() -> None:
    params = negotiate("permessage-deflate; server_max_window_bits=10")
    assert params is not None
    assert params.server_max_window_bits == 10
    assert params.response_header() == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
    )
    params = negotiate("permessage-deflate; server_max_window_bits=14", max_window_bits=11)
    assert params is not None
    assert params.server_max_window_bits == 11
    assert params.response_header().endswith("; server_max_window_bits=11")
    # Offered as 15: must still be answered, or the client sees its offer ignored.
    params = negotiate('permessage-deflate; server_max_window_bits="15"')
    assert params is not None
    assert params.response_header().endswith("; server_max_window_bits=15")


def test_negotiate_declines_server_window_8_and_takes_next_offer() -> None:
    assert negotiate("permessage-deflate; server_max_window_bits=8") is None
    params = negotiate(
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9"
    )
    assert params is not None
    assert params.server_max_window_bits == 9


def test_negotiate_echoes_client_no_context_takeover() -> None:
    params = negotiate("permessage-deflate; client_no_context_takeover")
    assert params == DeflateParams(server_no_context_takeover=True, client_no_context_takeover=True)
    assert params.response_header() == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )


@pytest.mark.parametrize(
    "bad_offer",
    [
        "permessage-deflate; foo",  # unknown parameter
        "permessage-deflate; foo=1",
        "permessage-deflate; client_max_window_bits; client_max_window_bits",  # duplicate
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=16",  # invalid values
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=-9",
        "permessage-deflate; server_max_window_bits",  # must have a value
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",  # flag with a value
        'permessage-deflate; client_no_context_takeover="true"',
    ],
)
def test_negotiate_declines_bad_offer_and_takes_next(bad_offer: str) -> None:
    assert negotiate(bad_offer) is None
    params = negotiate(f"{bad_offer}, permessage-deflate; client_no_context_takeover")
    assert params == DeflateParams(server_no_context_takeover=True, client_no_context_takeover=True)


def test_negotiate_unparsable_header_declines() -> None:
    assert negotiate('permessage-deflate; a="') is None


def test_negotiate_context_takeover_mode() -> None:
    params = negotiate(PMD, context_takeover=True)
    assert params == DeflateParams()
    assert params.response_header() == PMD
    # The client may still ask for it.
    params = negotiate("permessage-deflate; server_no_context_takeover", context_takeover=True)
    assert params is not None
    assert params.server_no_context_takeover
    # max_window_bits is the server window; unannounced as the client did not offer it.
    params = negotiate(PMD, context_takeover=True, max_window_bits=10)
    assert params is not None
    assert params.server_max_window_bits == 10
    assert params.response_header() == PMD


@pytest.mark.parametrize("bits", [8, 16])
def test_negotiate_rejects_bad_config(bits: int) -> None:
    with pytest.raises(ValueError):
        negotiate(PMD, max_window_bits=bits)


def test_deflate_params_validates_bits() -> None:
    with pytest.raises(ValueError):
        DeflateParams(server_max_window_bits=16)
    with pytest.raises(ValueError):
        DeflateParams(client_max_window_bits=7)


# --- client offer / accept --------------------------------------------------------------------


def test_client_offer() -> None:
    assert client_offer() == "permessage-deflate; client_max_window_bits"
    assert client_offer(client_max_window_bits=False) == PMD
    assert client_offer(
        server_no_context_takeover=True, client_no_context_takeover=True, server_max_window_bits=10
    ) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits"
    )
    with pytest.raises(ValueError):
        client_offer(server_max_window_bits=16)


@pytest.mark.parametrize("header", [None, "", "  "])
def test_accept_declined(header: str | None) -> None:
    assert accept_response(header) is None


def test_accept_valid_answers() -> None:
    assert accept_response(PMD) == DeflateParams()
    assert accept_response("permessage-deflate; server_no_context_takeover") == DeflateParams(
        server_no_context_takeover=True
    )
    # The server may add client_no_context_takeover unasked (RFC 7692 7.1.1.2).
    params = accept_response("permessage-deflate; client_no_context_takeover")
    assert params == DeflateParams(client_no_context_takeover=True)
    params = accept_response('permessage-deflate;client_max_window_bits="10"')
    assert params == DeflateParams(client_max_window_bits=10)
    params = accept_response(
        "permessage-deflate; server_max_window_bits=9", server_max_window_bits=10
    )
    assert params == DeflateParams(server_max_window_bits=9)
    # We offered client_no_context_takeover: our side keeps that promise even if not echoed.
    params = accept_response(PMD, client_no_context_takeover=True)
    assert params == DeflateParams(client_no_context_takeover=True)


@pytest.mark.parametrize(
    ("answer", "offer"),
    [
        ("permessage-deflate; foo", {}),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", {}),
        ("permessage-deflate; server_no_context_takeover=yes", {}),
        ("permessage-deflate; client_max_window_bits", {}),  # must have a value in an answer
        ("permessage-deflate; client_max_window_bits=16", {}),
        ("permessage-deflate; client_max_window_bits=10", {"client_max_window_bits": False}),
        ("permessage-deflate; server_max_window_bits=11", {"server_max_window_bits": 10}),
        (PMD, {"server_max_window_bits": 10}),  # offered, not answered
        (PMD, {"server_no_context_takeover": True}),  # offered, not answered
        ("x-webkit-deflate-frame", {}),  # not offered at all
        ("permessage-deflate, permessage-deflate", {}),
        ("permessage-deflate, foo", {}),
        ('permessage-deflate; a="', {}),
    ],
)
def test_accept_invalid_answers(answer: str, offer: dict[str, Any]) -> None:
    with pytest.raises(NegotiationError):
        accept_response(answer, **offer)


def test_accept_server_window_that_was_not_offered() -> None:
    # RFC 7692 7.1.2.1: the server MAY limit its own window unasked (python-websockets: 12).
    params = accept_response("permessage-deflate; server_max_window_bits=12")
    assert params is not None and params.server_max_window_bits == 12


@pytest.mark.parametrize(
    "offer",
    [
        {},
        {"client_max_window_bits": False},
        {"server_no_context_takeover": True},
        {"client_no_context_takeover": True},
        {"server_max_window_bits": 12},
        {"server_max_window_bits": 15, "client_no_context_takeover": True},
    ],
)
@pytest.mark.parametrize("context_takeover", [False, True])
@pytest.mark.parametrize("max_window_bits", [15, 10])
def test_our_client_against_our_server(
    offer: dict[str, Any], context_takeover: bool, max_window_bits: int
) -> None:
    server = negotiate(
        client_offer(**offer), context_takeover=context_takeover, max_window_bits=max_window_bits
    )
    assert server is not None
    client = accept_response(server.response_header(), **offer)
    assert client is not None
    assert client.server_no_context_takeover == server.server_no_context_takeover
    assert client.client_no_context_takeover == server.client_no_context_takeover
    # The client may think the server window bigger (unannounced cap), never smaller.
    assert client.server_max_window_bits >= server.server_max_window_bits
    assert client.client_max_window_bits == server.client_max_window_bits
    round_trip(MessageDeflater(server, True), MessageInflater(client, False), 4)
    round_trip(MessageDeflater(client, False), MessageInflater(server, True), 4)


# --- interoperability with python-websockets' implementation ----------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        ws_pmd.ClientPerMessageDeflateFactory(),
        ws_pmd.ClientPerMessageDeflateFactory(server_max_window_bits=11),
        ws_pmd.ClientPerMessageDeflateFactory(client_max_window_bits=10),
        ws_pmd.ClientPerMessageDeflateFactory(server_no_context_takeover=True),
        ws_pmd.ClientPerMessageDeflateFactory(client_no_context_takeover=True),
    ],
)
@pytest.mark.parametrize("context_takeover", [False, True])
def test_websockets_client_against_our_server(
    factory: ws_pmd.ClientPerMessageDeflateFactory, context_takeover: bool
) -> None:
    offer = build_extension([(factory.name, factory.get_request_params())])
    params = negotiate(offer, context_takeover=context_takeover, max_window_bits=12)
    assert params is not None
    [(name, response_params)] = parse_extension(params.response_header())
    assert name == PMD
    ws_client = factory.process_response_params(response_params, [])  # raises if invalid
    deflater, inflater = MessageDeflater(params, True), MessageInflater(params, True)
    for i in range(5):
        message = chat_message(i)
        payload = deflater.compress(message)
        assert payload is not None
        frame = ws_client.decode(Frame(Opcode.TEXT, payload, rsv1=True), max_size=None)
        assert frame.data == message
        encoded = ws_client.encode(Frame(Opcode.TEXT, message))
        assert inflater.decompress(encoded.data, 1 << 20) == message


@pytest.mark.parametrize(
    "offer",
    [
        {},
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"server_max_window_bits": 10},
    ],
)
def test_our_client_against_websockets_server(offer: dict[str, Any]) -> None:
    factory = ws_pmd.ServerPerMessageDeflateFactory(client_max_window_bits=11)
    [(_, request_params)] = parse_extension(client_offer(**offer))
    response_params, ws_server = factory.process_request_params(request_params, [])
    params = accept_response(build_extension([(factory.name, response_params)]), **offer)
    assert params is not None
    assert params.client_max_window_bits == 11
    deflater, inflater = MessageDeflater(params, False), MessageInflater(params, False)
    for i in range(5):
        message = chat_message(i)
        payload = deflater.compress(message)
        assert payload is not None
        assert ws_server.decode(Frame(Opcode.TEXT, payload, rsv1=True)).data == message
        assert inflater.decompress(ws_server.encode(Frame(Opcode.TEXT, message)).data, None) == (
            message
        )


# --- round trips ------------------------------------------------------------------------------


def round_trip(deflater: MessageDeflater, inflater: MessageInflater, count: int) -> None:
    for i in range(count):
        message = chat_message(i)
        payload = deflater.compress(message)
        assert payload is not None
        assert not payload.endswith(TAIL)
        assert inflater.decompress(payload, len(message)) == message


def test_round_trip_stateless_server() -> None:
    params = negotiate(PMD)
    assert params is not None
    deflater = MessageDeflater(params, True)
    assert deflater.stateless
    round_trip(deflater, MessageInflater(params, False), 20)
    # Stateless means each payload stands alone: byte-identical to a fresh compressor's and
    # decodable by a fresh decoder even after similar messages went before.
    for i in range(5):
        message = chat_message(i)
        payload = deflater.compress(message)
        assert payload is not None
        assert payload == compress_once(message)
        fresh = zlib.compressobj(1, zlib.DEFLATED, -15)
        assert payload == (fresh.compress(message) + fresh.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert raw_inflate(payload) == message


def test_round_trip_context_takeover_both_ways() -> None:
    params = negotiate(PMD, context_takeover=True)
    assert params == DeflateParams()
    for is_server in (True, False):
        deflater = MessageDeflater(params, is_server)
        inflater = MessageInflater(params, not is_server)
        assert not deflater.stateless
        message = chat_message(1)
        first = deflater.compress(message)
        second = deflater.compress(message)
        assert first is not None
        assert second is not None
        assert len(second) < len(first) // 10  # the window was carried over (7.2.3.2)
        assert inflater.decompress(first, None) == message
        assert inflater.decompress(second, None) == message
        with pytest.raises(DeflateError):  # so a decoder without that window cannot read it
            MessageInflater(params, not is_server).decompress(second, None)


def test_inflate_independent_zlib_streams() -> None:
    # Peer with context takeover, made with plain zlib (Z_SYNC_FLUSH, tail stripped).
    params = DeflateParams()
    inflater = MessageInflater(params, True)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    for i in range(5):
        message = chat_message(i % 2)
        out = c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)
        assert inflater.decompress(out[:-4], None) == message
    # Peer without context takeover.
    inflater = MessageInflater(DeflateParams(client_no_context_takeover=True), True)
    for i in range(3):
        assert inflater.decompress(raw_sync_deflate(chat_message(i)), None) == chat_message(i)


@pytest.mark.parametrize("no_takeover", [False, True])
def test_rfc7692_examples(no_takeover: bool) -> None:
    inflater = MessageInflater(DeflateParams(client_no_context_takeover=no_takeover), True)
    # 7.2.3.1 one compressed block, 7.2.3.3 a stored block, 7.2.3.5 two blocks.
    assert inflater.decompress(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"
    assert inflater.decompress(bytes.fromhex("000500faff48656c6c6f00"), 5) == b"Hello"
    assert inflater.decompress(bytes.fromhex("f248050000 00ffff cac9c90700"), 5) == b"Hello"
    # 7.2.3.4 BFINAL=1 block; with or without the trailing empty block.
    assert inflater.decompress(bytes.fromhex("f348cdc9c907 00 00"), 5) == b"Hello"
    assert inflater.decompress(bytes.fromhex("f348cdc9c907 00"), 5) == b"Hello"
    # After a final block, a kept decompressor is replaced and the next message still works.
    assert inflater.decompress(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"
    # 7.2.3.6 empty message.
    assert inflater.decompress(b"\x00", 0) == b""


def test_rfc7692_shared_window_example() -> None:
    inflater = MessageInflater(DeflateParams(), True)
    assert inflater.decompress(bytes.fromhex("f248cdc9c90700"), None) == b"Hello"
    assert inflater.decompress(bytes.fromhex("f200110000"), None) == b"Hello"  # 7.2.3.2


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # reserved block type
        bytes.fromhex("000500faff48656c"),  # stored block cut short, then LEN/NLEN mismatch
        bytes.fromhex("010100feff") + b"xzz",  # stored BFINAL block, then stray bytes
        bytes.fromhex("f348cdc9c90700") + b"garbage",  # data after the final block
        bytes.fromhex("f200110000"),  # refers back past the start of the stream
    ],
)
@pytest.mark.parametrize("no_takeover", [False, True])
def test_corrupt_stream(payload: bytes, no_takeover: bool) -> None:
    inflater = MessageInflater(DeflateParams(client_no_context_takeover=no_takeover), True)
    with pytest.raises(DeflateError):
        inflater.decompress(payload, 1 << 20)


# --- when not to compress ---------------------------------------------------------------------


def test_threshold() -> None:
    message = b"a" * 300
    assert compress_once(message[:255]) is None
    assert compress_once(message[:256]) is not None
    assert compress_once(message[:10], threshold=0) is not None
    assert compress_once(message, threshold=301) is None
    deflater = MessageDeflater(DeflateParams(), True, threshold=100)
    assert deflater.compress(message[:99]) is None
    payload = deflater.compress(message[:100])
    assert payload is not None
    assert raw_inflate(payload) == message[:100]


def test_ten_percent_rule() -> None:
    noise = os.urandom(4096)
    assert compress_once(noise) is None
    assert compress_once(memoryview(noise)) is None
    assert MessageDeflater(DeflateParams(), True).compress(noise) is None
    assert compress_once(noise[:950] + bytes(50)) is None  # saves ~5%
    payload = compress_once(bytearray(noise[:700] + bytes(300)))  # saves ~30%
    assert payload is not None
    assert raw_inflate(payload) == noise[:700] + bytes(300)


def test_rejected_message_is_forgotten_with_context_takeover() -> None:
    # The peer never sees a message sent plain, so later payloads must not refer to it.
    params = DeflateParams()
    deflater, inflater = MessageDeflater(params, True), MessageInflater(params, False)
    first = chat_message(0)
    payload = deflater.compress(first)
    assert payload is not None
    assert inflater.decompress(payload, None) == first
    noise = os.urandom(2000)
    assert deflater.compress(noise) is None
    echo = noise[:1500] + b"." * 200 + first  # compressible only by referring back to noise
    payload = deflater.compress(echo)
    assert payload is not None
    assert inflater.decompress(payload, None) == echo


# --- caps and zip bombs -----------------------------------------------------------------------


def zip_bomb(megabytes: int) -> bytes:
    """A ~1 KB-per-MB payload of zeros, built without holding its output in memory."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)  # stands alone
    return (chunk * megabytes)[:-4]


def test_zip_bomb_really_inflates_to_100_mb() -> None:
    d = zlib.decompressobj(-15)
    data, total = zip_bomb(100) + TAIL, 0
    while data:
        total += len(d.decompress(data, 1 << 22))
        data = d.unconsumed_tail
    assert total == 100 << 20


@pytest.mark.parametrize("no_takeover", [False, True])
def test_zip_bomb_is_stopped_early(no_takeover: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = zip_bomb(100)
    assert len(bomb) < 200_000
    made: list[Any] = []  # the real decompressors the inflater uses, to read their input left

    def decompressobj(wbits: int) -> Any:
        made.append(real(wbits))
        return made[-1]

    real = zlib.decompressobj
    monkeypatch.setattr(zlib, "decompressobj", decompressobj)
    inflater = MessageInflater(DeflateParams(client_no_context_takeover=no_takeover), True)
    tracemalloc.start()
    try:
        with pytest.raises(DecompressedTooLarge):
            inflater.decompress(bomb, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # zlib stopped at the cap: it read only the input of about 1 MB of the 100 (~1 KB per
    # MB); the rest of the bomb was never inflated.
    consumed = len(bomb) + len(TAIL) - len(made[-1].unconsumed_tail)
    assert consumed < len(bomb) // 50
    assert peak < 8 << 20  # far below 100 MB: nothing more was kept either


@pytest.mark.parametrize("no_takeover", [False, True])
def test_cap_is_exact(no_takeover: bool) -> None:
    params = DeflateParams(client_no_context_takeover=no_takeover)
    for message in (chat_message(3), bytes(5000), b"x" * 256):
        payload = raw_sync_deflate(message)
        assert MessageInflater(params, True).decompress(payload, len(message)) == message
        with pytest.raises(DecompressedTooLarge):
            MessageInflater(params, True).decompress(payload, len(message) - 1)


def test_cap_is_exact_across_messages_with_context_takeover() -> None:
    # Each message ends exactly at the cap: the sync marker must still be consumed each time.
    inflater = MessageInflater(DeflateParams(), True)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    for _ in range(3):
        message = chat_message(4)
        out = c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)
        assert inflater.decompress(memoryview(out[:-4]), len(message)) == message


def test_negative_cap_rejected() -> None:
    with pytest.raises(ValueError):
        MessageInflater(DeflateParams(), True).decompress(b"\x00", -1)


# --- window sizes -----------------------------------------------------------------------------


def test_compress_once_uses_wbits() -> None:
    rng = random.Random(7)
    motif = bytes(rng.randrange(32, 127) for _ in range(300))
    gap = bytes(rng.randrange(32, 127) for _ in range(1000))
    message = motif + gap + motif  # the repeat is ~1300 bytes back: beyond a 512-byte window
    small = compress_once(message, wbits=9, threshold=0)
    large = compress_once(message, wbits=15, threshold=0)
    assert small is not None
    assert large is not None
    assert len(large) < len(small)
    assert raw_inflate(small, wbits=9) == message
    with pytest.raises(zlib.error):
        raw_inflate(large, wbits=9)
    # A deflater uses its negotiated window.
    deflater = MessageDeflater(DeflateParams(server_max_window_bits=9), True, threshold=0)
    assert deflater.window_bits == 9
    assert deflater.compress(message) == small
    with pytest.raises(ValueError):
        compress_once(message, wbits=8)


def test_client_told_to_use_window_8_sends_plain() -> None:
    params = accept_response("permessage-deflate; client_max_window_bits=8")
    assert params is not None
    assert params.client_max_window_bits == 8
    assert MessageDeflater(params, False).compress(bytes(10_000)) is None
    # The server direction is unaffected.
    payload = compress_once(chat_message())
    assert payload is not None
    assert MessageInflater(params, False).decompress(payload, None) == chat_message()


def test_inflater_with_window_8_reads_small_window_streams() -> None:
    params = accept_response(
        "permessage-deflate; server_max_window_bits=8", server_max_window_bits=8
    )
    assert params is not None
    message = chat_message(2)
    payload = compress_once(message, wbits=9)
    assert payload is not None
    assert MessageInflater(params, False).decompress(payload, None) == message


def test_compress_once_is_thread_safe() -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(200):
                message = chat_message(seed * 1000 + i) * 8
                payload = compress_once(message)
                assert payload is not None
                assert raw_inflate(payload) == message
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
