"""permessage-deflate (RFC 7692), sans-I/O: header strings and payload bytes in and out.

picows has no extensions, so the server and the client negotiate and transform payloads here
and set/read RSV1 themselves (RFC 7692 6: RSV1 on the first frame marks a compressed message;
a message without it is plain, so declining to compress a message is always allowed).

Negotiation::

    negotiate(offer_header, *, context_takeover=False, max_window_bits=15) -> DeflateParams | None
    DeflateParams.response_header() -> str          # server's Sec-WebSocket-Extensions value
    client_offer(*, client_max_window_bits=True, server_no_context_takeover=False,
                 client_no_context_takeover=False, server_max_window_bits=None) -> str
    accept_response(response_header, *, <the same keywords as client_offer>)
        -> DeflateParams | None                     # raises NegotiationError
    parse_extensions(header) -> list[tuple[str, dict[str, str | None]]]   # raises ValueError

Payloads (``max_size=None`` means no cap)::

    compress_once(payload, *, threshold=256, level=1, wbits=15, mem_level=8) -> bytes | None
    MessageDeflater(params, is_server, *, level=1, threshold=256, mem_level=8)
        .compress(payload) -> bytes | None          # None: send this message uncompressed
    MessageInflater(params, is_server).decompress(payload, max_size) -> bytes
        # raises DeflateError (close 1007) or DecompressedTooLarge (close 1009)

Broadcasts: by default the server always answers ``server_no_context_takeover``, so its
payloads are independent of each other and of the receiver: one ``compress_once`` result
(with ``wbits`` <= the receiver's ``MessageDeflater.window_bits``) fits every connection whose
deflater has ``stateless`` set. Connections with context takeover need their own deflater,
and must then send every payload it returns, in order.

Measured (CPython 3.11, zlib 1.2.13, 2-vCPU AMD EPYC VM) on a 968-byte chat JSON message:
``compress_once`` 9.9 us at level 1 -> 610 bytes, 10.8 us at level 6 -> 605 bytes (a fresh
``zlib.compressobj`` per message costs 10-60 us more: its 256 KiB are allocated and, past
glibc's mmap threshold, page-faulted each time); ``decompress`` 3.5 us. On a 15.5 KB history
list: level 1 50 us -> 4912 bytes, level 6 144 us -> 4459 bytes. Level 1 is the default: the
same ratio on chat-sized messages, ~3x faster on big ones. Raise it for broadcast-heavy loads
where one compression feeds many sockets and egress costs more than CPU.

Memory (zlib's zconf.h): deflate ~ (1 << (wbits + 2)) + (1 << (mem_level + 9)) bytes
(256 KiB at 15/8), inflate ~ (1 << wbits) + 7 KiB (39 KiB at 15). Stateless directions cost
nothing per connection; takeover directions keep that state for the connection's life, so
``max_window_bits`` and ``mem_level`` are the knobs for many connections.
"""

from __future__ import annotations

import re
import threading
import zlib
from dataclasses import dataclass
from typing import Final, NamedTuple

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
_LEXEME = re.compile(rf'[ \t]*(?:(?P<token>{_TOKEN})|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<sep>[,;=]))')
_TOKEN_RE = re.compile(_TOKEN)
_QUOTED_PAIR = re.compile(r"\\(.)")

Params = list[tuple[str, str | None]]


def _lex(header: str) -> list[tuple[str, str]]:
    """Split into (kind, text) lexemes: kind is "token", "quoted" (unescaped) or a separator."""
    lexemes: list[tuple[str, str]] = []
    text = header.strip(" \t")
    pos = 0
    while pos < len(text):
        m = _LEXEME.match(text, pos)
        if m is None:
            raise ValueError(f"invalid extensions header at offset {pos}: {header!r}")
        if m["token"] is not None:
            lexemes.append(("token", m["token"]))
        elif m["quoted"] is not None:
            lexemes.append(("quoted", _QUOTED_PAIR.sub(r"\1", m["quoted"])))
        else:
            lexemes.append((m["sep"], m["sep"]))
        pos = m.end()
    return lexemes


def _parse(header: str) -> list[tuple[str, Params]]:
    """Parse keeping parameters as pairs, so that a repeated parameter stays visible."""
    lexemes = _lex(header)
    lexemes.append(("end", ""))
    extensions: list[tuple[str, Params]] = []
    i = 0
    while lexemes[i][0] != "end":
        if lexemes[i][0] == ",":  # RFC 7230 7: empty list elements are allowed
            i += 1
            continue
        if lexemes[i][0] != "token":
            raise ValueError(f"expected an extension name in {header!r}")
        name, params = lexemes[i][1], []
        i += 1
        while lexemes[i][0] == ";":
            if lexemes[i + 1][0] != "token":
                raise ValueError(f"expected a parameter name in {header!r}")
            key, value = lexemes[i + 1][1], None
            i += 2
            if lexemes[i][0] == "=":
                kind, value = lexemes[i + 1]
                # RFC 6455 9.1: a quoted value must still be a token once unescaped.
                if kind not in ("token", "quoted") or not _TOKEN_RE.fullmatch(value):
                    raise ValueError(f"invalid value for {key!r} in {header!r}")
                i += 2
            params.append((key, value))
        if lexemes[i][0] not in (",", "end"):
            raise ValueError(f"unexpected {lexemes[i][1]!r} in {header!r}")
        extensions.append((name, params))
    return extensions


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
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.send_server_max_window_bits:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.send_client_max_window_bits:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


