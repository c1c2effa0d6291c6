"""The Engine.IO session state machine with a fake clock: handshake, heartbeat, polling,
upgrade, close, connect timeout."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from smartsocket.protocol.socketio.engineio import (
    OutFrame,
    PacketType,
    decode_payload_v3,
    message_frame,
)
from smartsocket.protocol.socketio.errors import (
    PacketError,
    PayloadTooLarge,
    PollingConflict,
    UnknownSession,
    UpgradeRefused,
)
from smartsocket.protocol.socketio.session import (
    POLLING,
    WEBSOCKET,
    AnswerPoll,
    Closed,
    CloseProbe,
    CloseReason,
    Deliver,
    EngineOptions,
    EngineSession,
    State,
    Upgraded,
    WriteProbe,
    WriteWebSocket,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OPTS = EngineOptions(
    ping_interval=25, ping_timeout=20, max_payload=100, upgrade_timeout=10, connect_timeout=45
)


def make(transport: str = POLLING, eio: int = 4, **kw: object) -> tuple[EngineSession, Clock]:
    clock = Clock()
    opts = dataclasses.replace(OPTS, **kw)  # type: ignore[arg-type]
    return EngineSession("sid1", transport=transport, options=opts, clock=clock, eio=eio), clock


def body(actions: list[object]) -> bytes:
    polls = [a for a in actions if isinstance(a, AnswerPoll)]
    assert len(polls) == 1, actions
    return polls[0].body


def test_polling_handshake() -> None:
    s, _ = make()
    assert s.open() == []  # buffered until the handshake GET drains it
    b = body(s.get())
    assert b[:1] == b"0"
    assert msgspec.json.decode(b[1:]) == {
        "sid": "sid1",
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 100,
    }


def test_websocket_handshake_offers_no_upgrade() -> None:
    s, _ = make(WEBSOCKET)
    [write] = s.open()
    assert isinstance(write, WriteWebSocket)
    assert msgspec.json.decode(write.frames[0].payload[1:])["upgrades"] == []


def test_get_waits_then_is_answered_by_send() -> None:
    s, _ = make()
    s.open()
    s.get()
    assert s.get() == []  # nothing queued: hold the request
    actions = s.send((message_frame("40"), message_frame(b"\x01")))
    assert actions == [AnswerPoll(b"440\x1ebAQ==")]
    assert s.buffered_bytes == 0
    s.send((message_frame("a"),))
    assert s.buffered_bytes == 2
    assert body(s.get()) == b"4a"  # a GET drains everything queued


def test_second_concurrent_get_closes_the_session() -> None:
    s, _ = make()
    s.open()
    s.get()
    s.get()  # pending
    with pytest.raises(PollingConflict) as info:
        s.get()
    assert info.value.status == 400
    # the held GET ends with the close packet
    assert info.value.actions == (AnswerPoll(b"1"), Closed(CloseReason.TRANSPORT_ERROR))
    assert s.state is State.CLOSED
    with pytest.raises(UnknownSession):
        s.get()
    with pytest.raises(UnknownSession):
        s.post(b"4a")


def test_post_delivers_messages_and_answers_v3_pings() -> None:
    s, _ = make()
    assert s.post(b"440\x1ebAQ==\x1e6") == [Deliver("40"), Deliver(b"\x01")]


def test_post_over_max_payload_is_413_and_closes() -> None:
    s, _ = make()
    with pytest.raises(PayloadTooLarge) as info:
        s.post(b"4" + b"x" * 100)
    assert info.value.status == 413
    assert info.value.actions == (Closed(CloseReason.TRANSPORT_ERROR),)
    assert s.state is State.CLOSED


def test_malformed_post_closes_with_parse_error() -> None:
    s, _ = make()
    with pytest.raises(PacketError) as info:
        s.post(b"9")
    assert s.state is State.CLOSED
    assert info.value.actions == (Closed(CloseReason.PARSE_ERROR),)


def test_packet_limit_per_post() -> None:
    s, _ = make(max_packets_per_post=2)
    assert len(s.post(b"4a\x1e4b")) == 2
    with pytest.raises(PacketError):
        s.post(b"4a\x1e4b\x1e4c")


def test_client_close_packet_in_post() -> None:
    s, _ = make()
    s.open()
    s.get()  # handshake
    s.get()  # held
    actions = s.post(b"4a\x1e1\x1e4b")  # "b" after the close is never read
    assert actions == [Deliver("a"), AnswerPoll(b"1"), Closed(CloseReason.TRANSPORT_CLOSE)]


def test_heartbeat_v4_ping_then_pong() -> None:
    s, clock = make(WEBSOCKET)
    s.socketio_connected()
    s.open()
    assert s.next_deadline() == 1025.0
    clock.now = 1024.9
    assert s.tick() == []
    clock.now = 1025.0
    assert s.tick() == [WriteWebSocket((OutFrame(b"2"),))]
    assert s.next_deadline() == 1045.0  # pong due within ping_timeout
    clock.now = 1030.0
    assert s.receive("3") == []
    assert s.next_deadline() == 1055.0  # next ping a ping_interval after the pong
    clock.now = 1055.0
    assert s.tick() == [WriteWebSocket((OutFrame(b"2"),))]


def test_heartbeat_v4_pong_timeout() -> None:
    s, clock = make(WEBSOCKET)
    s.socketio_connected()
    clock.now = 1025.0
    s.tick()
    clock.now = 1044.9
    s.receive("4still here")  # messages do not count as a pong
    assert s.tick() == []
    clock.now = 1045.0
    assert s.tick() == [Closed(CloseReason.PING_TIMEOUT)]
    assert s.next_deadline() is None
    assert s.tick() == []


def test_heartbeat_v4_ping_over_polling_answers_the_pending_get() -> None:
    s, clock = make()
    s.socketio_connected()
    s.open()
    s.get()
    s.get()
    clock.now = 1025.0
    assert s.tick() == [AnswerPoll(b"2")]
    assert s.post(b"3") == []


def test_heartbeat_in_the_wrong_direction_is_a_transport_error() -> None:
    s, _ = make(WEBSOCKET)
    assert s.receive("2") == [Closed(CloseReason.TRANSPORT_ERROR)]  # v4 clients do not ping
    s3, _ = make(WEBSOCKET, eio=3)
    assert s3.receive("3") == [Closed(CloseReason.TRANSPORT_ERROR)]  # v3 clients do not pong


def test_heartbeat_v3_client_pings() -> None:
    s, clock = make(WEBSOCKET, eio=3)
    s.socketio_connected()
    assert s.next_deadline() == 1045.0  # ping_interval + ping_timeout of silence
    clock.now = 1020.0
    assert s.receive("2") == [WriteWebSocket((OutFrame(b"3"),))]
    assert s.receive("2probe") == [WriteWebSocket((OutFrame(b"3probe"),))]
    assert s.next_deadline() == 1065.0
    clock.now = 1064.0
    assert s.tick() == []
    clock.now = 1065.0
    assert s.tick() == [Closed(CloseReason.PING_TIMEOUT)]


def test_v3_polling_payloads() -> None:
    s, _ = make(eio=3)
    s.open()
    [opened] = decode_payload_v3(body(s.get()))
    assert opened.type is PacketType.OPEN
    assert "maxPayload" not in msgspec.json.decode(opened.data)
    assert s.post(b"1:22:4a") == [Deliver("a")]  # the ping's pong waits for a GET
    assert body(s.get()) == b"1:3"
    s.send((message_frame(b"\x01"),))
    assert body(s.get()) == b"6:b4AQ=="


def test_connect_timeout() -> None:
    s, clock = make(WEBSOCKET)
    s.open()
    clock.now = 1044.0
    s.receive("3")  # heartbeat alone does not keep an unconnected client
    clock.now = 1045.0
    assert s.tick() == [Closed(CloseReason.CONNECT_TIMEOUT)]


def test_connect_timeout_cancelled_by_socketio_connect() -> None:
    s, clock = make(WEBSOCKET)
    s.socketio_connected()
    clock.now = 1025.0
    s.tick()
    s.receive("3")
    clock.now = 1049.0
    assert s.tick() == []


def test_upgrade_sequence() -> None:
    s, _clock = make()
    s.socketio_connected()
    s.open()
    s.get()  # handshake
    s.send((message_frame("40"),))
    assert body(s.get()) == b"440"
    assert s.get() == []  # the client's next GET is held
    assert s.probe_opened() == []
    # 2probe -> 3probe on the probe, and a noop ends the pending GET so the client can pause
    actions = s.receive_probe("2probe")
    assert actions == [WriteProbe((OutFrame(b"3probe"),)), AnswerPoll(b"6")]
    # a message sent while the client pauses waits for the new transport
    s.send((message_frame('2["x"]'),))
    actions = s.receive_probe("5")
    assert actions == [Upgraded(), WriteWebSocket((OutFrame(b'42["x"]'),))]
    assert s.transport == WEBSOCKET
    assert s.send((message_frame("a"),)) == [WriteWebSocket((OutFrame(b"4a"),))]
    with pytest.raises(PacketError):
        s.get()
    with pytest.raises(PacketError):
        s.post(b"4a")
    with pytest.raises(UpgradeRefused):
        s.probe_opened()
    assert s.receive("4hi") == [Deliver("hi")]


def test_get_during_upgrade_is_not_held() -> None:
    s, _ = make()
    s.open()
    s.get()
    s.probe_opened()
    assert s.receive_probe("2probe") == [WriteProbe((OutFrame(b"3probe"),))]
    assert body(s.get()) == b"6"
    s.send((message_frame("q"),))
    assert body(s.get()) == b"4q"  # queued data goes out on the GET before the upgrade


def test_upgrade_with_pending_get_at_upgrade_packet() -> None:
    s, _ = make()
    s.open()
    s.get()
    s.probe_opened()
    s.receive_probe("2probe")
    s.send((message_frame("m"),))
    assert body(s.get()) == b"4m"
    assert body(s.get()) == b"6"  # not held while upgrading
    assert s.receive_probe("5") == [Upgraded()]



def test_upgrade_timeout_keeps_polling() -> None:
    s, clock = make()
    s.socketio_connected()
    s.open()
    s.get()
    s.probe_opened()
    assert s.next_deadline() == 1010.0
    clock.now = 1010.0
    assert s.tick() == [CloseProbe()]
    assert s.transport == POLLING
    assert s.receive_probe("5") == [CloseProbe()]  # too late
    assert s.probe_opened() == []  # a new attempt may start


def test_bad_probe_fails_the_upgrade() -> None:
    s, _ = make()
    s.open()
    s.get()
    s.get()
    s.probe_opened()
    assert s.receive_probe("2probe")[0] == WriteProbe((OutFrame(b"3probe"),))
    assert s.receive_probe("4hello") == [CloseProbe()]
    assert s.transport == POLLING
    assert s.state is State.OPEN


def test_probe_lost_and_refused() -> None:
    s, _ = make()
    s.probe_opened()
    with pytest.raises(UpgradeRefused):
        s.probe_opened()  # one probe at a time
    assert s.probe_lost() == []
    assert s.probe_lost() == []
    s.probe_opened()
    ws, _ = make(WEBSOCKET)
    with pytest.raises(UpgradeRefused):
        ws.probe_opened()
    no_upgrades, _ = make(upgrades=())
    with pytest.raises(UpgradeRefused):
        no_upgrades.probe_opened()


def test_server_close_over_polling_waits_for_a_get() -> None:
    s, _clock = make()
    s.open()
    s.get()
    s.send((message_frame("41"),))  # DISCONNECT first
    assert s.close() == []
    assert s.state is State.CLOSING
    assert s.send((message_frame("late"),)) == []
    assert s.post(b"4ignored") == []
    assert s.close() == []
    actions = s.get()
    assert actions == [AnswerPoll(b"441\x1e1"), Closed(CloseReason.FORCED_CLOSE)]


def test_server_close_over_polling_with_pending_get() -> None:
    s, _ = make()
    s.open()
    s.get()
    s.get()
    assert s.close(CloseReason.CONNECT_TIMEOUT) == [
        AnswerPoll(b"1"),
        Closed(CloseReason.CONNECT_TIMEOUT),
    ]


def test_server_close_over_polling_gives_up_without_a_get() -> None:
    s, clock = make()
    s.socketio_connected()
    s.open()
    s.get()
    s.close()
    clock.now = 1019.0
    assert s.tick() == []
    clock.now = 1020.0
    assert s.tick() == [Closed(CloseReason.FORCED_CLOSE)]


def test_server_close_over_websocket() -> None:
    s, _ = make(WEBSOCKET)
    assert s.close() == [Closed(CloseReason.FORCED_CLOSE)]
    assert s.send((message_frame("x"),)) == []
    assert s.connection_lost() == []


def test_transport_losses() -> None:
    s, _ = make(WEBSOCKET)
    assert s.connection_lost() == [Closed(CloseReason.TRANSPORT_CLOSE)]
    p, _ = make()
    p.open()
    p.get()
    assert p.get_aborted() == []  # no GET pending
    p.get()
    assert p.get_aborted() == [Closed(CloseReason.TRANSPORT_ERROR)]  # nobody to answer


def test_websocket_packets() -> None:
    s, _ = make(WEBSOCKET)
    assert s.receive(b"\x01\x02") == [Deliver(b"\x01\x02")]
    assert s.receive("6") == []
    assert s.receive("0") == []  # open and upgrade on the transport: ignored (the reference)
    assert s.receive("5") == []
    assert s.receive("") == [Closed(CloseReason.PARSE_ERROR)]
    s3, _ = make(WEBSOCKET)
    assert s3.receive("1") == [Closed(CloseReason.TRANSPORT_CLOSE)]
    with pytest.raises(UnknownSession):
        s3.receive("4x")


def test_unknown_transport() -> None:
    with pytest.raises(ValueError):
        EngineSession("s", transport="flashsocket", options=OPTS, clock=Clock())


def test_slow_polling_consumer_is_dropped() -> None:
    s, _ = make(max_buffered=200)
    s.open()
    s.get()  # the handshake
    assert s.send((message_frame("x" * 199),)) == []  # 200 bytes: at the limit
    assert s.send((message_frame("y"),)) == [Closed(CloseReason.SLOW_CONSUMER)]
    # a held GET takes whatever is queued, however large
    s2, _ = make(max_buffered=200)
    s2.open()
    s2.get()
    s2.get()
    s2.send((message_frame("z" * 50),))
    s2.get()
    assert s2.send((message_frame("z" * 500),)) == [AnswerPoll(b"4" + b"z" * 500)]
    unlimited, _ = make(max_buffered=None)
    unlimited.open()
    assert unlimited.send((message_frame("w" * 5000),)) == []


def test_is_message_is_receive_for_text_messages_only() -> None:
    s, _ = make(WEBSOCKET)
    assert s.is_message('42["a"]')  # its data is what receive() delivers:
    assert s.receive('42["a"]') == [Deliver('2["a"]')]  # what the fast path stands for
    assert s.is_message("4")
    for other in ("3", "2", "1", "6", ""):
        assert not s.is_message(other)  # receive() handles (or refuses) these
    s.connection_lost()
    assert not s.is_message('42["a"]')  # closed: receive() raises UnknownSession


def test_is_message_keeps_a_v3_session_alive() -> None:
    s, clock = make(WEBSOCKET, eio=3)
    s.socketio_connected()
    clock.now += 40
    assert s.is_message("4x")
    assert s.next_deadline() == clock.now + 45  # silence counts from this message
    clock.now += 44
    assert s.tick() == []
