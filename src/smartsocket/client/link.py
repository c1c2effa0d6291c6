"""One connection attempt of the client, and the resume URL."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

from smartsocket.protocol import envelope
from smartsocket.protocol.codes import ErrorCode
from smartsocket.protocol.envelope import Event
from smartsocket.transport import ClientConnection

logger = logging.getLogger("smartsocket.client")


class Link:
    """Binds one connection attempt to the client, so callbacks from an old connection
    cannot disturb a newer one. It gets the client's callbacks, bound once."""

    __slots__ = ("_attach", "_closed", "_deliver", "conn")

    def __init__(
        self, attach: Callable[[ClientConnection], None],
        deliver: Callable[[Link, bytes | memoryview, bool], None],
        closed: Callable[[Link, int, str], None],
    ) -> None:
        self._attach = attach
        self._deliver = deliver
        self._closed = closed
        self.conn: ClientConnection | None = None

    def on_open(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._attach(conn)  # before anything is read: $welcome may come with the 101

    def on_message(self, payload: bytes | memoryview, binary: bool, wire_size: int) -> None:
        self._deliver(self, payload, binary)

    def on_close(self, code: int, reason: str) -> None:
        self._closed(self, code, reason)

    def send(self, payload: bytes, binary: bool = False) -> None:
        if self.conn is not None:
            self.conn.send_message(payload, binary)

    def reply(self, ack_id: int, result: Any, binary: bool) -> None:
        binary = binary or envelope.needs_binary(result)
        try:
            payload = envelope.encode_ack(ack_id, result, binary=binary)
        except envelope.ENCODE_ERRORS as exc:
            logger.error("cannot encode the reply to call %d: %r", ack_id, exc)
            payload = envelope.encode_ack_error(
                ack_id, ErrorCode.INTERNAL_ERROR, "the reply could not be encoded", binary=binary
            )
        self.send(payload, binary)

    def reject(self, packet: Event, code: str, message: str) -> None:
        if packet.ack_id is not None:
            binary = packet.binary
            payload = envelope.encode_ack_error(packet.ack_id, code, message, binary=binary)
            self.send(payload, binary)

    def close(self, code: int, reason: str) -> None:
        if self.conn is not None:
            self.conn.close(code, reason)


def with_query(url: str, name: str, value: str) -> str:
    """``url`` with the query parameter ``name`` set to ``value`` (replaced if present)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k != name] + [(name, value)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
