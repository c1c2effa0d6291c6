"""Server configuration: one frozen dataclass.

Keyword arguments, environment variables and CLI flags all map onto ``Config``. Each field's
metadata says how to check it and which env vars set it (``SMARTSOCKET_<NAME>``, plus the bare
names the seed README documents, e.g. ``PORT``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from smartsocket.errors import ConfigError

# Bare env var names from the seed README; every option also reads SMARTSOCKET_<NAME>.
_SEED_ENV = {
    "port": "PORT",
    "host": "HOST",
    "enable_compression": "ENABLE_COMPRESSION",
    "enable_metrics": "ENABLE_METRICS",
    "max_connections": "MAX_CONNECTIONS",
    "enable_encryption": "ENABLE_ENCRYPTION",
}


# Options holding several values: a comma-separated string, or a list, tuple or set of strings
# (kept as the string, so env vars, flags and keywords end up alike).
_JWT_KEY_SOURCES = ("jwt_secret", "jwt_public_key", "jwt_jwks")
_LIST_OPTIONS = ("api_keys", "allowed_origins", "presence_rooms", "jwt_audience")


def _opt(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "min": min, "max": max})


@dataclass(frozen=True, slots=True)
class Config:
    """Every server option, with its default. Durations are in seconds, sizes in bytes."""

    port: int = _opt(8080, "TCP port to listen on (0 picks a free port)", min=0, max=65535)
    host: str = _opt("0.0.0.0", "interface to bind")
    enable_compression: bool = _opt(True, "negotiate permessage-deflate (RFC 7692)")
    compression_threshold: int = _opt(256, "compress messages of at least this many bytes", min=0)
    compression_level: int = _opt(1, "zlib level 1-9 (1: fastest, same ratio on chat-sized JSON)",
                                  min=1, max=9)
    compression_context_takeover: bool = _opt(
        False, "keep a compressor per connection (better ratio, ~256 KiB each at 15 window bits)"
    )
    compression_max_window_bits: int = _opt(15, "largest deflate window (9-15; smaller: less "
                                             "memory per connection with context takeover)",
                                             min=9, max=15)
    enable_metrics: bool = _opt(True, "collect metrics for /smartsocket/stats")
    max_connections: int = _opt(10_000, "simultaneous connections; more get HTTP 503", min=1)
    enable_encryption: bool = _opt(False, "serve wss:// (needs ssl_certfile and ssl_keyfile)")
    ssl_certfile: str | None = _opt(None, "PEM certificate chain for TLS")
    ssl_keyfile: str | None = _opt(None, "PEM private key for TLS")
    message_timeout: float = _opt(30.0, "ack timeout of server-to-client calls", min=0.001)
    max_message_size: int = _opt(1 << 20, "largest inbound message (over: close 1009)", min=64)
    ping_interval: float = _opt(25.0, "seconds between $ping heartbeats", min=0.01)
    ping_timeout: float = _opt(20.0, "seconds to wait for $pong before closing (4002)", min=0.01)
    handshake_timeout: float = _opt(5.0, "seconds to complete the HTTP upgrade", min=0.01)
    shutdown_timeout: float = _opt(10.0, "seconds close() waits for handlers and clients", min=0)
    fast_transport: bool = _opt(True, "picows' aiofastnet transport: ~1.5x throughput, ~5 KB more "
                                "memory per connection than the event loop's own")
    # security and limits
    api_keys: str | None = _opt(None, "API keys, comma-separated (or a list in Python); clients "
                                "must present one")
    auth_timeout: float = _opt(10.0, "seconds an unauthenticated socket may take to $auth",
                               min=0.01)
    allowed_origins: str | None = _opt(None, "origins allowed to connect, comma-separated or a "
                                       "list (https://*.example.com); others get HTTP 403")
    max_connections_per_ip: int = _opt(1000, "connections per client IP (0: no limit); more "
                                       "are closed with 1013", min=0)
    max_rooms_per_socket: int = _opt(100, "rooms one socket may be in", min=1)
    max_name_length: int = _opt(128, "longest event or room name", min=1)
    max_pending_acks: int = _opt(256, "calls awaiting an ack per socket, each direction", min=1)
    rate_limit_messages: float = _opt(200.0, "events per second per socket (0: off)", min=0)
    rate_limit_burst: float = _opt(400.0, "events a socket may send at once", min=1)
    rate_limit_bytes: int = _opt(4 << 20, "bytes per second per socket (0: off)", min=0)
    rate_limit_strikes: int = _opt(50, "refused events within 10 s before closing with 4008",
                                   min=1)
    rate_limit_frames: float = _opt(2000.0, "WebSocket frames per second per connection, of "
                                    "any kind; over it the connection is not read until the "
                                    "budget refills (0: off)", min=0)
    error_limit: int = _opt(50, "invalid messages (malformed, unknown ack id, reserved or invalid "
                            "name, before $auth) within 10 s before closing with 1008 (0: off)",
                            min=0)
    max_fragments: int = _opt(1024, "frames one inbound message may be split into (over: close "
                              "1009)", min=1)
    backlog: int = _opt(4096, "listen backlog: connections the kernel queues before they are "
                        "accepted (capped by /proc/sys/net/core/somaxconn)", min=1)
    room_rate_limit_messages: float = _opt(0.0, "broadcasts per second per room (0: off)",
                                           min=0)
    room_rate_limit_burst: float = _opt(0.0, "broadcasts a room may take at once (0: twice "
                                        "room_rate_limit_messages)", min=0)
    write_buffer_high: int = _opt(64 << 10, "bytes queued for a socket before it counts as "
                                  "slow", min=1024)
    max_write_buffer: int = _opt(4 << 20, "bytes queued for a slow socket before it is "
                                 "dropped (4009)", min=1024)
    stats_token: str | None = _opt(None, "token required by /smartsocket/stats and /metrics")
    api_secret: str | None = _opt(None, "secret of the HTTP API at /smartsocket/api/ (sent as "
                                  "a Bearer token; unset: the API is off)")
    # plain HTTP requests served by handlers (the HTTP API, long-polling): http_requests.py
    max_http_body: int = _opt(1 << 20, "largest HTTP request body (over: 413, not read)", min=0)
    http_body_timeout: float = _opt(10.0, "seconds an HTTP request body may take to arrive "
                                    "once its head is in", min=0.01)
    http_keepalive_timeout: float = _opt(15.0, "idle seconds an HTTP connection is kept for "
                                         "its next request", min=0.01)
    http_keepalive_requests: int = _opt(1000, "HTTP requests served on one connection before "
                                        "it is closed", min=1)
    # connection state recovery (recovery/)
    recovery_window: float = _opt(0.0, "seconds a dropped session stays resumable, with the "
                                  "messages it missed (0: recovery off)", min=0)
    history_size: int = _opt(100, "room messages (and direct messages per session) kept for "
                             "replay", min=1)
    history_ttl: float = _opt(0.0, "seconds a message is kept for replay (0: recovery_window)",
                              min=0)
    # cluster (src/smartsocket/cluster)
    cluster_url: str | None = _opt(None, "join a cluster through redis://host:port (a Redis "
                                   "Cluster: redis://host:port?cluster=1), nats://host:port "
                                   "or memory://name (unset: single node)")
    cluster_prefix: str = _opt("smartsocket", "channel prefix: nodes with the same broker and "
                               "prefix form one cluster")
    cluster_heartbeat: float = _opt(1.0, "seconds between node heartbeats", min=0.01)
    node_timeout: float = _opt(5.0, "seconds without a heartbeat before a node is dropped from "
                               "counts and presence", min=0.05)
    cluster_queue: int = _opt(10_000, "messages a node queues for the broker; while it is "
                              "full broadcasts are refused (overloaded) and HTTP API batches "
                              "wait", min=1)
    cluster_link_timeout: float = _opt(5.0, "seconds: the broker link is pinged every period "
                                       "and is down (the node degraded) after a whole period "
                                       "without an answer, or a publish unanswered for two",
                                       min=0.05)
    presence_rooms: str | None = _opt(None, "rooms or patterns (game:*) whose members get "
                                      "$presence updates, comma-separated or a list")
    # transactional outbox (src/smartsocket/outbox, docs/outbox.md)
    outbox_url: str | None = _opt(None, "publish the rows of the PostgreSQL outbox table at "
                                  "postgresql://... (one server of a cluster at a time; needs "
                                  "smartsocket[postgres])")
    reuse_port: bool = _opt(False, "bind with SO_REUSEPORT (set for each --workers process)")
    # token authentication and room policies (docs/auth.md; the jwt extra)
    jwt_secret: str | None = _opt(None, "HS256 secret of connection tokens (at least 32 bytes; "
                                  "prefer the env var to a flag)")
    jwt_public_key: str | None = _opt(None, "PEM public key file of connection tokens (RS*, PS*, "
                                      "ES*)")
    jwt_jwks: str | None = _opt(None, "JWK set of connection tokens: a file or an https:// URL "
                                "(the token's kid picks the key)")
    jwt_audience: str | None = _opt(None, "audiences a token's aud must name, comma-separated "
                                    "or a list (unset: tokens with an aud are refused)")
    jwt_issuer: str | None = _opt(None, "issuer a token's iss must equal")
    jwt_leeway: float = _opt(5.0, "seconds of clock skew allowed on exp, nbf and iat", min=0)
    jwt_max_token_bytes: int = _opt(
        8192, "longest connection or room token accepted, checked before any decoding (over: "
        "token_invalid)", min=256)
    jwt_jwks_refresh_interval: float = _opt(
        30.0, "seconds between two fetches of a jwt_jwks URL (or reads of its file) that an "
        "unknown kid may trigger: tokens with made-up kids cannot make it fetch in a loop",
        min=1.0)
    rooms_deny_by_default: bool = _opt(False, "clients may not join or publish to rooms that no "
                                       "room policy matches")
    # Socket.IO clients (server/socketio/): Engine.IO v4 / Socket.IO v5 on the same port
    socketio: bool = _opt(True, "serve Socket.IO clients (Engine.IO v4) at socketio_path")
    socketio_path: str = _opt("/socket.io/", "path of the Socket.IO endpoint (the clients' "
                              "`path` option)")
    socketio_connect_timeout: float = _opt(45.0, "seconds a Socket.IO client may take to send "
                                           "its CONNECT after opening the transport", min=0.01)
    socketio_max_connect_refusals: int = _opt(
        10, "CONNECTs refused (CONNECT_ERROR) on one Socket.IO session; the session ends with "
        "the last (a bound on credential guesses per session)", min=1)
    socketio_max_packets_per_post: int = _opt(
        1000, "Engine.IO packets one long-polling POST body may carry (over: 400, the session "
        "ends)", min=1)
    socketio_max_attachments: int = _opt(
        10, "binary attachments one Socket.IO packet may announce (over: the session ends, "
        "\"parse error\")", min=0)
    socketio_recovery: bool = _opt(True, "with recovery_window: Socket.IO connection-state "
                                   "recovery (pid in CONNECT, an offset as the last argument "
                                   "of room events)")

    def __post_init__(self) -> None:
        for name in _LIST_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, list | tuple | set | frozenset):
                object.__setattr__(self, name, _join(name, value))
        for f in fields(self):
            value = getattr(self, f.name)
            expected = _field_type(f)
            if value is None and f.default is None:
                continue
            if expected is float and type(value) is int:
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            if type(value) is not expected:
                raise ConfigError(f.name, f"expected {expected.__name__}, got {value!r}")
            low, high = f.metadata["min"], f.metadata["max"]
            if low is not None and value < low:
                raise ConfigError(f.name, f"must be >= {low}, got {value!r}")
            if high is not None and value > high:
                raise ConfigError(f.name, f"must be <= {high}, got {value!r}")
        if self.enable_encryption and not (self.ssl_certfile and self.ssl_keyfile):
            raise ConfigError("enable_encryption", "needs ssl_certfile and ssl_keyfile")
        if not self.enable_encryption and (self.ssl_certfile or self.ssl_keyfile):
            # a certificate but plain ws://: refuse rather than serve clear text unnoticed
            name = "ssl_certfile" if self.ssl_certfile else "ssl_keyfile"
            raise ConfigError(name, "set, but enable_encryption is off: turn it on to serve "
                              "wss:// (--encryption, SMARTSOCKET_ENABLE_ENCRYPTION=true), or "
                              f"unset {name}")
        if 0 < self.room_rate_limit_burst < 1:  # a bucket that never holds one broadcast
            raise ConfigError("room_rate_limit_burst", "must be 0 (twice the rate) or >= 1")
        if self.max_write_buffer < self.write_buffer_high:
            raise ConfigError("max_write_buffer", "must be >= write_buffer_high")
        if self.node_timeout <= self.cluster_heartbeat:
            raise ConfigError("node_timeout", "must be longer than cluster_heartbeat")
        if self.cluster_url is not None and self.cluster_url.partition("://")[0].lower() not in (
            "redis", "rediss", "unix", "nats", "tls", "memory"
        ):
            raise ConfigError("cluster_url", "must start with redis://, nats:// or memory://")
        if self.recovery_window and self.cluster_url is not None and (
            self.cluster_url.partition("://")[0].lower() not in ("redis", "rediss", "unix")
        ):
            # History and sessions live in the broker: Redis streams, keys and scripts.
            raise ConfigError("recovery_window", "recovery in a cluster needs cluster_url "
                              "redis://... (NATS and memory:// cannot keep history)")
        if self.outbox_url is not None and self.outbox_url.partition("://")[0].lower() not in (
            "postgresql", "postgres"
        ):
            raise ConfigError("outbox_url", "must start with postgresql://")
        for name in ("cluster_url", "outbox_url"):
            problem = _url_problem(getattr(self, name))
            if problem:  # the broker or database link would retry it forever
                raise ConfigError(name, problem)
        if not self.cluster_prefix or not all(
            part.replace("-", "").replace("_", "").isalnum()
            for part in self.cluster_prefix.split(".")
        ):
            raise ConfigError("cluster_prefix", "letters, digits, '-', '_' and dots only")
        sources = [n for n in _JWT_KEY_SOURCES if getattr(self, n) is not None]
        if len(sources) > 1:
            raise ConfigError(sources[1], f"set only one of {', '.join(_JWT_KEY_SOURCES)}")
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < 32:
            raise ConfigError("jwt_secret", "at least 32 bytes for HS256 (RFC 7518 3.2)")
        if not self.socketio_path.startswith("/") or "?" in self.socketio_path:
            raise ConfigError("socketio_path", "must start with / and hold no query")
        if self.api_secret is not None and (
            len(self.api_secret) < 16 or not self.api_secret.isprintable()
            or any(c.isspace() for c in self.api_secret)
        ):
            raise ConfigError("api_secret", "at least 16 characters, printable, no spaces")
        if self.api_keys is not None and not any(k.strip() for k in self.api_keys.split(",")):
            raise ConfigError("api_keys", "holds no key")
        try:
            from smartsocket.security import parse_origins

            parse_origins(self.allowed_origins)
        except ValueError as exc:
            raise ConfigError("allowed_origins", str(exc)) from None

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated; unknown names raise ConfigError)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, overlaid by environment variables, overlaid by ``overrides``."""
        _check_names(overrides)
        values = env_values(os.environ if environ is None else environ)
        values.update(overrides)
        return cls(**values)


