"""Engine.IO packets and HTTP long-polling payloads (protocol v4, and the v3 differences).

Sans-I/O: the I/O layer hands in WebSocket frames and POST bodies, and writes what the
encoders return. Spec: socket.io/docs/v4/engine-io-protocol ("Packet encoding", "Payload").

    packet:  <type digit>[<data>]             0 open, 1 close, 2 ping, 3 pong, 4 message,
                                              5 upgrade, 6 noop         e.g. "4hello", "2probe"
    binary over WebSocket:  v4: the raw bytes (always a message); v3: b"\\x04" + the bytes
    polling payload v4:     packets joined by "\\x1e"; a binary message is "b" + base64
                            e.g. "4hello\\x1ebAQIDBA=="
    polling payload v3:     "<length>:<packet>" repeated; length counts UTF-16 code units (the
                            reference is JavaScript); a binary message is "b4" + base64.
                            XHR2 clients may POST the binary form: per packet one byte 0 (text)
                            or 1 (binary), the length as bytes 0-9, 255, then the packet.

Outgoing packets are ``OutFrame``s built once (a broadcast shares them between sessions):
a text frame holds the whole encoded packet (b"42[...]"), a binary frame the raw message.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import msgspec

from smartsocket.protocol.socketio.errors import PacketError

SEPARATOR: Final = b"\x1e"  # v4 payload record separator (ASCII RS): never in JSON text
_SEPARATOR_STR: Final = "\x1e"
PROBE: Final = "probe"
TEXT_CONTENT_TYPE: Final = "text/plain; charset=UTF-8"
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


class PacketType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded Engine.IO packet; ``data`` is bytes only for a binary message."""

    type: PacketType
    data: str | bytes = ""

    @property
    def binary(self) -> bool:
        return isinstance(self.data, bytes)


