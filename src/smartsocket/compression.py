"""permessage-deflate (RFC 7692), sans-I/O: header strings and payload bytes in and out.

picows has no extensions: the server and client negotiate here and set/read RSV1 themselves
(RFC 7692 6: RSV1 on a message's first frame marks it compressed, so any message may go plain).

    negotiate(offer_header, *, context_takeover=False, max_window_bits=15) -> DeflateParams | None
    DeflateParams.response_header() -> str            # the server's Sec-WebSocket-Extensions
    client_offer(*, client_max_window_bits=True, server_no_context_takeover=False,
                 client_no_context_takeover=False, server_max_window_bits=None) -> str
    accept_response(response_header, *, <client_offer's keywords>) -> DeflateParams | None
    parse_extensions(header) -> list[tuple[str, dict[str, str | None]]]
    compress_once(payload, *, threshold=256, level=1, wbits=15, mem_level=8) -> bytes | None
    MessageDeflater(params, is_server, *, level=1, threshold=256, mem_level=8)
        .compress(payload) -> bytes | None            # None: send the message plain
    MessageInflater(params, is_server).decompress(payload, max_size) -> bytes
    errors: DeflateError (close 1007), DecompressedTooLarge (1009), NegotiationError (client)

Broadcasts: by default the server answers ``server_no_context_takeover``, so its payloads stand
alone: one ``compress_once(payload, wbits=w)`` result fits every connection whose deflater is
``stateless`` with ``window_bits >= w``. With context takeover a connection needs its own
deflater, and must send every payload it returns, in order.

Measured (CPython 3.11, zlib 1.2.13, 2-vCPU EPYC VM), 968-byte chat JSON: ``compress_once``
10.5 us at level 1 -> 610 bytes, 11.5 us at level 6 -> 605; ``decompress`` 4.1 us. 15.5 KB
history list: level 1 50 us -> 4912 bytes, level 6 144 us -> 4459. Level 1 is the default: same
ratio on chat-sized messages, ~3x faster on big ones; raise it where one broadcast compression
feeds many sockets and egress costs more than CPU.

Memory (zconf.h): deflate ~ (1 << (wbits + 2)) + (1 << (mem_level + 9)) bytes (256 KiB at
15/8), inflate ~ (1 << wbits) + 7 KiB. Stateless directions keep nothing per connection;
takeover directions keep it for the connection's life (tune max_window_bits and mem_level).
"""

from __future__ import annotations

import re
import threading
import zlib
from dataclasses import dataclass
from typing import Final

EXTENSION_NAME: Final = "permessage-deflate"
DEFAULT_LEVEL: Final = 1
DEFAULT_THRESHOLD: Final = 256
DEFAULT_MEM_LEVEL: Final = 8

# RFC 7692 7.2.1/7.2.2: a sync flush ends with an empty stored block whose last 4 bytes are
# stripped by the sender and appended again by the receiver.
_TAIL: Final = b"\x00\x00\xff\xff"
# What may follow a BFINAL=1 block (RFC 7692 7.2.3.4) once _TAIL is appended: nothing, our tail
# (a sender that ended with the final block), or an empty stored block (what 7.2.1 produces).
_AFTER_FINAL_BLOCK: Final = (b"", _TAIL, b"\x00" + _TAIL)


class DeflateError(ValueError):
    """A compressed message that is not a valid deflate stream: close with 1007."""


class DecompressedTooLarge(ValueError):
    """A compressed message that inflates past ``max_size``: close with 1009."""


class NegotiationError(ValueError):
    """A server answer that a client must reject (RFC 7692 7: fail the connection)."""


# --- Sec-WebSocket-Extensions parsing (RFC 6455 9.1) ------------------------------------------

_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_NAME_RE = re.compile(rf"[ \t]*({_TOKEN})")
_PARAM_RE = re.compile(
    rf'[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*(?:({_TOKEN})|"((?:[^"\\]|\\.)*)"))?'
)
_END_RE = re.compile(r"[ \t]*(?:,|\Z)")
_QUOTED_PAIR = re.compile(r"\\(.)")

