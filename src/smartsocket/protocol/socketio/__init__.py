"""The Socket.IO front end's sans-I/O core: Engine.IO v4 (and v3) packets, polling payloads
and session state machine; Socket.IO v5 (and v4) packets, attachments, argument mapping.

No asyncio and no sockets: the server's I/O layer feeds it HTTP bodies and WebSocket frames
and performs the actions it returns. How an I/O layer drives it:

1. Every request to the path: ``check_request(method, query)``; on ``RequestRefused`` answer
   ``e.status`` with ``error_body(e.code)`` (CORS headers on polling; OPTIONS is a preflight).
2. No ``sid``: new ``EngineSession(sid, transport=, options=, clock=, eio=)`` and
   ``SocketIOConnection(protocol=5 if eio == 4 else 4)``; ``session.open()``, then send
   ``connection.open_frames()`` (v4 protocol: ``/`` is joined at once, so authenticate on
   the handshake request's query and call ``session.socketio_connected()``).
3. Polling GET: ``session.get()`` -> answer now if it returns ``AnswerPoll``, else hold the
   request until a later action answers it; ``get_aborted()`` if its connection drops.
   Polling POST: ``session.post(body)`` -> 200 "ok" (text/html). Every ``EngineIOError``:
   perform ``e.actions``, answer ``e.status`` / ``error_body(e.code)``.
4. WebSocket with a ``sid``: ``session.probe_opened()`` (``UpgradeRefused``: close it), its
   frames to ``receive_probe()``; after ``Upgraded`` it is the transport: frames to
   ``receive()``, its loss to ``connection_lost()`` (before: ``probe_lost()``).
5. ``Deliver(data)`` -> ``connection.receive(data)`` -> ``ConnectRequested`` (answer with
   ``accept``/``refuse`` and send the frames; on the first accept call
   ``session.socketio_connected()``), ``EventReceived``, ``AckReceived``, ``NamespaceLeft``.
   ``SocketIOPacketError`` from it: ``session.close(CloseReason.PARSE_ERROR)``.
6. Sending: ``session.send(encoded.frames)``; a WebSocket session has no buffer, so a
   broadcast may write ``encoded.websocket_frames(eio)`` (built once per version) straight
   to the transport of every WebSocket member whose session is open.
7. Time: call ``session.tick()`` at ``session.next_deadline()`` (a timer wheel for all).
8. ``Closed(reason)``: write what came before, close the WebSocket, forget the sid, and tell
   the application; ``session.close()`` for a server-side disconnect (send
   ``connection.leave(ns)`` first so the client does not reconnect).
"""

from smartsocket.protocol.socketio.connection import (
    AckReceived,
    ConnectRequested,
    EventReceived,
    NamespaceLeft,
    SioEvent,
    SocketIOConnection,
)
from smartsocket.protocol.socketio.engineio import (
    Handshake,
    OutFrame,
    Packet,
    PacketType,
    decode_binary,
    decode_payload,
    decode_payload_v3,
    decode_text,
    encode_payload,
    encode_payload_v3,
    message_frame,
    websocket_payload,
)
from smartsocket.protocol.socketio.errors import (
    AttachmentError,
    EngineErrorCode,
    EngineIOError,
    PacketError,
    PayloadTooLarge,
    PollingConflict,
    SocketIOPacketError,
    UnknownSession,
    UpgradeRefused,
    error_body,
)
from smartsocket.protocol.socketio.request import EngineRequest, RequestRefused, check_request
from smartsocket.protocol.socketio.session import (
    Action,
    AnswerPoll,
    Closed,
    CloseProbe,
    CloseReason,
    Deliver,
    EngineOptions,
    EngineSession,
    Upgraded,
    WriteProbe,
    WriteWebSocket,
)
from smartsocket.protocol.socketio.socketio import (
    BinaryReassembler,
    ConnectRequest,
    EncodedPacket,
    PacketKind,
    SioPacket,
    args_to_data,
    connect_request,
    data_to_args,
    decode,
    encode,
    encode_ack,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_event,
    plain_ack,
)

__all__ = [
    "AckReceived",
    "Action",
    "AnswerPoll",
    "AttachmentError",
    "BinaryReassembler",
    "CloseProbe",
    "CloseReason",
    "Closed",
    "ConnectRequest",
    "ConnectRequested",
    "Deliver",
    "EncodedPacket",
    "EngineErrorCode",
    "EngineIOError",
    "EngineOptions",
    "EngineRequest",
    "EngineSession",
    "EventReceived",
    "Handshake",
    "NamespaceLeft",
    "OutFrame",
    "Packet",
    "PacketError",
    "PacketKind",
    "PacketType",
    "PayloadTooLarge",
    "PollingConflict",
    "RequestRefused",
    "SioEvent",
    "SioPacket",
    "SocketIOConnection",
    "SocketIOPacketError",
    "UnknownSession",
    "UpgradeRefused",
    "Upgraded",
    "WriteProbe",
    "WriteWebSocket",
    "args_to_data",
    "check_request",
    "connect_request",
    "data_to_args",
    "decode",
    "decode_binary",
    "decode_payload",
    "decode_payload_v3",
    "decode_text",
    "encode",
    "encode_ack",
    "encode_connect",
    "encode_connect_error",
    "encode_disconnect",
    "encode_event",
    "encode_payload",
    "encode_payload_v3",
    "error_body",
    "message_frame",
    "plain_ack",
    "websocket_payload",
]
