"""Property-based round trips of the Socket.IO core (hypothesis, derandomized): every payload
and packet we encode decodes to what was encoded; random text never raises anything but our
own errors."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smartsocket.protocol.socketio.engineio import (
    Packet,
    PacketType,
    decode_payload,
    decode_payload_v3,
    encode_payload,
    encode_payload_v3,
    message_frame,
)
from smartsocket.protocol.socketio.errors import EngineIOError
from smartsocket.protocol.socketio.socketio import (
    BinaryReassembler,
    args_to_data,
    decode,
    encode_ack,
    encode_event,
)

PROPS = settings(derandomize=True, max_examples=300, deadline=None)

# Text messages as Socket.IO would send them (any Unicode but the record separator).
texts = st.text(st.characters(blacklist_characters="\x1e", blacklist_categories=("Cs",)))
messages = st.lists(st.one_of(texts, st.binary()), min_size=1, max_size=8)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.text(max_size=20),
    st.binary(max_size=8),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.text(min_size=1, max_size=10).filter(
    lambda n: n not in {"connect", "connect_error", "disconnect", "disconnecting",
                        "newListener", "removeListener"}
)
namespaces = st.sampled_from(["/", "/admin", "/a/b"])


def _expected(data: list[str | bytes]) -> list[Packet]:
    return [Packet(PacketType.MESSAGE, d) for d in data]


@PROPS
@given(messages)
def test_v4_payload_round_trip(data: list[str | bytes]) -> None:
    frames = [message_frame(d) for d in data]
    assert decode_payload(encode_payload(frames)) == _expected(data)


@PROPS
@given(st.lists(st.one_of(st.text(st.characters(blacklist_categories=("Cs",))), st.binary()),
                min_size=1, max_size=8))
def test_v3_payload_round_trip(data: list[str | bytes]) -> None:
    frames = [message_frame(d) for d in data]
    assert decode_payload_v3(encode_payload_v3(frames)) == _expected(data)


def _reassemble(frames: Any) -> Any:
    r = BinaryReassembler(max_attachments=100)
    out = r.feed_text(frames[0].payload[1:].decode())
    for frame in frames[1:]:
        out = r.feed_binary(frame.payload)
    assert out is not None and not r.pending
    return out


@PROPS
@given(
    names,
    st.lists(json_values, max_size=4),
    namespaces,
    st.one_of(st.none(), st.integers(0, 2**53 - 1)),
)
def test_event_round_trip(name: str, args: list[Any], namespace: str, ack_id: int | None) -> None:
    data = args_to_data(args)
    packet = _reassemble(encode_event(name, data, namespace=namespace, ack_id=ack_id).frames)
    assert packet.namespace == namespace and packet.id == ack_id
    assert packet.data[0] == name
    assert args_to_data(packet.data[1:]) == data


@PROPS
@given(st.lists(json_values, max_size=4), st.integers(0, 2**53 - 1))
def test_ack_round_trip(args: list[Any], ack_id: int) -> None:
    result = args_to_data(args)
    packet = _reassemble(encode_ack(ack_id, result).frames)
    assert packet.id == ack_id
    assert args_to_data(packet.data) == result


@PROPS
@given(st.text(max_size=40))
def test_random_text_raises_only_our_errors(text: str) -> None:
    with contextlib.suppress(EngineIOError):
        decode(text)
    for body in (text.encode(), b"\x00" + text.encode()):
        with contextlib.suppress(EngineIOError):
            decode_payload(body)
        with contextlib.suppress(EngineIOError):
            decode_payload_v3(body)
