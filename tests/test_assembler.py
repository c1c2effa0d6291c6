"""The message assembler, one duty of DESIGN.md "what we must do" at a time (no network)."""

from __future__ import annotations

import pytest

from smartsocket.protocol.assembler import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_TEXT,
    FrameError,
    Message,
    MessageAssembler,
    check_close_payload,
)
from smartsocket.protocol.codes import CloseCode


def feed(
    a: MessageAssembler, opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False,
    rsv2: bool = False, rsv3: bool = False,
) -> Message | None:
    return a.feed(opcode, fin, rsv1, rsv2, rsv3, payload)


def refused(code: CloseCode, a: MessageAssembler, opcode: int, payload: bytes,
            **flags: bool) -> FrameError:
    with pytest.raises(FrameError) as info:
        feed(a, opcode, payload, **flags)
    assert info.value.code == code
    return info.value


# 1. RSV bits


@pytest.mark.parametrize("bit", ["rsv2", "rsv3"])
@pytest.mark.parametrize("deflate", [False, True])
def test_rsv2_and_rsv3_are_always_refused(bit: str, deflate: bool) -> None:
    a = MessageAssembler(max_size=None, deflate=deflate)
    refused(CloseCode.PROTOCOL_ERROR, a, OP_TEXT, b"x", **{bit: True})


def test_rsv1_needs_permessage_deflate() -> None:
    refused(CloseCode.PROTOCOL_ERROR, MessageAssembler(max_size=None), OP_BINARY, b"x", rsv1=True)
    message = feed(MessageAssembler(max_size=None, deflate=True), OP_TEXT, b"\x00", rsv1=True)
    assert message is not None and message.compressed and not message.binary


def test_rsv1_only_on_the_first_frame_of_a_message() -> None:
    a = MessageAssembler(max_size=None, deflate=True)
    assert feed(a, OP_TEXT, b"ab", fin=False, rsv1=True) is None
    refused(CloseCode.PROTOCOL_ERROR, a, OP_CONTINUATION, b"cd", rsv1=True)


def test_a_compressed_fragmented_message_stays_compressed_and_skips_utf8() -> None:
    """UTF-8 of a compressed message is checked after inflating, not on deflate bytes."""
    a = MessageAssembler(max_size=None, deflate=True)
    assert feed(a, OP_TEXT, b"\xff\xfe", fin=False, rsv1=True) is None
    message = feed(a, OP_CONTINUATION, b"\xff")
    assert message is not None and message.compressed and message.payload == b"\xff\xfe\xff"


# 2. fragments


def test_fragments_are_joined_and_keep_the_first_opcode() -> None:
    a = MessageAssembler(max_size=None)
    assert feed(a, OP_BINARY, b"ab", fin=False) is None
    assert a.in_message and a.buffered == 2 and a.fragments == 1
    assert feed(a, OP_CONTINUATION, b"", fin=False) is None
    message = feed(a, OP_CONTINUATION, b"cd")
    assert message is not None
    assert (message.payload, message.binary, message.compressed) == (b"abcd", True, False)
    assert not a.in_message and a.buffered == 0 and a.fragments == 0


def test_an_unfragmented_message_passes_through() -> None:
    message = feed(MessageAssembler(max_size=None), OP_TEXT, b"hi")
    assert message is not None and (message.payload, message.binary) == (b"hi", False)


def test_a_continuation_without_an_open_message_is_refused() -> None:
    refused(CloseCode.PROTOCOL_ERROR, MessageAssembler(max_size=None), OP_CONTINUATION, b"x")


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_a_new_message_while_one_is_open_is_refused(opcode: int) -> None:
    a = MessageAssembler(max_size=None)
    feed(a, OP_TEXT, b"a", fin=False)
    refused(CloseCode.PROTOCOL_ERROR, a, opcode, b"b")


@pytest.mark.parametrize("opcode", [3, 7, 11, 15])
def test_reserved_data_opcodes_are_refused(opcode: int) -> None:
    refused(CloseCode.PROTOCOL_ERROR, MessageAssembler(max_size=None), opcode, b"")


def test_the_number_of_fragments_is_capped_empty_ones_included() -> None:
    a = MessageAssembler(max_size=None, max_fragments=3)
    feed(a, OP_BINARY, b"", fin=False)
    feed(a, OP_CONTINUATION, b"", fin=False)
    feed(a, OP_CONTINUATION, b"", fin=False)
    error = refused(CloseCode.MESSAGE_TOO_BIG, a, OP_CONTINUATION, b"", fin=False)
    assert "more than 3 frames" in error.reason


