"""The channels of a cluster whose ``cluster_prefix`` is ``prefix`` (``node.py`` describes
them), also for publishers that are no node, e.g. an emitter: ``all_channel(prefix)`` for
``messages.SendToUser``."""

from __future__ import annotations

import base64
import binascii
import re

_SAFE = re.compile(r"[A-Za-z0-9_\-]+")


def channel_token(name: str) -> str:
    """A room name as one channel token, safe in a NATS subject; injective ('~' marks the
    encoded ones, and plain tokens never contain it)."""
    if _SAFE.fullmatch(name):
        return name
    return "~" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def all_channel(prefix: str) -> str:
    """What every node hears."""
    return f"{prefix}.all"


def inbox_channel(prefix: str, node: str) -> str:
    """Node ``node``'s inbox."""
    return f"{prefix}.node.{node}"


def room_channel(prefix: str, room: str) -> str:
    """Room ``room``'s broadcasts and presence changes."""
    return f"{prefix}.room.{channel_token(room)}"


def token_room(token: str) -> str | None:
    """The room a channel token names (``channel_token`` inverted); None if invalid."""
    if not token.startswith("~"):
        return token or None
    body = token[1:] + "=" * (-len(token[1:]) % 4)
    try:
        return base64.b64decode(body, altchars=b"-_", validate=True).decode() or None
    except (binascii.Error, UnicodeDecodeError):
        return None
