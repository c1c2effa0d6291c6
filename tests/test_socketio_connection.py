"""One client's Socket.IO state: namespaces, events, acks, attachments, v4 differences."""

from __future__ import annotations

import pytest

from smartsocket.protocol.socketio.connection import (
    AckReceived,
    ConnectRequested,
    EventReceived,
    NamespaceLeft,
    SocketIOConnection,
)
from smartsocket.protocol.socketio.errors import AttachmentError, SocketIOPacketError
from smartsocket.protocol.socketio.socketio import ConnectRequest, encode_event


def joined(protocol: int = 5, namespace: str = "/") -> SocketIOConnection:
    conn = SocketIOConnection(protocol=protocol)
    text = "0" if namespace == "/" else f"0{namespace},"
    [req] = conn.receive(text)
    assert isinstance(req, ConnectRequested)
    conn.accept(namespace, "S1")
    return conn


def test_connect_with_auth_accept_then_events_and_acks() -> None:
    conn = SocketIOConnection()
    assert conn.open_frames() == ()
    [req] = conn.receive('0{"token":"abc"}')
    assert req == ConnectRequested(ConnectRequest("/", {"token": "abc"}))
    assert conn.accept("/", "S1", pid="P1").text == b'0{"sid":"S1","pid":"P1"}'
    assert conn.namespaces == frozenset({"/"})
    assert conn.receive('212["move",3,4]') == [EventReceived("/", "move", (3, 4), 12)]
    assert conn.receive('2["chat","hi"]') == [EventReceived("/", "chat", "hi", None)]
    assert conn.receive('2["bare"]') == [EventReceived("/", "bare", None, None)]
    assert conn.receive("37[]") == [AckReceived("/", 7, None)]
    assert conn.receive('38["a","b"]') == [AckReceived("/", 8, ("a", "b"))]


def test_binary_event_with_attachments() -> None:
    conn = joined()
    enc = encode_event("up", ("name", b"\x00\x01"), ack_id=4)
    assert conn.receive(enc.text.decode()) == []
    assert conn.buffered == 0
    assert conn.receive(enc.frames[1].payload) == [
        EventReceived("/", "up", ("name", b"\x00\x01"), 4)
    ]
    assert conn.receive('61-5[{"_placeholder":true,"num":0}]') == []
    assert conn.receive(b"zz") == [AckReceived("/", 5, b"zz")]


def test_wrong_attachment_count_is_a_parse_error() -> None:
    conn = joined()
    conn.receive('52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    conn.receive(b"1")
    assert conn.buffered == 1
    with pytest.raises(AttachmentError):
        conn.receive('2["next"]')


def test_refused_connect_leaves_the_session_usable() -> None:
    conn = SocketIOConnection()
    [req] = conn.receive("0/admin,")
    assert req == ConnectRequested(ConnectRequest("/admin", {}))
    # unknown namespace: the caller refuses, as Socket.IO does
    refused = conn.refuse("/admin", "Invalid namespace")
    assert refused.text == b'4/admin,{"message":"Invalid namespace"}'
    assert conn.namespaces == frozenset()
    [again] = conn.receive("0/admin,")  # it may try again
    assert isinstance(again, ConnectRequested)


@pytest.mark.parametrize(
    "text",
    ['2["x"]', "3/other,1[]", "1/other,", '4{"message":"x"}', '4/chat,{"message":"x"}'],
)
def test_packets_for_namespaces_not_joined_and_client_connect_error(text: str) -> None:
    with pytest.raises(SocketIOPacketError):
        joined(namespace="/chat").receive(text)


def test_second_connect_is_refused() -> None:
    conn = joined()
    with pytest.raises(SocketIOPacketError):
        conn.receive("0")
    pending = SocketIOConnection()
    pending.receive("0")
    with pytest.raises(SocketIOPacketError):
        pending.receive("0")  # while the first awaits the application


def test_client_and_server_leave() -> None:
    conn = joined(namespace="/chat")
    assert conn.receive("1/chat,") == [NamespaceLeft("/chat")]
    assert conn.namespaces == frozenset()
    conn2 = joined()
    leave = conn2.leave("/")
    assert leave is not None and leave.text == b"1"
    assert conn2.leave("/") is None


def test_protocol_v4_implicit_default_namespace_and_query_auth() -> None:
    conn = SocketIOConnection(protocol=4)
    [opened] = conn.open_frames()
    assert opened.text == b"0"
    assert conn.receive("0") == []  # tolerated, as the v4 reference did
    assert conn.receive('2["hi",1]') == [EventReceived("/", "hi", 1, None)]
    [req] = conn.receive("0/admin?token=abc,")
    assert req == ConnectRequested(ConnectRequest("/admin", {"token": "abc"}))
    assert conn.accept("/admin", "ignored").text == b"0/admin,"
    assert conn.refuse("/x", "Invalid namespace").text == b'4/x,"Invalid namespace"'


PLAIN_CASES = [
    '2["move",3,4]', '212["move",3,4]', '2["bare"]', '20["x",{"a":[1,2]}]', "37[]",
    '38["a","b"]', '3007["a"]', '29007199254740991["x"]',
]
# Not plain, or invalid: receive() decides (other namespaces, binary, bad ids or payloads).
NOT_PLAIN = [
    '2/admin,["x"]', '51-["x",{"_placeholder":true,"num":0}]', "3[]", "2[]", "2[1]",
    '2["connect"]', '29007199254740992["x"]', '212345678901234567["x"]', '2["x"', "2{}",
    '2["x"]junk', "0", "1", '4{"message":"x"}', "", '2 ["x"]',
]


@pytest.mark.parametrize("text", PLAIN_CASES)
def test_receive_plain_is_receive(text: str) -> None:
    conn = joined()
    [event] = joined().receive(text)
    assert conn.receive_plain(text) == event
    assert conn.receive_plain("4" + text, 1) == event  # in its Engine.IO message


# Digits that are not ASCII ("²", Arabic-Indic one) make no ack id.
@pytest.mark.parametrize("text", [*NOT_PLAIN, '2\u00b2["x"]', '2\u0661["x"]', '2"["x"]'])
def test_receive_plain_leaves_the_rest_to_receive(text: str) -> None:
    assert joined().receive_plain(text) is None
    assert joined().receive_plain("4" + text, 1) is None


def test_receive_plain_only_in_a_joined_root_and_between_packets() -> None:
    assert SocketIOConnection().receive_plain('2["x"]') is None  # "/" not joined: an error
    conn = joined()
    assert conn.receive('51-["x",{"_placeholder":true,"num":0}]') == []
    assert conn.receive_plain('2["x"]') is None  # attachments awaited: an error
    with pytest.raises(AttachmentError):
        conn.receive('2["x"]')