Params = list[tuple[str, str | None]]


def _parse(header: str) -> list[tuple[str, Params]]:
    """Parse keeping parameters as pairs, so that a repeated parameter stays visible."""
    extensions: list[tuple[str, Params]] = []
    pos = 0
    while True:
        while pos < len(header) and header[pos] in " \t,":  # RFC 7230 7: empty elements
            pos += 1
        if pos == len(header):
            return extensions
        m = _NAME_RE.match(header, pos)
        if m is None:
            raise ValueError(f"expected an extension name at {pos} in {header!r}")
        name, params, pos = m[1], [], m.end()
        while m := _PARAM_RE.match(header, pos):
            value = m[2] if m[3] is None else _QUOTED_PAIR.sub(r"\1", m[3])
            # RFC 6455 9.1: a quoted value must still be a token once unescaped.
            if value is not None and not _TOKEN_RE.fullmatch(value):
                raise ValueError(f"invalid value for {m[1]!r} in {header!r}")
            params.append((m[1], value))
            pos = m.end()
        if (m := _END_RE.match(header, pos)) is None:
            raise ValueError(f"unexpected {header[pos:]!r} in {header!r}")
        extensions.append((name, params))
        pos = m.end()


def parse_extensions(header: str) -> list[tuple[str, dict[str, str | None]]]:
    """Parse a ``Sec-WebSocket-Extensions`` value (join repeated header lines with ", ").

    Returns (name, {param: value or None}) per element, in order; raises ValueError on a
    malformed header or on a parameter repeated within one element.
    """
    result: list[tuple[str, dict[str, str | None]]] = []
    for name, params in _parse(header):
        as_dict = dict(params)
        if len(as_dict) != len(params):
            raise ValueError(f"repeated parameter in {name!r}: {header!r}")
        result.append((name, as_dict))
    return result


