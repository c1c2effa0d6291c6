"""Message-level RFC 6455 duties that picows leaves to us (DESIGN.md, "what we must do").

picows parses frames, unmasks them, answers pings and checks control frames. This module turns
data frames into whole messages and enforces the rest: RSV bits, fragment sequencing, UTF-8 of
fragmented text (unfragmented text is checked when it is decoded), the assembled message size,
and close-code validity. Sans-I/O: the transport feeds frames and acts on ``FrameError``.

What a fragmented message costs is bounded by its bytes and its number of fragments: fragments
are appended to one ``bytearray`` as they come (no object per fragment: 1-byte continuation
frames once cost ~30 bytes of Python objects per payload byte), and a message may be split
into at most ``max_fragments`` frames, empty ones included (they cost CPU and no bytes: without
a count an endless run of them was never refused). Over either limit: close 1009 (RFC 6455
7.4.1, "a message that is too big for it to process").
"""

from __future__ import annotations

import codecs
from typing import Final

from smartsocket.protocol.codes import CloseCode, is_valid_close_code

OP_CONTINUATION: Final = 0
OP_TEXT: Final = 1
OP_BINARY: Final = 2
OP_CLOSE: Final = 8


class FrameError(Exception):
    """The peer broke the protocol; close the connection with ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Message:
    """A whole data message. ``compressed`` means RSV1 was set: inflate before decoding."""

    __slots__ = ("binary", "compressed", "payload")

    def __init__(self, payload: bytes, binary: bool, compressed: bool) -> None:
        self.payload = payload
        self.binary = binary
        self.compressed = compressed


class MessageAssembler:
    """Assembles fragmented messages and validates data frames for one connection."""

    __slots__ = (
        "_binary", "_buffer", "_compressed", "_deflate", "_fragments", "_max_fragments",
        "_max_size", "_utf8",
    )

    def __init__(
        self, *, max_size: int | None, deflate: bool = False, max_fragments: int | None = None
    ) -> None:
        self._max_size = max_size
        self._max_fragments = max_fragments
        self._deflate = deflate  # permessage-deflate was negotiated: RSV1 allowed on first frames
        self._buffer: bytearray | None = None  # the open message so far; None: no message open
        self._fragments = 0
        self._binary = False
        self._compressed = False
        self._utf8: codecs.IncrementalDecoder | None = None

    @property
    def in_message(self) -> bool:
        return self._buffer is not None

    @property
    def buffered(self) -> int:
        """Payload bytes held for the open message (the only memory it takes)."""
        return len(self._buffer) if self._buffer is not None else 0

    @property
    def fragments(self) -> int:
        """Frames received so far for the open message."""
        return self._fragments

    def feed(
        self, opcode: int, fin: bool, rsv1: bool, rsv2: bool, rsv3: bool, payload: bytes
    ) -> Message | None:
        """Take one data frame; return the message it completes, if any."""
        if rsv2 or rsv3:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "RSV2/RSV3 set without an extension")
        if opcode == OP_CONTINUATION:
            return self._continue(fin, rsv1, payload)
        if opcode != OP_TEXT and opcode != OP_BINARY:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"unexpected opcode {opcode}")
        if self._buffer is not None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "new message while a fragmented one is open")
        if rsv1 and not self._deflate:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "RSV1 set but permessage-deflate is off")
        # RFC 7692 6.1: with deflate, max_size applies to the inflated message; the inflater
        # enforces that, here we can only bound the compressed bytes.
        self._check_size(len(payload))
        binary = opcode == OP_BINARY
        if fin:
            return Message(payload, binary, rsv1)
        self._buffer = bytearray(payload)
        self._fragments = 1
        self._binary = binary
        self._compressed = rsv1
        if not binary and not rsv1:
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
            self._check_utf8(payload, final=False)
        return None

    def _continue(self, fin: bool, rsv1: bool, payload: bytes) -> Message | None:
        buffer = self._buffer
        if buffer is None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
        if rsv1:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "RSV1 set on a continuation frame")
        self._fragments += 1
        if self._max_fragments is not None and self._fragments > self._max_fragments:
            raise FrameError(
                CloseCode.MESSAGE_TOO_BIG, f"message split into more than {self._max_fragments} "
                "frames",
            )
        self._check_size(len(buffer) + len(payload))
        buffer += payload
        if self._utf8 is not None:
            self._check_utf8(payload, final=fin)
        if not fin:
            return None
        message = Message(bytes(buffer), self._binary, self._compressed)
        self._buffer = None
        self._fragments = 0
        self._utf8 = None
        return message

    def _check_size(self, size: int) -> None:
        if self._max_size is not None and size > self._max_size:
            raise FrameError(
                CloseCode.MESSAGE_TOO_BIG, f"message exceeds {self._max_size} bytes"
            )

    def _check_utf8(self, payload: bytes, *, final: bool) -> None:
        # Incremental: a code point may be split across fragments; fail as early as possible.
        assert self._utf8 is not None
        try:
            self._utf8.decode(payload, final)
        except UnicodeDecodeError as exc:
            raise FrameError(CloseCode.INVALID_TEXT, "text message is not valid UTF-8") from exc


def check_close_payload(payload: bytes) -> tuple[int, str]:
    """Validate a received close frame's payload; return (code, reason) to echo back.

    An empty close carries no code (RFC 6455 7.1.5): we answer 1000.
    """
    if not payload:
        return CloseCode.NORMAL, ""
    if len(payload) == 1:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(CloseCode.INVALID_TEXT, "close reason is not valid UTF-8") from exc
    return code, reason