def _join(name: str, items: Any) -> str:
    """A list-like value of a comma-separated option, as the string it stands for."""
    if not items:  # "" would mean "off" (every origin allowed): say so instead of guessing
        raise ConfigError(name, "the list is empty (None turns the option off)")
    for item in items:
        if type(item) is not str:
            raise ConfigError(name, f"expected strings, got {item!r}")
        if "," in item:
            raise ConfigError(name, f"an item may not contain a comma, got {item!r}")
    # A set has no order: sort it so equal configs compare (and print) alike.
    ordered = sorted(items) if isinstance(items, set | frozenset) else list(items)
    return ",".join(ordered)


def _url_problem(url: str | None) -> str | None:
    """Why ``url`` (a broker's or a database's) cannot be connected to, whatever the network
    does; None if it may be."""
    if url is None or url.partition("://")[0].lower() in ("memory", "unix"):
        return None
    from urllib.parse import urlsplit

    scheme = url.partition("://")[0]
    try:
        hosts = urlsplit(url).netloc.rpartition("@")[2]
        for host in hosts.split(","):  # a Redis Cluster's seed nodes: h1:7000,h2:7000
            urlsplit(f"{scheme}://{host}").port  # noqa: B018 (a port that is no number raises)
    except ValueError as exc:
        return f"not a valid URL ({exc}), e.g. {scheme}://127.0.0.1:PORT"
    return None