class OutFrame(msgspec.Struct, frozen=True, gc=False):
    """One encoded packet to send. ``binary``: ``payload`` is a binary message's raw bytes;
    otherwise it is the whole text packet, type digit included."""

    payload: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Handshake:
    """The open packet's JSON (spec "Handshake"); times in milliseconds. v3 has no maxPayload."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval: int
    ping_timeout: int
    max_payload: int

    def encode(self, eio: int = 4) -> OutFrame:
        body: dict[str, object] = {
            "sid": self.sid,
            "upgrades": list(self.upgrades),
            "pingInterval": self.ping_interval,
            "pingTimeout": self.ping_timeout,
        }
        if eio >= 4:
            body["maxPayload"] = self.max_payload
        return OutFrame(b"0" + msgspec.json.encode(body))


_TYPES: Final = tuple(PacketType)  # by value: indexing is cheaper than the enum call

# Frames every session sends: built once.
PING_FRAME: Final = OutFrame(b"2")
PONG_FRAME: Final = OutFrame(b"3")
PROBE_PONG_FRAME: Final = OutFrame(b"3probe")
NOOP_FRAME: Final = OutFrame(b"6")
CLOSE_FRAME: Final = OutFrame(b"1")


def text_frame(type_: PacketType, data: str | bytes = b"") -> OutFrame:
    raw = data.encode() if isinstance(data, str) else data
    return OutFrame(b"%d" % type_ + raw)


def message_frame(data: str | bytes) -> OutFrame:
    """A message packet: text for ``str``, binary for ``bytes``."""
    if isinstance(data, str):
        return OutFrame(b"4" + data.encode())
    return OutFrame(bytes(data), binary=True)


def decode_text(text: str) -> Packet:
    """Decodes a text packet (a WebSocket text frame, or one record of a polling payload)."""
    if not text:
        raise PacketError("empty packet")
    digit = text[0]
    if not "0" <= digit <= "6":
        raise PacketError(f"unknown packet type {digit!r}")
    return Packet(_TYPES[ord(digit) - 48], text[1:])


def decode_binary(data: bytes, eio: int = 4) -> Packet:
    """Decodes a WebSocket binary frame: v4 frames are a message's raw bytes; v3 frames start
    with the packet type as a byte (only a message may be binary)."""
    if eio >= 4:
        return Packet(PacketType.MESSAGE, bytes(data))
    if not data or data[0] != PacketType.MESSAGE:
        raise PacketError("v3 binary frame is not a message")
    return Packet(PacketType.MESSAGE, bytes(data[1:]))


def websocket_payload(frame: OutFrame, eio: int = 4) -> bytes:
    """The bytes of the WebSocket frame for ``frame`` (text frames: as they are)."""
    if frame.binary and eio < 4:
        return b"\x04" + frame.payload
    return frame.payload


def _decode_utf8(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise PacketError("payload is not UTF-8") from None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PacketError("invalid base64 in binary packet") from None


# -- v4 payload ---------------------------------------------------------------------------


def encode_payload(frames: list[OutFrame]) -> bytes:
    """A v4 polling payload (the body of a GET response)."""
    parts = [b"b" + base64.b64encode(f.payload) if f.binary else f.payload for f in frames]
    return SEPARATOR.join(parts)


def decode_payload(body: bytes, *, max_packets: int | None = None) -> list[Packet]:
    """Decodes a v4 polling payload (a POST body). ``max_packets`` bounds the records (the
    body size is bounded by maxPayload before this is called)."""
    records = _decode_utf8(body).split(_SEPARATOR_STR)
    if max_packets is not None and len(records) > max_packets:
        raise PacketError(f"more than {max_packets} packets in one payload")
    packets = []
    for record in records:
        if record[:1] == "b":
            packets.append(Packet(PacketType.MESSAGE, _b64decode(record[1:])))
        else:
            packets.append(decode_text(record))
    return packets


# -- v3 payload ---------------------------------------------------------------------------


def _utf16_len(text: str) -> int:
    # JavaScript's String.length: code points above U+FFFF count twice (surrogate pairs).
    return len(text) + len(_ASTRAL.findall(text))


def encode_payload_v3(frames: list[OutFrame]) -> bytes:
    """A v3 polling payload in the string form (every v3 client reads it; binary as b4+base64)."""
    out = []
    for frame in frames:
        text = (
            "b4" + base64.b64encode(frame.payload).decode()
            if frame.binary
            else frame.payload.decode()
        )
        out.append(f"{_utf16_len(text)}:{text}")
    return "".join(out).encode()


def _packet_v3(text: str) -> Packet:
    if text[:1] == "b":
        if text[1:2] != "4":
            raise PacketError("v3 binary packet is not a message")
        return Packet(PacketType.MESSAGE, _b64decode(text[2:]))
    return decode_text(text)


def _take_utf16(text: str, start: int, units: int) -> int:
    """The index in ``text`` after ``units`` UTF-16 code units from ``start``."""
    i = start
    while units > 0 and i < len(text):
        units -= 2 if text[i] > "\uffff" else 1
        i += 1
    if units != 0:
        raise PacketError("v3 payload length does not match its packet")
    return i


def decode_payload_v3(body: bytes, *, max_packets: int | None = None) -> list[Packet]:
    """Decodes a v3 POST body: the string form, or the XHR2 binary form (first byte 0 or 1)."""
    if body[:1] in (b"\x00", b"\x01"):
        return _decode_binary_payload_v3(body, max_packets)
    text = _decode_utf8(body)
    fast = _ASTRAL.search(text) is None  # code points are code units: slice directly
    packets: list[Packet] = []
    i = 0
    while i < len(text):
        colon = text.find(":", i)
        digits = text[i:colon] if colon >= 0 else ""
        if not digits.isdigit() or not digits.isascii() or len(digits) > 10:
            raise PacketError("v3 payload: bad length prefix")
        length = int(digits)
        end = colon + 1 + length if fast else _take_utf16(text, colon + 1, length)
        if end > len(text) or length == 0:
            raise PacketError("v3 payload length does not match its packet")
        packets.append(_packet_v3(text[colon + 1 : end]))
        if max_packets is not None and len(packets) > max_packets:
            raise PacketError(f"more than {max_packets} packets in one payload")
        i = end
    if not packets:
        raise PacketError("empty payload")
    return packets


def _decode_binary_payload_v3(body: bytes, max_packets: int | None) -> list[Packet]:
    packets: list[Packet] = []
    i = 0
    while i < len(body):
        kind = body[i]
        end_digits = body.find(b"\xff", i + 1)
        digits = body[i + 1 : end_digits] if end_digits > 0 else b""
        if kind > 1 or not digits or len(digits) > 10 or any(d > 9 for d in digits):
            raise PacketError("v3 binary payload: bad length prefix")
        length = int("".join(str(d) for d in digits))
        start = end_digits + 1
        chunk = body[start : start + length]
        if len(chunk) != length or length == 0:
            raise PacketError("v3 payload length does not match its packet")
        if kind == 0:  # a text packet, UTF-8
            packets.append(decode_text(_decode_utf8(chunk)))
        else:
            packets.append(decode_binary(chunk, eio=3))
        if max_packets is not None and len(packets) > max_packets:
            raise PacketError(f"more than {max_packets} packets in one payload")
        i = start + length
    return packets
