"""``smartsocket`` command line: ``serve`` (the demo app or ``--app module:attr``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from smartsocket._version import __version__
from smartsocket.config import Config, env_names, field_type, option_fields, parse_value
from smartsocket.errors import ConfigError
from smartsocket.logs import JsonFormatter
from smartsocket.server import SmartSocket


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartsocket", description=__doc__)
    parser.add_argument("--version", action="version", version=f"smartsocket {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run a server (the demo app unless --app is given)",
        description="Run a SmartSocket server. Every option can also be set by env var "
        "(SMARTSOCKET_<OPTION>; PORT, HOST, ENABLE_* as in the seed README); flags win.",
    )
    serve.add_argument("--app", help="module:attr of a SmartSocket instance or factory(config)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument(
        "--log-file", metavar="PATH",
        help="append logs to PATH instead of stderr; SIGHUP reopens it (log rotation)",
    )
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="run N processes on one port (SO_REUSEPORT) joined by --cluster-url; a worker "
        "that dies is restarted",
    )
    for f in option_fields():
        flag = "--" + f.name.replace("_", "-")
        envs = ", ".join(env_names(f.name))
        help_text = f"{f.metadata['help']} (default {f.default!r}; env {envs})"
        if field_type(f.name) is bool:
            # enable_compression: --compression/--no-compression (and the long form)
            flags = [flag]
            if f.name.startswith("enable_"):
                flags.insert(0, "--" + f.name.removeprefix("enable_").replace("_", "-"))
            serve.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )
        else:
            serve.add_argument(flag, dest=f.name, default=None, metavar="VALUE", help=help_text)
    stats = commands.add_parser(
        "stats", help="print a server's /smartsocket/stats",
        description="Fetch URL/smartsocket/stats (ws:// and wss:// URLs work too) and print it.",
    )
    stats.add_argument("url", help="the server, e.g. http://localhost:8080 or ws://host:8080/")
    stats.add_argument("--json", action="store_true", help="print the raw JSON")
    stats.add_argument("--token", help="the server's stats_token, if it has one")
    return parser


def stats_command(args: argparse.Namespace) -> int:
    """``smartsocket stats URL``: the stats as a table (or JSON)."""
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(args.url if "://" in args.url else "http://" + args.url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    url = urlunsplit((scheme, parts.netloc, "/smartsocket/stats", "", ""))
    request = urllib.request.Request(url)
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            stats = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"smartsocket: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(format_stats(stats))
    return 0


def format_stats(stats: dict[str, Any]) -> str:
    """A two-column table of the figures people look at first."""
    t = stats.get("transmission", {})
    rates = stats.get("rates", {})
    latency = stats.get("latency", {})
    process = stats.get("process", {})

    def num(value: Any, unit: str = "", digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}{unit}"

    rows = [
        ("connections", f"{stats.get('connections', 0):,}"),
        ("total connections", f"{stats.get('totalConnections', 0):,}"),
        ("rooms", f"{stats.get('rooms', 0):,}"),
        ("uptime", f"{stats.get('uptime', 0):,} s"),
        ("messages in / s", num(rates.get("messagesInPerSecond"))),
        ("messages out / s", num(rates.get("messagesOutPerSecond"))),
        ("bytes in / s", num(rates.get("bytesInPerSecond"), " B", 0)),
        ("bytes out / s", num(rates.get("bytesOutPerSecond"), " B", 0)),
        ("latency p50 / p99", f"{num(latency.get('p50Ms'), ' ms', 2)} / "
                              f"{num(latency.get('p99Ms'), ' ms', 2)}"),
        ("total messages", f"{t.get('totalMessages', 0):,}"),
        ("data transmitted", str(t.get("totalDataTransmitted", "-"))),
        ("on the wire", str(t.get("totalCompressed", "-"))),
        ("bandwidth saved", str(t.get("bandwidthSaved", "-"))),
        ("memory (RSS)", num((process.get("rssBytes") or 0) / 1048576, " MiB")),
        ("CPU", num(process.get("cpuPercent"), " %")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Defaults < env vars < flags. Flags arrive as strings and are parsed like env vars."""
    overrides: dict[str, Any] = {}
    for f in option_fields():
        value = getattr(args, f.name)
        if value is None:
            continue
        overrides[f.name] = value if isinstance(value, bool) else parse_value(
            f.name, value, source="--" + f.name.replace("_", "-")
        )
    return Config.from_env(os.environ if environ is None else environ, **overrides)


def load_app(spec: str, config: Config) -> SmartSocket:
    """``module:attr``: a SmartSocket (given the CLI's config) or a factory taking a Config."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--app must look like module:attr, got {spec!r}")
    target = getattr(importlib.import_module(module_name), attr)
    if isinstance(target, SmartSocket):
        target.config = config
        return target
    app = target(config)
    if not isinstance(app, SmartSocket):
        raise SystemExit(f"{spec} returned {type(app).__name__}, not a SmartSocket")
    return app


class ReopenableFileHandler(logging.FileHandler):
    """A log file that ``reopen()`` closes and opens again at the same path: once logrotate
    (or anyone) has renamed it, new lines go to a new file at that path."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def _log_file(path: str) -> ReopenableFileHandler:
    handler = ReopenableFileHandler(path, encoding="utf-8")
    if hasattr(signal, "SIGHUP"):
        # Until the event loop takes SIGHUP over (_reopen_on_sighup), it must not kill us.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return handler


def _reopen_on_sighup(handler: ReopenableFileHandler) -> None:
    """In the running loop: SIGHUP reopens the log file (``kill -HUP``, logrotate)."""
    if not hasattr(signal, "SIGHUP"):
        return
    import asyncio

    def reopen() -> None:
        handler.reopen()
        logging.getLogger("smartsocket").info("reopened log file %s", handler.baseFilename)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reopen)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "stats":
        return stats_command(args)
    log_file = _log_file(args.log_file) if args.log_file else None
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[log_file] if log_file is not None else None,
    )
    if args.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connection at INFO
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"smartsocket: invalid option {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        from smartsocket.cluster.workers import run_workers

        return run_workers(sys.argv[1:] if argv is None else list(argv), args.workers, config)
    if args.app:
        sys.path.insert(0, os.getcwd())
        server = load_app(args.app, config)
    else:
        from smartsocket.demo import create_app

        server = create_app(config)

    def started() -> None:
        if log_file is not None:
            _reopen_on_sighup(log_file)
        print(f"SmartSocket listening on {server.url}", flush=True)

    server.listen(started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