def env_names(name: str) -> list[str]:
    """Env vars that set option ``name``, highest precedence first."""
    names = [f"SMARTSOCKET_{name.upper()}"]
    if name in _SEED_ENV:
        names.append(_SEED_ENV[name])
    return names


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options set by env vars, parsed to their types (ConfigError names the bad variable)."""
    values: dict[str, Any] = {}
    for f in fields(Config):
        for var in env_names(f.name):
            raw = environ.get(var)
            if raw is not None and raw != "":
                values[f.name] = parse_value(f.name, raw, source=var)
                break
    return values


def parse_value(name: str, raw: str, *, source: str | None = None) -> Any:
    """Parse a string (env var or CLI flag) into option ``name``'s type."""
    f = _FIELDS[name]
    kind = _field_type(f)
    label = source or name
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(label, f"expected true/false, got {raw!r}")
    if kind is str:
        return raw
    try:
        return kind(raw)
    except ValueError:
        hint = ""
        if raw.startswith("tcp://") and label.startswith("SMARTSOCKET_"):
            # Kubernetes' service links: a Service named "smartsocket" sets SMARTSOCKET_PORT
            hint = (" (Kubernetes sets it for a Service named smartsocket: set the pod's "
                    "enableServiceLinks: false, or rename the Service)")
        raise ConfigError(label, f"expected {kind.__name__}, got {raw!r}{hint}") from None


def option_fields() -> tuple[dataclasses.Field[Any], ...]:
    return fields(Config)


def field_type(name: str) -> type:
    return _field_type(_FIELDS[name])


def _field_type(f: dataclasses.Field[Any]) -> type:
    # Annotations are strings (postponed evaluation): map them once to runtime types.
    return _TYPES[str(f.type).replace(" | None", "")]


_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
_FIELDS = {f.name: f for f in fields(Config)}


# python-socketio's names for options that have another name here (docs/socketio.md).
_SOCKETIO_NAMES = {"cors_allowed_origins": "allowed_origins",
                   "max_http_buffer_size": "max_message_size"}


def _check_names(values: Mapping[str, Any]) -> None:
    import difflib

    for name in values:
        if name not in _FIELDS:
            enable = f"enable_{name}"  # compression=False: the CLI's --compression
            close = _SOCKETIO_NAMES.get(name) or (enable if enable in _FIELDS else None) or next(
                iter(difflib.get_close_matches(name, list(_FIELDS), n=1, cutoff=0.6)), None)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(name, "unknown option" + hint)
