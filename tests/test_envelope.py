"""Protocol v1 envelopes, without a network."""

from __future__ import annotations

import msgspec
import pytest

from smartsocket.protocol import envelope
from smartsocket.protocol.envelope import (
    AckErrorInfo,
    AckReply,
    EnvelopeError,
    Event,
    InvalidUTF8,
    decode,
    encode_ack,
    encode_ack_error,
    encode_error,
    encode_event,
    needs_binary,
)


def test_round_trips() -> None:
    assert decode(encode_event("chat", {"t": "hi"}), binary=False) == Event("chat", {"t": "hi"})
    assert decode(encode_event("chat", 1, 5), binary=False) == Event("chat", 1, 5)
    assert decode(encode_ack(5, [1]), binary=False) == AckReply(5, [1])
    assert decode(encode_ack_error(5, "c", "m"), binary=False) == AckReply(
        5, None, AckErrorInfo("c", "m")
    )
    assert decode(encode_event("b", b"\x00", binary=True), binary=True) == Event(
        "b", b"\x00", None, binary=True
    )
    assert decode(b'["ping"]', binary=False) == Event("ping", None)


def test_wire_format_is_the_documented_one() -> None:
    assert encode_event("a", {"b": 1}) == b'["a",{"b":1}]'
    assert encode_event("a", None, 3) == b'["a",null,3]'
    assert encode_ack(3, "r") == b'[3,"r"]'
    assert encode_ack_error(3, "nope", "why") == b'[3,null,{"code":"nope","message":"why"}]'
    assert encode_error("rate_limited", "slow down", event="chat", retry_after=1.5) == (
        b'["$error",{"code":"rate_limited","message":"slow down","event":"chat","retryAfter":1.5}]'
    )


@pytest.mark.parametrize(
    "raw",
    [b"nope", b"{}", b"[]", b'[1,2,3,4]', b'["a",1,2,3,4]', b'["a",1,null,null]', b"[true,1]",
     b'["a",1,0]', b'["a",1,-1]',
     b'["a",1,1.5]', b'["a",1,9007199254740992]', b'["",1]', b"[5]", b'[5,null,"x"]',
     b'[5,null,{"code":1}]', b"null"],
)
def test_bad_envelopes(raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode(raw, binary=False)
    assert info.value.code == "bad_message"


def test_bad_envelope_keeps_the_ack_id_when_it_is_valid() -> None:
    with pytest.raises(EnvelopeError) as info:
        decode(b'["",1,9]', binary=False)
    assert info.value.ack_id == 9


@pytest.mark.parametrize("raw", [b'["a\xff"]', b'["a",1]\xff', b'\xed\xa0\x80'])
def test_invalid_utf8_is_its_own_error(raw: bytes) -> None:
    with pytest.raises(InvalidUTF8):
        decode(raw, binary=False)


def test_bad_msgpack() -> None:
    with pytest.raises(EnvelopeError):
        decode(b"\xc1", binary=True)
    with pytest.raises(EnvelopeError):
        decode(msgspec.msgpack.encode({"a": 1}), binary=True)


def test_needs_binary() -> None:
    assert needs_binary(b"x") and needs_binary({"a": b"x"}) and needs_binary([1, bytearray()])
    assert not needs_binary({"a": "x"}) and not needs_binary(None) and not needs_binary([[b"x"]])


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("data", [None, 1, "x", {"a": [1, 2]}, b"\x00\xff", [None] * 20])
def test_with_meta_adds_the_4th_item_to_an_encoded_event(data: object, binary: bool) -> None:
    if isinstance(data, bytes) and not binary:
        return
    meta = ["room", "epoch", 2**40]
    spliced = envelope.with_meta(envelope.encode_event("ev", data, binary=binary), meta,
                                 binary=binary)
    assert spliced == envelope.encode_event("ev", data, binary=binary, meta=meta)
    packet = envelope.decode(spliced, binary=binary)
    assert isinstance(packet, envelope.Event)
    assert packet.meta == meta and packet.data == data and packet.ack_id is None