# --- Negotiation (RFC 7692 7.1) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """Agreed parameters of one connection; window bits are 15 when not negotiated.

    ``send_*_max_window_bits`` tell whether the server's answer names that window: RFC 7692
    7.1.2 lets it do so only when the offer did, so a smaller window we merely choose to use
    stays unsaid.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    send_server_max_window_bits: bool = False
    send_client_max_window_bits: bool = False

    def __post_init__(self) -> None:
        for bits in (self.server_max_window_bits, self.client_max_window_bits):
            if not 8 <= bits <= 15:
                raise ValueError(f"window bits must be within 8..15, not {bits}")

    def response_header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value the server sends to accept."""
        return _header(
            self.server_no_context_takeover,
            self.client_no_context_takeover,
            self.server_max_window_bits if self.send_server_max_window_bits else None,
            self.client_max_window_bits if self.send_client_max_window_bits else None,
        )


def _header(
    server_nct: bool, client_nct: bool, server_bits: int | None, client_bits: int | bool | None
) -> str:
    parts = [EXTENSION_NAME]
    if server_nct:
        parts.append("server_no_context_takeover")
    if client_nct:
        parts.append("client_no_context_takeover")
    if server_bits is not None:
        parts.append(f"server_max_window_bits={server_bits}")
    if client_bits is True:  # only in offers (7.1.2.2)
        parts.append("client_max_window_bits")
    elif client_bits:
        parts.append(f"client_max_window_bits={client_bits}")
    return "; ".join(parts)


_PARAM_NAMES: Final = {
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
}
_WINDOW_BITS = re.compile(r"8|9|1[0-5]")  # RFC 7692 7.1.2: decimal, no leading zero, 8..15


def _read_params(params: Params, *, response: bool) -> dict[str, int | None]:
    """Validate one permessage-deflate element: {name: window bits or None}.

    ValueError on what RFC 7692 7 makes a server decline or a client fail: an unknown or
    repeated parameter, or an invalid value.
    """
    found: dict[str, int | None] = {}
    for key, value in params:
        if key in found or key not in _PARAM_NAMES:
            raise ValueError(f"unknown or repeated parameter {key}")
        if key.endswith("_no_context_takeover"):
            if value is not None:  # 7.1.1: no value
                raise ValueError(f"{key} takes no value")
        elif value is None and key == "client_max_window_bits" and not response:
            pass  # 7.1.2.2: only an offer may leave it without a value
        elif value is None or not _WINDOW_BITS.fullmatch(value):
            raise ValueError(f"invalid {key} value {value!r}")
        found[key] = None if value is None else int(value)
    return found


def negotiate(
    offer_header: str | None, *, context_takeover: bool = False, max_window_bits: int = 15
) -> DeflateParams | None:
    """Server side: accept the first permessage-deflate offer we can honour, else None.

    Default: always answer ``server_no_context_takeover`` (RFC 7692 7.1.1.1 lets a server add
    it unasked) so that one compressed broadcast fits every receiver and the server keeps no
    deflate state per connection. ``context_takeover=True`` keeps the server's context unless
    the client asks otherwise: better ratio on similar messages, 256 KiB per connection at 15.
    ``max_window_bits`` (9..15) caps both windows (client's: our inflate memory per connection).
    Offers with unknown, repeated or invalid parameters are declined (RFC 7692 7), and so are
    offers that force ``server_max_window_bits=8``: zlib rejects raw deflate at 8 bits
    (madler/zlib#171), and a 9-bit stream may reach back 512 bytes, which a peer keeping an 8-bit
    window may reject. A header that does not parse declines everything.
    """
    if not 9 <= max_window_bits <= 15:
        raise ValueError("max_window_bits must be within 9..15")
    if not offer_header:
        return None
    try:
        offers = _parse(offer_header)
    except ValueError:
        return None
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            offer = _read_params(params, response=False)
        except ValueError:
            continue
        # 7.1.2.1: answer with the offered server window or a smaller one.
        server_bits = min(max_window_bits, offer.get("server_max_window_bits") or 15)
        if server_bits < 9:
            continue
        # 7.1.2.2: name the client window only if offered, and never above the offered value.
        client_bits = 15
        if "client_max_window_bits" in offer:
            client_bits = min(max_window_bits, offer["client_max_window_bits"] or 15)
        return DeflateParams(
            server_no_context_takeover="server_no_context_takeover" in offer
            or not context_takeover,
            client_no_context_takeover="client_no_context_takeover" in offer,
            server_max_window_bits=server_bits,
            client_max_window_bits=client_bits,
            send_server_max_window_bits="server_max_window_bits" in offer,
            send_client_max_window_bits=client_bits < 15,
        )
    return None


def client_offer(
    *,
    client_max_window_bits: bool = True,
    server_no_context_takeover: bool = False,
    client_no_context_takeover: bool = False,
    server_max_window_bits: int | None = None,
) -> str:
    """Client side: the ``Sec-WebSocket-Extensions`` value to send (one offer)."""
    if server_max_window_bits is not None and not 8 <= server_max_window_bits <= 15:
        raise ValueError("server_max_window_bits must be within 8..15")
    return _header(
        server_no_context_takeover,
        client_no_context_takeover,
        server_max_window_bits,
        bool(client_max_window_bits),
    )


def accept_response(
    response_header: str | None,
    *,
    client_max_window_bits: bool = True,
    server_no_context_takeover: bool = False,
    client_no_context_takeover: bool = False,
    server_max_window_bits: int | None = None,
) -> DeflateParams | None:
    """Client side: check the server's answer to ``client_offer(**same keywords)``.

    None if the server declined. NegotiationError if the answer breaks RFC 7692 7.1 or names
    an extension we did not offer (RFC 6455 9.1), either of which must fail the connection.
    """
    try:
        extensions = _parse(response_header or "")
        if not extensions:
            return None
        if len(extensions) > 1 or extensions[0][0] != EXTENSION_NAME:
            raise ValueError(f"server accepted extensions we did not offer: {response_header!r}")
        answer = _read_params(extensions[0][1], response=True)
    except ValueError as exc:
        raise NegotiationError(str(exc)) from exc
    server_bits = answer.get("server_max_window_bits")
    client_bits = answer.get("client_max_window_bits")
    if server_no_context_takeover and "server_no_context_takeover" not in answer:
        raise NegotiationError("server_no_context_takeover was offered but not accepted")
    # 7.1.2.1: a server MAY name server_max_window_bits even if the offer did not (a smaller
    # window only makes its stream easier to inflate), e.g. python-websockets answers 12.
    if server_max_window_bits is not None and (
        server_bits is None or server_bits > server_max_window_bits
    ):
        raise NegotiationError("server_max_window_bits missing or above the offered value")
    if client_bits is not None and not client_max_window_bits:
        raise NegotiationError("client_max_window_bits was not offered")
    return DeflateParams(
        server_no_context_takeover="server_no_context_takeover" in answer,
        # Offered means promised: keep our side stateless even if the server did not echo it.
        client_no_context_takeover="client_no_context_takeover" in answer
        or client_no_context_takeover,
        server_max_window_bits=server_bits or 15,
        client_max_window_bits=client_bits or 15,
    )


# --- Payload transformation (RFC 7692 7.2) ----------------------------------------------------

# One compressor per (level, wbits, mem_level) and thread: compress() and flush() are two calls
# that release the GIL, so threads must not share one.
_local = threading.local()


def _new_shared_compressor(key: tuple[int, int, int]) -> zlib._Compress:
    level, wbits, mem_level = key
    if not 9 <= wbits <= 15:  # 8 is refused by zlib (madler/zlib#171)
        raise ValueError("wbits must be within 9..15")
    compressor = zlib.compressobj(level, zlib.DEFLATED, -wbits, mem_level)
    cache: dict[tuple[int, int, int], zlib._Compress] = getattr(_local, "cache", None) or {}
    _local.cache = cache
    cache[key] = compressor
    return compressor


def compress_once(
    payload: bytes | bytearray | memoryview,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    level: int = DEFAULT_LEVEL,
    wbits: int = 15,
    mem_level: int = DEFAULT_MEM_LEVEL,
) -> bytes | None:
    """Compress one message with no context (valid for any receiver whose window >= wbits).

    None when the message should go plain: shorter than ``threshold`` bytes, or saving less than
    10%. A memoryview must be of bytes (format "B"), as ``len`` sizes the payload.
    """
    size = len(payload)
    if size < threshold:
        return None
    key = (level, wbits, mem_level)
    compressor: zlib._Compress
    try:
        compressor = _local.cache[key]
    except (AttributeError, KeyError):
        compressor = _new_shared_compressor(key)
    # Z_FULL_FLUSH ends the output like Z_SYNC_FLUSH (empty stored block, 7.2.1) and also clears
    # the match history, so the next message never refers back: each output is byte-identical
    # to a fresh compressobj's, minus its 256 KiB allocation (a fresh one took 10.5-61 us on
    # 1 KB, as glibc may hand those pages back and fault them in again; copy() took 15 us).
    try:
        out = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    except BaseException:
        del _local.cache[key]  # a half-fed compressor must not serve the next message
        raise
    if (len(out) - 4) * 10 > size * 9:
        return None
    return out[:-4]


class MessageDeflater:
    """Compressor of one connection's outgoing messages (``is_server``: our role).

    ``stateless`` means our side has no context takeover: ``compress`` is ``compress_once``
    and its payloads may be shared (see module docstring). With context takeover, every payload
    returned must be sent, in order, to this connection only. A client told to use an 8-bit
    window never compresses (``threshold`` is then infinite).
    """

    __slots__ = ("_compressor", "level", "mem_level", "stateless", "threshold", "window_bits")

    def __init__(
        self,
        params: DeflateParams,
        is_server: bool,
        *,
        level: int = DEFAULT_LEVEL,
        threshold: int = DEFAULT_THRESHOLD,
        mem_level: int = DEFAULT_MEM_LEVEL,
    ) -> None:
        if is_server:
            bits, no_takeover = params.server_max_window_bits, params.server_no_context_takeover
        else:
            bits, no_takeover = params.client_max_window_bits, params.client_no_context_takeover
        self.window_bits = bits
        self.level = level
        self.threshold = threshold
        self.mem_level = mem_level
        self.stateless = no_takeover
        self._compressor: zlib._Compress | None = None
        if bits == 8:
            self.threshold = 1 << 62  # zlib cannot (see negotiate); plain is always allowed
        elif not no_takeover:
            self._compressor = zlib.compressobj(level, zlib.DEFLATED, -bits, mem_level)

    def compress(self, payload: bytes | bytearray | memoryview) -> bytes | None:
        """The RFC 7692 7.2.1 payload to send with RSV1, or None to send ``payload`` plain."""
        size = len(payload)
        if size < self.threshold:
            return None
        compressor = self._compressor
        if compressor is None:
            return compress_once(
                payload, threshold=0, level=self.level, wbits=self.window_bits,
                mem_level=self.mem_level,
            )  # fmt: skip
        # 7.2.3.2: context takeover, the peer's window continues from our last message.
        out = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if (len(out) - 4) * 10 > size * 9:
            # The compressor has seen a message the peer never will: a full flush makes our
            # next output independent of everything before it, so both windows stay consistent.
            compressor.flush(zlib.Z_FULL_FLUSH)
            return None
        return out[:-4]


class MessageInflater:
    """Decompressor of one connection's incoming messages (``is_server``: our role).

    After DeflateError or DecompressedTooLarge the connection must be closed: with context
    takeover the decompressor state is then unusable.
    """

    __slots__ = ("_decompressor", "_wbits")

    def __init__(self, params: DeflateParams, is_server: bool) -> None:
        if is_server:
            bits, no_takeover = params.client_max_window_bits, params.client_no_context_takeover
        else:
            bits, no_takeover = params.server_max_window_bits, params.server_no_context_takeover
        # A 9-bit window also inflates 8-bit streams, and old zlib (< 1.2.9) silently used 9
        # when asked for 8, so 9 keeps such peers working for 256 bytes more.
        self._wbits = -max(bits, 9)
        # Peer without context takeover: a fresh decompressor per message (0.1 us) holds no
        # memory between messages; otherwise its window must persist (7.2.2).
        self._decompressor = None if no_takeover else zlib.decompressobj(self._wbits)

    def decompress(self, payload: bytes | bytearray | memoryview, max_size: int | None) -> bytes:
        """Inflate one whole message (fragments concatenated), never producing > max_size."""
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = zlib.decompressobj(self._wbits)
        data = b"".join((payload, _TAIL))  # 7.2.2
        try:
            if max_size is None:
                out = decompressor.decompress(data)
            elif max_size < 0:
                raise ValueError("max_size must be >= 0")
            else:
                # zlib stops at max_size + 1 bytes: a bomb costs at most that much memory.
                out = decompressor.decompress(data, max_size + 1)
        except zlib.error as exc:
            raise DeflateError(f"invalid deflate data: {exc}") from exc
        if max_size is not None and len(out) > max_size:
            raise DecompressedTooLarge(f"message inflates past {max_size} bytes")
        if decompressor.eof:
            # 7.2.3.4: the peer ended with a BFINAL=1 block; the stream is over, so a kept
            # decompressor is replaced (a peer that still refers back then fails with 1007).
            if decompressor.unused_data not in _AFTER_FINAL_BLOCK:
                raise DeflateError("data after the final deflate block")
            if self._decompressor is not None:
                self._decompressor = zlib.decompressobj(self._wbits)
        return out
