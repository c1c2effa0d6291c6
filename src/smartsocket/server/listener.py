"""The listening socket: the TLS context and the transport's server, from the configuration."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from typing import Any

from smartsocket.config import Config
from smartsocket.errors import ConfigError
from smartsocket.transport import (
    Accept,
    HandshakeRequest,
    HttpLimits,
    HttpResponse,
    Serve,
    ServedConnections,
    create_server,
)


def ssl_context(cfg: Config) -> ssl.SSLContext | None:
    """The server's TLS context (None without ``enable_encryption``)."""
    if not cfg.enable_encryption:
        return None
    assert cfg.ssl_certfile is not None and cfg.ssl_keyfile is not None
    # ssl's own errors name neither the option nor the file ("[SSL] PEM lib", a bare
    # FileNotFoundError): say which one is wrong.
    for option, path in (("ssl_certfile", cfg.ssl_certfile), ("ssl_keyfile", cfg.ssl_keyfile)):
        if not os.path.isfile(path):
            raise ConfigError(option, f"no such file: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            "ssl_certfile", f"cannot load {cfg.ssl_certfile} with key {cfg.ssl_keyfile}: "
            f"{getattr(exc, 'reason', None) or exc} (PEM certificate chain and its key?)"
        ) from exc
    return context


async def bind(
    cfg: Config, route: Callable[[HandshakeRequest], HttpResponse | Accept | Serve],
    clock: Callable[[], int], served: ServedConnections | None = None,
) -> asyncio.Server:
    """Listen as ``cfg`` says; ``route`` answers each request, ``clock`` paces frame rates."""
    return await create_server(
        route,
        host=cfg.host,
        port=cfg.port,
        max_message_size=cfg.max_message_size,
        handshake_timeout=cfg.handshake_timeout,
        ssl=ssl_context(cfg),
        compression_level=cfg.compression_level,
        compression_threshold=cfg.compression_threshold,
        write_buffer_high=cfg.write_buffer_high,
        max_write_buffer=cfg.max_write_buffer,
        max_fragments=cfg.max_fragments,
        frame_rate=cfg.rate_limit_frames,
        clock=clock,
        fast_transport=cfg.fast_transport,
        reuse_port=cfg.reuse_port,
        backlog=cfg.backlog,
        http_limits=http_limits(cfg),
        served=served,
    )


def http_limits(cfg: Config) -> HttpLimits:
    """Bounds of served plain requests (per-IP: the WebSocket's ``max_connections_per_ip``,
    counted apart)."""
    return HttpLimits(
        max_body=cfg.max_http_body, body_timeout=cfg.http_body_timeout,
        keepalive_timeout=cfg.http_keepalive_timeout,
        keepalive_requests=cfg.http_keepalive_requests,
        max_per_ip=cfg.max_connections_per_ip,
    )


def run(main: Any) -> None:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