class _Ext(NamedTuple):
    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int | None
    client_max_window_bits: int | None  # None with client_bits_offered: offered without value
    client_bits_offered: bool


_WINDOW_BITS = re.compile(r"8|9|1[0-5]")  # RFC 7692 7.1.2: decimal, no leading zero, 8..15


def _read_params(params: Params, *, response: bool) -> _Ext:
    """Validate one permessage-deflate element; ValueError on anything RFC 7692 7 forbids."""
    seen: set[str] = set()
    flags = {"server_no_context_takeover": False, "client_no_context_takeover": False}
    bits: dict[str, int | None] = {"server_max_window_bits": None, "client_max_window_bits": None}
    for key, value in params:
        if key in seen:
            raise ValueError(f"duplicate parameter {key}")
        seen.add(key)
        if key in flags:
            if value is not None:  # 7.1.1: these parameters have no value
                raise ValueError(f"{key} takes no value")
            flags[key] = True
        elif key in bits:
            # 7.1.2.2: only an offer may carry client_max_window_bits without a value.
            if value is None and key == "client_max_window_bits" and not response:
                continue
            if value is None or not _WINDOW_BITS.fullmatch(value):
                raise ValueError(f"invalid {key} value {value!r}")
            bits[key] = int(value)
        else:
            raise ValueError(f"unknown parameter {key}")
    return _Ext(
        flags["server_no_context_takeover"],
        flags["client_no_context_takeover"],
        bits["server_max_window_bits"],
        bits["client_max_window_bits"],
        "client_max_window_bits" in seen,
    )


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
    (madler/zlib#171), and a 9-bit stream may reach back 512 bytes, which a peer holding an 8-bit
    window rejects. A header that does not parse declines everything.
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
        server_bits = min(max_window_bits, offer.server_max_window_bits or 15)
        if server_bits < 9:
            continue
        # 7.1.2.2: name the client window only if offered, and never above the offered value.
        client_bits = 15
        if offer.client_bits_offered:
            client_bits = min(max_window_bits, offer.client_max_window_bits or 15)
        return DeflateParams(
            server_no_context_takeover=offer.server_no_context_takeover or not context_takeover,
            client_no_context_takeover=offer.client_no_context_takeover,
            server_max_window_bits=server_bits,
            client_max_window_bits=client_bits,
            send_server_max_window_bits=offer.server_max_window_bits is not None,
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
    parts = [EXTENSION_NAME]
    if server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_max_window_bits is not None:
        if not 8 <= server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be within 8..15")
        parts.append(f"server_max_window_bits={server_max_window_bits}")
    if client_max_window_bits:
        parts.append("client_max_window_bits")
    return "; ".join(parts)


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
    if response_header is None or not response_header.strip(" \t"):
        return None
    try:
        extensions = _parse(response_header)
    except ValueError as exc:
        raise NegotiationError(str(exc)) from exc
    if not extensions:
        return None
    if len(extensions) > 1 or extensions[0][0] != EXTENSION_NAME:
        raise NegotiationError(f"server accepted extensions we did not offer: {response_header!r}")
    try:
        answer = _read_params(extensions[0][1], response=True)
    except ValueError as exc:
        raise NegotiationError(str(exc)) from exc
    if server_no_context_takeover and not answer.server_no_context_takeover:
        raise NegotiationError("server_no_context_takeover was offered but not accepted")
    server_bits = answer.server_max_window_bits
    if server_max_window_bits is None:
        if server_bits is not None:
            raise NegotiationError("server_max_window_bits was not offered")
    elif server_bits is None or server_bits > server_max_window_bits:
        raise NegotiationError("server_max_window_bits missing or above the offered value")
    if answer.client_max_window_bits is not None and not client_max_window_bits:
        raise NegotiationError("client_max_window_bits was not offered")
    return DeflateParams(
        server_no_context_takeover=answer.server_no_context_takeover,
        # Offered means promised: keep our side stateless even if the server did not echo it.
        client_no_context_takeover=answer.client_no_context_takeover or client_no_context_takeover,
        server_max_window_bits=server_bits or 15,
        client_max_window_bits=answer.client_max_window_bits or 15,
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
    # to a fresh compressobj's, without its 256 KiB allocation (10 us vs 20-60 us per 1 KB).
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
    returned must be sent, in order, to this connection only.
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
            # zlib cannot honour an 8-bit window (see negotiate): a client told to use one
            # sends every message plain, which RFC 7692 6 allows.
            self.threshold = 1 << 62
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
