"""cluster/messages.py without a network: every message kind is its own tagged Struct, and
survives the envelope round trip as that type."""

from __future__ import annotations

import msgspec
import pytest

from smartsocket.cluster import messages as m

KINDS: list[m.Body] = [
    m.Broadcast("room", b"[\"e\",1]", False, None, True, ["a.1"]),
    m.PresenceDelta("room", "a.1", True, {"name": "x"}, b"payload", 3),
    m.Heartbeat(2, 1.0, 1700000000.0, {"connections": 1}),
    m.Bye(),
    m.ServerEvent("reload", m.pack({"x": 1})),
    m.Reply(7, ok=False, error="no_socket", message="no socket"),
    m.ListSockets(1, "room"),
    m.ListPresence(2, "room"),
    m.CallSocket(3, "a.1", "question", m.pack(1), False, 2.5),
    m.JoinRoom(4, "a.1", "room"),
    m.LeaveRoom(5, "a.1", "room"),
    m.DisconnectSocket(6, "a.1", 4000, "bye", reply_to="b"),
    m.SendTo("a.1", b"[\"e\",1]", False),
    m.SessionMoved("a.1"),
    m.SessionGone("a.1"),
    m.SendToUser("alice", b"[\"e\",1]", False),
    m.DisconnectUser(8, "alice", 4000, "banned"),
]


@pytest.mark.parametrize("body", KINDS, ids=lambda body: type(body).__name__)
def test_each_kind_round_trips_as_its_type(body: m.Body) -> None:
    env = m.decode_envelope(m.encode("node1", body))
    assert (env.v, env.src) == (m.VERSION, "node1")
    decoded = m.decode_body(env)
    assert type(decoded) is type(body) and decoded == body


def test_tags_are_distinct() -> None:
    tags = [msgspec.inspect.type_info(type(body)).tag for body in KINDS]
    assert len(set(tags)) == len(tags)


def test_another_version_is_refused_before_the_body_is_read() -> None:
    data = msgspec.msgpack.encode(m.Envelope(m.VERSION + 1, "node2", msgspec.Raw(b"\xc0")))
    with pytest.raises(m.VersionMismatch):
        m.decode_body(m.decode_envelope(data))


def test_an_unknown_kind_is_invalid() -> None:
    raw = msgspec.msgpack.encode(["zz", 1])
    data = msgspec.msgpack.encode(m.Envelope(m.VERSION, "node2", msgspec.Raw(raw)))
    with pytest.raises(msgspec.ValidationError):
        m.decode_body(m.decode_envelope(data))


@pytest.mark.parametrize("src", ["a", "n0de_Id1", "x" * 31, "y" * 32, "z" * 300])
def test_a_nodes_messages_start_with_its_head_and_no_other_nodes_do(src: str) -> None:
    """A node drops its own messages back from the broker by ``head(src)``, undecoded: every
    message it encodes starts with it, a message of a node whose id extends or prefixes it
    does not."""
    for body in KINDS:
        data = m.encode(src, body)
        assert data.startswith(m.head(src))
        assert m.decode_envelope(data).src == src
        for other in (src + "a", src[:-1] or "b", "Q" + src[1:]):
            assert not m.encode(other, body).startswith(m.head(src))
