"""The small sans-I/O pieces of ``protocol/`` the wire tests pass by: the name rule and the
encoders' optional fields."""

from __future__ import annotations

import msgspec
import pytest

from smartsocket.protocol import envelope
from smartsocket.protocol.envelope import EnvelopeError
from smartsocket.protocol.names import check_event, name_problem


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "must be a non-empty string"),
        (7, "must be a non-empty string"),
        (b"chat", "must be a non-empty string"),
        ("x" * 11, "longer than 10 characters"),
        ("a\nb", "control, format or separator"),
        ("\u202eevil", "control, format or separator"),
        ("zero\u200bwidth", "control, format or separator"),
        ("no\u00a0break", "control, format or separator"),
    ],
)
def test_names_that_are_refused_say_why(name: object, problem: str) -> None:
    found = name_problem("room", name, 10)
    assert found is not None and found.startswith("room name") and problem in found


@pytest.mark.parametrize("name", ["chat", "a b", "caf\u00e9", "\u623f\u95f4", "x" * 10, "$x"])
def test_printable_names_pass(name: str) -> None:
    assert name_problem("room", name, 10) is None


def test_no_length_limit_without_max_length() -> None:
    assert name_problem("event", "x" * 10_000) is None


def test_applications_may_not_send_reserved_or_invalid_events() -> None:
    check_event("chat")
    with pytest.raises(ValueError, match="reserved"):
        check_event("$welcome")
    with pytest.raises(ValueError, match="non-empty"):
        check_event("")
    with pytest.raises(ValueError, match="control"):
        check_event("a\tb")


def test_too_deeply_nested_input_is_a_bad_message() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(EnvelopeError):
        envelope.decode(deep, binary=False)


@pytest.mark.parametrize("binary", [False, True])
def test_with_meta_refuses_what_is_not_an_encoded_event(binary: bool) -> None:
    with pytest.raises(ValueError):
        envelope.with_meta(b'{"a": 1}' if not binary else b"\x81\xa1a\x01", {"p": 1},
                           binary=binary)


@pytest.mark.parametrize("binary", [False, True])
def test_ack_errors_carry_retry_after_only_when_given(binary: bool) -> None:
    def decoded(raw: bytes) -> object:
        return msgspec.msgpack.decode(raw) if binary else msgspec.json.decode(raw)

    plain = decoded(envelope.encode_ack_error(3, "busy", "later", binary=binary))
    assert plain == [3, None, {"code": "busy", "message": "later"}]
    timed = decoded(envelope.encode_ack_error(3, "busy", "later", binary=binary,
                                              retry_after=2.5))
    assert timed == [3, None, {"code": "busy", "message": "later", "retryAfter": 2.5}]


def test_error_events_name_the_event_the_id_and_the_wait_when_known() -> None:
    bare = msgspec.json.decode(envelope.encode_error("bad_message", "no"))
    assert bare == ["$error", {"code": "bad_message", "message": "no"}]
    full = msgspec.json.decode(
        envelope.encode_error("rate_limited", "slow", event="chat", ack_id=9, retry_after=1.0)
    )
    assert full == ["$error", {"code": "rate_limited", "message": "slow", "event": "chat",
                               "id": 9, "retryAfter": 1.0}]
