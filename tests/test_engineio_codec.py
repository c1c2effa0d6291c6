"""Engine.IO packets and polling payloads (v4 and v3), without a network.

Fixtures are the example encodings of socket.io/docs/v4/engine-io-protocol."""

from __future__ import annotations

import base64

import msgspec
import pytest

from smartsocket.errors import SmartSocketError
from smartsocket.protocol import socketio as sio_pkg
from smartsocket.protocol.socketio import engineio
from smartsocket.protocol.socketio.engineio import (
    Handshake,
    OutFrame,
    Packet,
    PacketType,
    decode_binary,
    decode_payload,
    decode_payload_v3,
    decode_text,
    encode_payload,
    encode_payload_v3,
    message_frame,
    text_frame,
    websocket_payload,
)
from smartsocket.protocol.socketio.errors import (
    EngineErrorCode,
    EngineIOError,
    PacketError,
    PayloadTooLarge,
    UnknownSession,
    error_body,
)


def test_handshake_is_the_documented_json() -> None:
    hs = Handshake("lv_VI97HAXpY6yYWAAAC", ("websocket",), 25000, 5000, 1000000)
    frame = hs.encode()
    assert frame == OutFrame(
        b'0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,'
        b'"pingTimeout":5000,"maxPayload":1000000}'
    )
    body = msgspec.json.decode(hs.encode(eio=3).payload[1:])
    assert "maxPayload" not in body  # v3 handshakes have no maxPayload
    assert body["pingTimeout"] == 5000


@pytest.mark.parametrize(
    ("text", "packet"),
    [
        ("0", Packet(PacketType.OPEN)),
        ("1", Packet(PacketType.CLOSE)),
        ("2", Packet(PacketType.PING)),
        ("2probe", Packet(PacketType.PING, "probe")),
        ("3probe", Packet(PacketType.PONG, "probe")),
        ("4hello", Packet(PacketType.MESSAGE, "hello")),
        ("5", Packet(PacketType.UPGRADE)),
        ("6", Packet(PacketType.NOOP)),
    ],
)
def test_text_packets(text: str, packet: Packet) -> None:
    assert decode_text(text) == packet
    assert text_frame(packet.type, packet.data).payload == text.encode()


@pytest.mark.parametrize("text", ["", "7", "x", "a4"])
def test_bad_packet_type(text: str) -> None:
    with pytest.raises(PacketError):
        decode_text(text)


def test_binary_frames_v4_and_v3() -> None:
    # v4: a binary frame is a message's raw bytes; v3 prefixes the type as a byte.
    assert decode_binary(b"\x01\x02\x03") == Packet(PacketType.MESSAGE, b"\x01\x02\x03")
    assert decode_binary(b"\x04\x01\x02", eio=3) == Packet(PacketType.MESSAGE, b"\x01\x02")
    with pytest.raises(PacketError):
        decode_binary(b"\x02\x01", eio=3)
    with pytest.raises(PacketError):
        decode_binary(b"", eio=3)
    frame = message_frame(b"\x01\x02")
    assert frame.binary and websocket_payload(frame) == b"\x01\x02"
    assert websocket_payload(frame, eio=3) == b"\x04\x01\x02"
    assert websocket_payload(message_frame("hi"), eio=3) == b"4hi"
    assert Packet(PacketType.MESSAGE, b"x").binary and not Packet(PacketType.MESSAGE, "x").binary


def test_v4_payload_spec_example_mixed_text_and_binary() -> None:
    # Spec "HTTP long-polling": "4hello\x1ebAQIDBA==" is the text "hello" and bytes 1 2 3 4.
    body = b"4hello\x1ebAQIDBA=="
    packets = decode_payload(body)
    assert packets == [
        Packet(PacketType.MESSAGE, "hello"),
        Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04"),
    ]
    assert encode_payload([message_frame("hello"), message_frame(b"\x01\x02\x03\x04")]) == body
    assert decode_payload(b"2\x1e4\xc3\xa9t\xc3\xa9\x1e6") == [
        Packet(PacketType.PING),
        Packet(PacketType.MESSAGE, "été"),
        Packet(PacketType.NOOP),
    ]


@pytest.mark.parametrize(
    "body",
    [b"", b"4a\x1e", b"\xff\xfe", b"bAQ=\x1ebnot base64!", b"9x", b"4a\x1e\x1e4b"],
)
def test_v4_payload_malformed(body: bytes) -> None:
    with pytest.raises(PacketError):
        decode_payload(body)


