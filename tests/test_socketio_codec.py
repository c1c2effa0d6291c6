"""Socket.IO packets, attachments and the argument mapping, without a network.

Fixtures are the example encodings of socket.io/docs/v4/socket-io-protocol."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest

from smartsocket.protocol.envelope import ENCODE_ERRORS
from smartsocket.protocol.socketio.engineio import OutFrame
from smartsocket.protocol.socketio.errors import AttachmentError, SocketIOPacketError
from smartsocket.protocol.socketio.socketio import (
    BinaryReassembler,
    ConnectRequest,
    PacketKind,
    SioPacket,
    args_to_data,
    connect_request,
    data_to_args,
    decode,
    encode,
    encode_ack,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_event,
    plain_ack,
)

C, D, E, A, CE, BE, BA = (
    PacketKind.CONNECT,
    PacketKind.DISCONNECT,
    PacketKind.EVENT,
    PacketKind.ACK,
    PacketKind.CONNECT_ERROR,
    PacketKind.BINARY_EVENT,
    PacketKind.BINARY_ACK,
)

# (encoded text, packet) from the spec's "Examples" (text packets, both directions).
SPEC_TEXT = [
    ("0", SioPacket(C)),
    ("0/admin,", SioPacket(C, "/admin")),
    ("0{\"token\":\"123\"}", SioPacket(C, data={"token": "123"})),
    ("0/admin,{\"token\":\"123\"}", SioPacket(C, "/admin", {"token": "123"})),
    ("0{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}", SioPacket(C, data={"sid": "oSO0OpakMV_3jnilAAAA"})),
    ("4{\"message\":\"Not authorized\"}", SioPacket(CE, data={"message": "Not authorized"})),
    ("1/admin,", SioPacket(D, "/admin")),
    ("2[\"foo\"]", SioPacket(E, data=["foo"])),
    ("2/admin,[\"bar\"]", SioPacket(E, "/admin", ["bar"])),
    ("212[\"foo\"]", SioPacket(E, data=["foo"], id=12)),
    ("3/admin,13[\"bar\"]", SioPacket(A, "/admin", ["bar"], 13)),
]


@pytest.mark.parametrize(("text", "packet"), SPEC_TEXT)
def test_spec_examples_decode(text: str, packet: SioPacket) -> None:
    assert decode(text) == packet


@pytest.mark.parametrize(("text", "packet"), SPEC_TEXT)
def test_spec_examples_encode(text: str, packet: SioPacket) -> None:
    encoded = encode(packet.kind, packet.namespace, packet.data, packet.id)
    assert encoded.frames == (OutFrame(b"4" + text.encode()),)
    assert encoded.text == text.encode()


def test_binary_event_spec_example() -> None:
    # 51-["baz",{"_placeholder":true,"num":0}] + <Buffer 01 02 03 04>
    enc = encode_event("baz", b"\x01\x02\x03\x04")
    assert enc.frames == (
        OutFrame(b'451-["baz",{"_placeholder":true,"num":0}]'),
        OutFrame(b"\x01\x02\x03\x04", binary=True),
    )
    r = BinaryReassembler()
    assert r.feed_text('51-["baz",{"_placeholder":true,"num":0}]') is None
    assert r.pending
    assert r.feed_binary(b"\x01\x02\x03\x04") == SioPacket(
        BE, data=["baz", b"\x01\x02\x03\x04"], attachments=1
    )
    assert not r.pending and r.buffered == 0


def test_websocket_frames_per_engine_version() -> None:
    enc = encode_event("baz", b"\x01")
    text = b'451-["baz",{"_placeholder":true,"num":0}]'
    assert enc.websocket_frames() == ((text, False), (b"\x01", True))
    assert enc.websocket_frames(3) == ((text, False), (b"\x04\x01", True))
    assert enc.websocket_frames()[0][0] is enc.frames[0].payload  # shared, not copied


def test_binary_event_two_attachments_namespace() -> None:
    # 52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]
    enc = encode_event("baz", (b"\x01\x02", b"\x03\x04"), namespace="/admin")
    assert enc.text == (
        b'52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    )
    r = BinaryReassembler()
    assert r.feed_text(enc.text.decode()) is None
    assert r.feed_binary(b"\x01\x02") is None
    assert r.buffered == 2
    packet = r.feed_binary(b"\x03\x04")
    assert packet == SioPacket(
        BE, "/admin", ["baz", b"\x01\x02", b"\x03\x04"], attachments=2
    )


def test_binary_ack_spec_example() -> None:
    # 61-15["bar",{"_placeholder":true,"num":0}] + <Buffer 01 02 03 04>
    enc = encode_ack(15, ("bar", b"\x01\x02\x03\x04"))
    assert enc.text == b'61-15["bar",{"_placeholder":true,"num":0}]'
    r = BinaryReassembler()
    r.feed_text(enc.text.decode())
    assert r.feed_binary(b"\x01\x02\x03\x04") == SioPacket(
        BA, data=["bar", b"\x01\x02\x03\x04"], id=15, attachments=1
    )


def test_nested_binary_and_placeholder_order() -> None:
    data = {"a": [1, {"img": bytearray(b"\x00")}], "b": memoryview(b"\x01"), "c": "x"}
    enc = encode_event("up", data, ack_id=3)
    assert len(enc.frames) == 3
    r = BinaryReassembler()
    r.feed_text(enc.text.decode())
    r.feed_binary(enc.frames[1].payload)
    packet = r.feed_binary(enc.frames[2].payload)
    assert packet is not None
    assert packet.data == ["up", {"a": [1, {"img": b"\x00"}], "b": b"\x01", "c": "x"}]
    assert packet.id == 3


def test_encoding_without_bytes_keeps_values_and_is_shared() -> None:
    payload = {"x": [1, 2], "y": ("t", None)}
    enc = encode_event("move", payload)
    assert enc.frames == (OutFrame(b'42["move",{"x":[1,2],"y":["t",null]}]'),)
    # One encoding, the same frame objects for every receiver of a broadcast.
    assert enc.frames[0] is enc.frames[0]


def test_binary_packet_with_zero_attachments_is_accepted() -> None:
    r = BinaryReassembler()
    assert r.feed_text('50-["a",1]') == SioPacket(BE, data=["a", 1])
    assert r.feed_text('2["b"]') == SioPacket(E, data=["b"])
    with pytest.raises(AttachmentError):
        r.feed_text('50-["a",{"_placeholder":true,"num":0}]')


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "x",
        "2",  # event without payload
        "2[]",  # event without a name
        "2[1]",  # name that is not a string
        '2["connect"]',  # reserved event name
        "2{}",
        "2[\"a\"",  # bad JSON
        '2["a"]garbage',
        "3[1]",  # ack without id
        "312{}",  # ack payload not an array
        "0[1]",  # CONNECT payload not an object
        "05{}",  # CONNECT with an id
        "1{}",  # DISCONNECT with a payload
        "4",  # CONNECT_ERROR without payload
        "4[1]",
        "212345678901234567890[\"a\"]",  # ack id too long
        "29007199254740992[\"a\"]",  # over 2**53 - 1
    ],
)
def test_malformed_packets(text: str) -> None:
    with pytest.raises(SocketIOPacketError):
        decode(text)


@pytest.mark.parametrize("text", ['5["a"]', '5x-["a"]', '51["a"]', '611-["a"]'])
def test_binary_without_count(text: str) -> None:
    with pytest.raises(AttachmentError):
        decode(text)


def test_attachment_limit() -> None:
    decode('53-["a",1]', max_attachments=3)
    with pytest.raises(AttachmentError):
        decode('54-["a",1]', max_attachments=3)
    r = BinaryReassembler(max_attachments=1)
    with pytest.raises(AttachmentError):
        r.feed_text('52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')


def test_attachment_byte_limit() -> None:
    r = BinaryReassembler(max_attachment_bytes=4)
    r.feed_text('52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    r.feed_binary(b"123")
    with pytest.raises(AttachmentError):
        r.feed_binary(b"45")


@pytest.mark.parametrize(
    "text",
    [
        '51-["a",{"_placeholder":true,"num":1}]',  # num out of range
        '51-["a",{"_placeholder":true,"num":-1}]',
        '51-["a",{"_placeholder":true,"num":"0"}]',
        '52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]',  # used twice
        '52-["a",{"_placeholder":true,"num":0}]',  # attachment 1 unused
        '51-["a",1]',  # no placeholder at all
    ],
)
def test_wrong_attachment_references(text: str) -> None:
    r = BinaryReassembler()
    count = int(text[1])
    assert r.feed_text(text) is None
    for _ in range(count - 1):
        r.feed_binary(b"x")
    with pytest.raises(AttachmentError):
        r.feed_binary(b"x")


def test_placeholder_at_the_top_and_lookalikes() -> None:
    # A whole ACK argument list cannot be a placeholder, but a nested dict with extra keys
    # is plain data, not a placeholder.
    r = BinaryReassembler()
    r.feed_text('61-1[{"_placeholder":true,"num":0}]')
    assert r.feed_binary(b"z") == SioPacket(BA, data=[b"z"], id=1, attachments=1)
    look = '2["a",{"_placeholder":true,"num":0,"x":1}]'
    assert decode(look).data == ["a", {"_placeholder": True, "num": 0, "x": 1}]


def test_wrong_attachment_count_text_before_attachments() -> None:
    r = BinaryReassembler()
    r.feed_text('52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    r.feed_binary(b"1")
    with pytest.raises(AttachmentError):
        r.feed_text('2["b"]')  # announced 2, got 1 then a new packet


def test_attachment_without_packet() -> None:
    with pytest.raises(AttachmentError):
        BinaryReassembler().feed_binary(b"x")


def test_deep_nesting_does_not_exhaust_the_stack() -> None:
    # Deep enough for the placeholder walk, within what msgspec decodes.
    text = '51-["a",' + "[" * 500 + '{"_placeholder":true,"num":0}' + "]" * 500 + "]"
    r = BinaryReassembler()
    r.feed_text(text)
    packet = r.feed_binary(b"q")
    assert packet is not None
    node = packet.data[1]
    for _ in range(499):
        node = node[0]
    assert node == [b"q"]
    # Deeper than msgspec allows: a parse error, not a crash.
    with pytest.raises(SocketIOPacketError):
        decode('2["a",' + "[" * 100_000 + "]" * 100_000 + "]")


@pytest.mark.parametrize(
    ("args", "data"),
    [
        ([], None),
        ([1], 1),
        ([None], None),
        ([[1, 2]], [1, 2]),
        ([1, 2], (1, 2)),
        (["a", {"b": 1}, None], ("a", {"b": 1}, None)),
    ],
)
def test_args_to_data(args: list[Any], data: Any) -> None:
    assert args_to_data(args) == data


@pytest.mark.parametrize("data", [1, "s", [1, 2], {"a": 1}, (1, 2), (1, [2], None), b"x"])
def test_data_to_args_round_trip(data: Any) -> None:
    assert args_to_data(data_to_args(data)) == data


def test_multiple_arguments_on_the_wire() -> None:
    # emit("move", 3, 4, ack) from a client; the handler returns ("ok", 7): ack("ok", 7).
    packet = decode('25["move",3,4]')
    assert args_to_data(packet.data[1:]) == (3, 4)
    assert encode_ack(5, ("ok", 7)).text == b'35["ok",7]'
    assert encode_ack(5, None).text == b"35[]"
    assert encode_ack(5, [1, 2]).text == b"35[[1,2]]"  # one list argument
    assert encode_event("n").text == b'2["n"]'


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize(
    "result",
    [None, 1, "s", 1.5, True, 2**64, [1, 2], {"a": [1, None]}, {1: 2}, (), ("ok", 7),
     (1, [2], None), Point(1, 2), "\u00e9\u2028"],
)
def test_plain_ack_is_encode_ack(result: Any) -> None:
    assert plain_ack(5, result) == encode_ack(5, result).frames[0].payload
    assert len(encode_ack(5, result).frames) == 1


@pytest.mark.parametrize(
    "result", [b"x", ("ok", b"x"), [bytearray(b"x")], {"a": memoryview(b"x")}]
)
def test_plain_ack_leaves_attachments_to_encode_ack(result: Any) -> None:
    assert plain_ack(5, result) is None


@pytest.mark.parametrize("bad", [{(1, 2): 3}, {None: 1}, {"a": object()}, object()])
def test_plain_ack_fails_as_encode_ack(bad: Any) -> None:
    with pytest.raises(ENCODE_ERRORS):
        encode_ack(5, bad)
    with pytest.raises(ENCODE_ERRORS):  # raises, or leaves it to encode_ack, which raises
        if plain_ack(5, bad) is None:
            encode_ack(5, bad)


def test_recovery_offset_is_the_last_argument() -> None:
    assert encode_event("chat", "hi", offset="MzI").text == b'2["chat","hi","MzI"]'
    assert encode_event("chat", offset="MzI").text == b'2["chat","MzI"]'


def test_connect_answers_and_errors() -> None:
    assert encode_connect(sid="abc").text == b'0{"sid":"abc"}'
    assert encode_connect("/admin", "abc", pid="p1").text == b'0/admin,{"sid":"abc","pid":"p1"}'
    assert encode_connect("/admin", protocol=4).text == b"0/admin,"
    assert encode_connect_error("Not authorized").text == b'4{"message":"Not authorized"}'
    assert (
        encode_connect_error("no", {"code": 1}, namespace="/a").text
        == b'4/a,{"message":"no","data":{"code":1}}'
    )
    assert encode_connect_error("Invalid namespace", namespace="/x", protocol=4).text == (
        b'4/x,"Invalid namespace"'
    )
    assert encode_disconnect("/admin").text == b"1/admin,"
    assert encode_disconnect().frames == (OutFrame(b"41"),)
    # v4 clients' CONNECT_ERROR payload is a string: decodes too.
    assert decode('4"Invalid namespace"').data == "Invalid namespace"


def test_connect_request_v5_auth_and_recovery() -> None:
    req = connect_request(decode('0/chat,{"token":"t","pid":"P","offset":"O"}'))
    assert req == ConnectRequest("/chat", {"token": "t"}, "P", "O")
    assert connect_request(decode("0")) == ConnectRequest("/", {})
    assert connect_request(decode('0{"pid":1}')) == ConnectRequest("/", {}, None, None)


def test_connect_request_v4_query_in_namespace() -> None:
    packet = decode("0/admin?token=abc&x=,")
    assert packet.namespace == "/admin" and packet.query == "token=abc&x="
    assert connect_request(packet) == ConnectRequest("/admin", {"token": "abc", "x": ""})


def test_namespace_without_trailing_comma() -> None:
    assert decode("1/admin") == SioPacket(D, "/admin")


def test_connect_request_needs_connect() -> None:
    with pytest.raises(SocketIOPacketError):
        connect_request(decode('2["a"]'))


@pytest.mark.parametrize(
    "result", [None, 1, "x", {"a": [1, {"b": None}]}, (1, "two"), [1, 2], b"\x00", {"a": b"1"}]
)
@pytest.mark.parametrize("namespace", ["/", "/admin"])
def test_encode_ack_is_encode(result: object, namespace: str) -> None:
    """Its shortcut for plain acks in "/" builds what ``encode`` builds."""
    assert encode_ack(12, result, namespace=namespace) == encode(
        A, namespace, data_to_args(result), 12
    )