def test_the_next_message_starts_fresh_after_a_fragmented_one() -> None:
    a = MessageAssembler(max_size=None, max_fragments=2)
    feed(a, OP_TEXT, b"a", fin=False)
    feed(a, OP_CONTINUATION, b"b")
    feed(a, OP_BINARY, b"c", fin=False)
    message = feed(a, OP_CONTINUATION, b"d")
    assert message is not None and message.binary and message.payload == b"cd"


# 3. UTF-8, incrementally across fragments


def test_a_code_point_split_across_fragments_is_accepted() -> None:
    text = "h\u00e9llo \u20ac \U0001f600".encode()
    a = MessageAssembler(max_size=None)
    pieces = [text[i:i + 1] for i in range(len(text))]  # every code point split
    for piece in pieces[:-1]:
        assert feed(a, OP_CONTINUATION if a.in_message else OP_TEXT, piece, fin=False) is None
    message = feed(a, OP_CONTINUATION, pieces[-1])
    assert message is not None and message.payload.decode() == "h\u00e9llo \u20ac \U0001f600"


def test_invalid_utf8_fails_on_the_fragment_that_carries_it() -> None:
    """Fail fast: the message is still open when the bad byte arrives."""
    a = MessageAssembler(max_size=None)
    feed(a, OP_TEXT, b"ok", fin=False)
    refused(CloseCode.INVALID_TEXT, a, OP_CONTINUATION, b"\xc0\xaf", fin=False)


def test_invalid_utf8_in_the_first_fragment_fails_at_once() -> None:
    refused(CloseCode.INVALID_TEXT, MessageAssembler(max_size=None), OP_TEXT, b"\xff", fin=False)


def test_a_code_point_left_incomplete_at_the_end_fails() -> None:
    a = MessageAssembler(max_size=None)
    feed(a, OP_TEXT, b"\xe2\x82", fin=False)  # the start of a euro sign: fine so far
    refused(CloseCode.INVALID_TEXT, a, OP_CONTINUATION, b"")


def test_binary_fragments_are_not_utf8_checked() -> None:
    a = MessageAssembler(max_size=None)
    feed(a, OP_BINARY, b"\xff", fin=False)
    message = feed(a, OP_CONTINUATION, b"\xfe")
    assert message is not None and message.payload == b"\xff\xfe"


def test_unfragmented_text_is_left_to_the_decoder() -> None:
    """A whole text frame is checked when it is decoded (one pass instead of two)."""
    message = feed(MessageAssembler(max_size=None), OP_TEXT, b"\xff")
    assert message is not None and message.payload == b"\xff"


# 4. size, fragments included


def test_a_single_frame_over_the_limit_is_refused() -> None:
    a = MessageAssembler(max_size=4)
    assert feed(a, OP_BINARY, b"1234") is not None
    refused(CloseCode.MESSAGE_TOO_BIG, a, OP_BINARY, b"12345")


def test_the_assembled_size_counts_not_only_each_frame() -> None:
    a = MessageAssembler(max_size=4)
    feed(a, OP_BINARY, b"12", fin=False)
    feed(a, OP_CONTINUATION, b"34", fin=False)
    error = refused(CloseCode.MESSAGE_TOO_BIG, a, OP_CONTINUATION, b"5")
    assert "4 bytes" in error.reason


def test_no_limit_means_none() -> None:
    a = MessageAssembler(max_size=None)
    message = feed(a, OP_BINARY, b"x" * 100_000)
    assert message is not None and len(message.payload) == 100_000


# 5. close payload rules


def test_an_empty_close_is_answered_with_1000() -> None:
    assert check_close_payload(b"") == (CloseCode.NORMAL, "")


def test_a_one_byte_close_payload_is_a_protocol_error() -> None:
    with pytest.raises(FrameError) as info:
        check_close_payload(b"\x03")
    assert info.value.code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4000, 4999])
def test_valid_close_codes_are_echoed_with_their_reason(code: int) -> None:
    payload = code.to_bytes(2, "big") + "bye \u00e9".encode()
    assert check_close_payload(payload) == (code, "bye \u00e9")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_codes_are_a_protocol_error(code: int) -> None:
    with pytest.raises(FrameError) as info:
        check_close_payload(code.to_bytes(2, "big"))
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_a_close_reason_that_is_not_utf8_is_1007() -> None:
    with pytest.raises(FrameError) as info:
        check_close_payload(b"\x03\xe8\xff")
    assert info.value.code == CloseCode.INVALID_TEXT
