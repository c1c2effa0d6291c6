"""The ``$`` events a client may send (docs/protocol.md section 3), each handed to its owner.

``Socket`` sends every inbound event whose name starts with ``$`` here: ``$pong`` to the
heartbeat's ``Liveness``, ``$ping`` answered at once (the client measures its round trip),
``$auth`` to admission (through ``Connections``), ``$refresh`` to ``TokenSessions``,
``$resume`` to the ``Resumer``. Any other ``$`` name, or one out of place, is refused and
counts against the error-rate rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartsocket.protocol import envelope
from smartsocket.protocol.codes import ErrorCode

if TYPE_CHECKING:
    from smartsocket.protocol.envelope import Event
    from smartsocket.server.context import SocketContext
    from smartsocket.server.socket import Socket


def system_event(socket: Socket, ctx: SocketContext, packet: Event) -> None:
    """Handle ``packet``, a ``$`` event ``socket`` sent."""
    name = packet.name
    if name == "$pong":
        ctx.liveness.pong(socket, packet.data)
    elif name == "$ping":  # the client measures its own round trip
        binary = packet.binary
        try:
            pong = envelope.encode_event("$pong", packet.data, binary=binary)
        except envelope.ENCODE_ERRORS:
            # Decodable but not encodable back (msgspec's encoder nests less deep).
            socket.refuse(ErrorCode.BAD_MESSAGE, "$ping data cannot be echoed", event=name)
            return
        socket.send_encoded(pong, binary)
    elif name == "$auth":
        if socket.authenticated:
            socket.refuse(
                ErrorCode.BAD_MESSAGE, "already authenticated", event=name,
                ack_id=packet.ack_id, binary=packet.binary,
            )
        else:
            ctx.connections.auth_message(socket, packet)
    elif name == "$refresh" and socket.authenticated:
        ctx.tokens.refresh_message(socket, packet)
    elif name == "$resume" and ctx.recovery is not None:
        ctx.resumer.resume_message(socket, packet)
    else:
        socket.refuse(
            ErrorCode.RESERVED_EVENT, f"{name!r} is reserved for the protocol",
            event=name, ack_id=packet.ack_id, binary=packet.binary,
        )