def test_v4_payload_packet_limit() -> None:
    assert len(decode_payload(b"\x1e".join([b"4a"] * 3), max_packets=3)) == 3
    with pytest.raises(PacketError):
        decode_payload(b"\x1e".join([b"4a"] * 4), max_packets=3)


def test_v3_payload_string_form() -> None:
    # Spec v3 "Payload": <length>:<packet>, length in characters; binary as b4 + base64.
    body = encode_payload_v3([message_frame("hello"), message_frame(b"\x01\x02\x03\x04")])
    assert body == b"6:4hello10:b4AQIDBA=="
    assert decode_payload_v3(body) == [
        Packet(PacketType.MESSAGE, "hello"),
        Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04"),
    ]
    assert decode_payload_v3(b"1:2") == [Packet(PacketType.PING)]


def test_v3_lengths_count_utf16_code_units() -> None:
    # JavaScript counts an emoji (U+1F600) as 2: "4😀" has length 3.
    body = encode_payload_v3([message_frame("😀"), message_frame("é")])
    assert body == "3:4😀2:4é".encode()
    assert decode_payload_v3(body) == [
        Packet(PacketType.MESSAGE, "😀"),
        Packet(PacketType.MESSAGE, "é"),
    ]
    with pytest.raises(PacketError):
        decode_payload_v3("2:4😀".encode())  # a length that splits a surrogate pair


@pytest.mark.parametrize(
    "body",
    [b"", b"x:4a", b"4:4a", b"0:", b"2:4a3", b"2:b3AQ==", b"5:b4!!!", b"99999999999:4", b"2:7a"],
)
def test_v3_payload_malformed(body: bytes) -> None:
    with pytest.raises(PacketError):
        decode_payload_v3(body)


def test_v3_payload_packet_limit() -> None:
    assert len(decode_payload_v3(b"2:4a2:4b", max_packets=2)) == 2
    with pytest.raises(PacketError):
        decode_payload_v3(b"2:4a2:4b2:4c", max_packets=2)


def _xhr2(kind: int, packet: bytes) -> bytes:
    return bytes([kind, *(int(d) for d in str(len(packet))), 255]) + packet


def test_v3_payload_xhr2_binary_form() -> None:
    body = _xhr2(0, "4été".encode()) + _xhr2(1, b"\x04\x01\x02") + _xhr2(0, b"2")
    assert decode_payload_v3(body) == [
        Packet(PacketType.MESSAGE, "été"),
        Packet(PacketType.MESSAGE, b"\x01\x02"),
        Packet(PacketType.PING),
    ]
    with pytest.raises(PacketError):
        decode_payload_v3(body, max_packets=2)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\xff4a",  # no length digits
        b"\x00\x0a\xff4",  # a "digit" over 9
        b"\x00\x05\xff4a",  # shorter than announced
        b"\x00\x01",  # no 255 terminator
        b"\x01\x02\xff\x02\x01",  # binary packet that is not a message
        b"\x00\x00\xff",  # empty packet
    ],
)
def test_v3_xhr2_malformed(body: bytes) -> None:
    with pytest.raises(PacketError):
        decode_payload_v3(body)


def test_binary_payload_round_trip_all_byte_values() -> None:
    data = bytes(range(256))
    assert decode_payload(encode_payload([message_frame(data)])) == [
        Packet(PacketType.MESSAGE, data)
    ]
    assert encode_payload([message_frame(data)]) == b"b" + base64.b64encode(data)


def test_errors_are_in_the_tree_and_say_how_to_answer() -> None:
    assert issubclass(EngineIOError, SmartSocketError)
    assert PayloadTooLarge("x").status == 413
    assert PacketError("x").status == 400 and PacketError("x").code == EngineErrorCode.BAD_REQUEST
    assert UnknownSession("x").code == EngineErrorCode.UNKNOWN_SID
    assert error_body(EngineErrorCode.UNKNOWN_SID) == b'{"code":1,"message":"Session ID unknown"}'
    assert msgspec.json.decode(error_body(EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION)) == {
        "code": 5,
        "message": "Unsupported protocol version",
    }


def test_all_matches_exports() -> None:
    assert sorted(sio_pkg.__all__) == sio_pkg.__all__
    for name in sio_pkg.__all__:
        assert hasattr(sio_pkg, name), name
    assert engineio.SEPARATOR == b"\x1e"
