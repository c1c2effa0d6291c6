"""Protocol v1, sans-I/O: envelopes, message assembly, close and error codes."""

from smartsocket.protocol.assembler import FrameError, Message, MessageAssembler
from smartsocket.protocol.codes import CloseCode, ErrorCode, is_valid_close_code
from smartsocket.protocol.envelope import (
    AckErrorInfo,
    AckReply,
    EnvelopeError,
    Event,
    InvalidUTF8,
    Packet,
)

SUBPROTOCOL = "smartsocket.v1"

__all__ = [
    "SUBPROTOCOL",
    "AckErrorInfo",
    "AckReply",
    "CloseCode",
    "EnvelopeError",
    "ErrorCode",
    "Event",
    "FrameError",
    "InvalidUTF8",
    "Message",
    "MessageAssembler",
    "Packet",
    "is_valid_close_code",
]
