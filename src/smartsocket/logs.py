"""Log formatting for the CLI. The library itself only logs through ``logging`` and never
configures handlers; ``smartsocket serve --log-json`` uses ``JsonFormatter``.

The CLI also prints one *ready line* on stdout once the port is bound ("SmartSocket listening
on ... ws://127.0.0.1:8080/", or that as a JSON log entry with ``--log-json``): scripts, the
``--workers`` supervisor and the tests wait for it and read the URL from it."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, exception, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry, enc_hook=repr).decode()


def ready_line(message: str, url: str, *, as_json: bool) -> str:
    """The ready line: plain text ending with ``url``, or a JSON entry with ``url`` and
    ``event: "listening"``."""
    if not as_json:
        return f"SmartSocket {message}"
    record = logging.LogRecord("smartsocket.cli", logging.INFO, __file__, 0, message, None, None)
    record.event = "listening"
    record.url = url
    return JsonFormatter().format(record)


def error_line(message: str, *, as_json: bool) -> str:
    """Why the CLI stops: ``smartsocket: <message>``, or a JSON entry at ERROR."""
    if not as_json:
        return f"smartsocket: {message}"
    record = logging.LogRecord("smartsocket.cli", logging.ERROR, __file__, 0, message, None, None)
    return JsonFormatter().format(record)


def ready_url(line: str) -> str | None:
    """The URL of a ready line (either form), or None if ``line`` is not one."""
    line = line.strip()
    if line.startswith("{"):
        try:
            entry = msgspec.json.decode(line)
        except msgspec.DecodeError:
            return None
        if type(entry) is not dict or entry.get("event") != "listening":
            return None
        url = entry.get("url")
        return url if type(url) is str else None
    if "listening on" not in line:
        return None
    return line.rsplit(" ", 1)[1]


class SkipReadyRecord(logging.Filter):
    """Keeps the server's own "listening on" record off a stream that already shows the
    ready line (the terminal): one line, not two."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) != "listening"
