"""``smartsocket`` command line: ``serve`` (the demo app or ``--app module:attr``),
``stats URL`` and ``publish URL ROOM EVENT DATA`` (through the HTTP API).

Mistakes a user can fix (a port in use, a wrong ``--app``, a missing certificate or extra)
end with one line on stderr that says what is wrong and what to do, never a traceback: exit
status 2 for usage errors, 1 for the others."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from smartsocket._version import __version__
from smartsocket.config import Config, env_names, field_type, option_fields, parse_value
from smartsocket.config_file import ConfigFile, ConfigFileError, layered
from smartsocket.config_file import load as load_config_file
from smartsocket.errors import ConfigError, MissingDependency
from smartsocket.logs import JsonFormatter, SkipReadyRecord, error_line, ready_line
from smartsocket.server import SmartSocket
from smartsocket.server.app import ListenAtImport, importing_app

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

DESCRIPTION = """\
SmartSocket: a real-time WebSocket server.

  smartsocket serve            run the demo chat server on port 8080
  smartsocket serve --app myapp:server
                               run your own server (a SmartSocket in myapp.py)
  smartsocket stats URL        print a running server's figures
  smartsocket publish URL ROOM EVENT DATA
                               publish to a room through the server's HTTP API"""

SERVE_DESCRIPTION = """\
Run a SmartSocket server: the demo chat app, or your own with --app module:attr (a SmartSocket
instance, or a function that takes a Config and returns one).

Every option below can also be set by an environment variable, SMARTSOCKET_<OPTION> (e.g.
SMARTSOCKET_MAX_CONNECTIONS=500); PORT, HOST, ENABLE_COMPRESSION, ENABLE_METRICS,
MAX_CONNECTIONS and ENABLE_ENCRYPTION work without the prefix too. Flags win over
environment variables."""


class Failure(Exception):
    """Something the user can fix: one line on stderr, exit status ``code``."""

    code = 1


class UsageError(Failure):
    """A mistake on the command line: exit status 2."""

    code = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage of ``serve`` is a page)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="smartsocket", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smartsocket {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND"
    )
    serve = commands.add_parser(
        "serve", usage="smartsocket serve [--app MODULE:ATTR] [--port PORT] [OPTION ...]",
        help="run a server (the demo app unless --app is given)",
        description=SERVE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--app", metavar="MODULE:ATTR",
        help="your server: a SmartSocket instance (myapp:server) or a function that takes a "
        "Config and returns one; the module is looked up from the current directory",
    )
    serve.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
        metavar="LEVEL", help="DEBUG, INFO (the default), WARNING or ERROR",
    )
    serve.add_argument(
        "--log-file", metavar="PATH",
        help="append logs to PATH instead of stderr; SIGHUP reopens it (log rotation)",
    )
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    serve.add_argument(
        "--config", metavar="PATH",
        help="a TOML file of options and room policies (docs/auth.md); env vars and flags "
        "win over it (env SMARTSOCKET_CONFIG)",
    )
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="run N processes on one port (SO_REUSEPORT) joined by --cluster-url; a worker "
        "that dies is restarted",
    )
    for f in option_fields():
        flag = "--" + f.name.replace("_", "-")
        envs = ", ".join(env_names(f.name))
        default = "unset" if f.default is None else repr(f.default)
        help_text = f"{f.metadata['help']} (default {default}; env {envs})"
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
        "stats", help="print a running server's figures",
        description="Fetch URL/smartsocket/stats (ws:// and wss:// URLs work too) and print "
        "it as a table, or as JSON with --json.",
    )
    stats.add_argument("url", help="the server, e.g. http://localhost:8080 or ws://host:8080/")
    stats.add_argument("--json", action="store_true", help="print the raw JSON")
    stats.add_argument("--token", help="the server's stats_token, if it has one")
    publish = commands.add_parser(
        "publish", help="publish to a room through the server's HTTP API",
        description="POST URL/smartsocket/api/publish: send EVENT with DATA (JSON) to ROOM's "
        "members on every node. The secret comes from --api-secret or SMARTSOCKET_API_SECRET "
        "(prefer the env var: command lines are visible to other users).",
    )
    publish.add_argument("url", help="the server, e.g. http://localhost:8080 or ws://host:8080/")
    publish.add_argument("room")
    publish.add_argument("event")
    publish.add_argument("data", help="JSON, e.g. '{\"text\": \"hi\"}' or '\"hi\"' for a string")
    publish.add_argument("--api-secret", help="the server's api_secret")
    publish.add_argument("--exclude", action="append", default=[], metavar="SID",
                         help="a socket id not to deliver to (repeatable)")
    return parser


def http_url(url: str, path: str) -> str:
    """``path`` on the server at ``url`` (http, https, ws, wss or a bare host:port). Raises
    UsageError for what is no such URL."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
        parts.port  # noqa: B018 (a port that is no number raises here)
    except ValueError as exc:
        raise UsageError(f"{url!r} is not a server URL ({exc}): e.g. http://localhost:8080"
                         ) from None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not a server URL: give http://, https://, ws:// or "
                         "wss:// and a host, e.g. http://localhost:8080")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _unreachable(url: str, exc: BaseException) -> Failure:
    """``cannot reach URL: Connection refused (...)``: the OS's words, not urllib's repr."""
    reason: Any = getattr(exc, "reason", exc)
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return Failure(f"cannot reach {url}: {text} (is a SmartSocket server running at that "
                   "address? check the host, the port and http/https)")


def publish_command(args: argparse.Namespace) -> int:
    """``smartsocket publish URL ROOM EVENT DATA``: one API call, quiet on success."""
    import json
    import urllib.error
    import urllib.request

    try:
        data = json.loads(args.data)
    except ValueError:
        raise UsageError(
            f"DATA must be JSON (a string is quoted: '\"{args.data}\"'), got {args.data!r}"
        ) from None
    secret = args.api_secret or os.environ.get("SMARTSOCKET_API_SECRET")
    if not secret:
        raise UsageError("give the server's api_secret: --api-secret or SMARTSOCKET_API_SECRET")
    url = http_url(args.url, "/smartsocket/api/publish")
    body: dict[str, Any] = {"room": args.room, "event": args.event, "data": data}
    if args.exclude:
        body["exclude"] = args.exclude
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {secret}", "Content-Type": "application/json",
    })
    try:
        with urllib.request.urlopen(request, timeout=10):
            return 0
    except urllib.error.HTTPError as exc:
        raise Failure(f"publish refused by {url}: {_api_error(exc)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _unreachable(url, exc) from None


def _api_error(exc: Any) -> str:
    """``HTTP 403 forbidden: wrong API secret`` from an API error answer."""
    import json

    try:
        error = json.loads(exc.read())["error"]
        where = f" (field {error['field']})" if "field" in error else ""
        return f"HTTP {exc.code} {error['code']}: {error['message']}{where}"
    except (ValueError, KeyError, TypeError, OSError):
        hint = " (is api_secret set on the server?)" if exc.code == 404 else ""
        return f"HTTP {exc.code} {exc.reason}{hint}"


def stats_command(args: argparse.Namespace) -> int:
    """``smartsocket stats URL``: the stats as a table (or JSON)."""
    import json
    import urllib.error
    import urllib.request

    url = http_url(args.url, "/smartsocket/stats")
    request = urllib.request.Request(url)
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            stats = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            what = "refused --token" if args.token else "needs its stats_token: give --token"
            raise Failure(f"{url}: HTTP 401: the server {what}") from None
        raise Failure(f"{url}: HTTP {exc.code} {exc.reason} (is it a SmartSocket server?)"
                      ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(url, exc) from None
    except ValueError:
        raise Failure(f"{url} did not answer JSON (is it a SmartSocket server?)") from None
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


def config_file_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ConfigFile | None:
    """The ``--config`` file (or ``SMARTSOCKET_CONFIG``), read and checked; None if unset."""
    environ = os.environ if environ is None else environ
    path = getattr(args, "config", None) or environ.get("SMARTSOCKET_CONFIG") or None
    return None if path is None else load_config_file(path)


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None,
    file: ConfigFile | None = None,
) -> Config:
    """Defaults < config file < env vars < flags. Flags arrive as strings and are parsed like
    env vars."""
    overrides: dict[str, Any] = {}
    for f in option_fields():
        value = getattr(args, f.name)
        if value is None:
            continue
        overrides[f.name] = value if isinstance(value, bool) else parse_value(
            f.name, value, source="--" + f.name.replace("_", "-")
        )
    return Config(**layered(file, os.environ if environ is None else environ, overrides))


# SMARTSOCKET_* variables the CLI reads that are not options.
_OTHER_ENV = ("SMARTSOCKET_CONFIG", "SMARTSOCKET_WORKER_ID")


def _warn_misspelled_env(environ: Mapping[str, str]) -> None:
    """A warning for SMARTSOCKET_PORTT and the like: an unknown variable close to a known one
    (others, such as those Kubernetes derives from a service's name, are no concern of ours)."""
    import difflib

    known = [*(var for f in option_fields() for var in env_names(f.name)), *_OTHER_ENV]
    for var in sorted(environ):
        if var.startswith("SMARTSOCKET_") and var not in known:
            close = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
            if close:
                logging.getLogger("smartsocket.cli").warning(
                    "ignoring the environment variable %s: no such option (did you mean %s?)",
                    var, close[0],
                )


def load_app(spec: str, config: Config) -> SmartSocket:
    """``module:attr``: a SmartSocket (given the CLI's config) or a factory taking a Config.
    Raises UsageError with what is wrong when ``spec`` does not name one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--app must look like module:attr (e.g. myapp:server), got {spec!r}")
    importing = importing_app.set(spec)
    try:
        module = importlib.import_module(module_name)
    except ListenAtImport as exc:
        raise UsageError(str(exc)) from None
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the module exists but imports something missing: its own bug, traceback
        raise UsageError(
            f"--app {spec}: no module named {module_name!r} in {os.getcwd()} or on "
            "PYTHONPATH (run smartsocket from the directory that holds it)"
        ) from None
    finally:
        importing_app.reset(importing)
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise UsageError(
            f"--app {spec}: module {module_name!r} has no {attr!r} (name the SmartSocket "
            "instance, or a function that returns one)"
        ) from None
    if isinstance(target, SmartSocket):
        target.config = config
        return target
    if isinstance(target, type) and issubclass(target, SmartSocket):
        return target(config=config)
    factory = callable(target) and not isinstance(target, type)
    if factory and not _takes_one_argument(target):
        raise UsageError(
            f"--app {spec} is a function that does not take a Config (name a SmartSocket "
            "instance, or a function that takes a Config and returns one)"
        )
    app = target(config) if factory else target
    if not isinstance(app, SmartSocket):
        made = "returned" if app is not target else "is"
        raise UsageError(
            f"--app {spec} {made} {_a(type(app).__name__)}, not a SmartSocket (name a "
            "SmartSocket instance, or a function that takes a Config and returns one)"
        )
    return app


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _takes_one_argument(fn: Any) -> bool:
    import inspect

    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): try it
        return True
    return True


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
        try:
            return stats_command(args)
        except Failure as exc:
            print(error_line(str(exc), as_json=False), file=sys.stderr)
            return exc.code
        except BrokenPipeError:
            # `smartsocket stats URL | head`: the reader left, as intended. Quiet, like other
            # tools; stdout goes to /dev/null so the interpreter's final flush fails no more.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    if args.command == "publish":
        try:
            return publish_command(args)
        except Failure as exc:
            print(error_line(str(exc), as_json=False), file=sys.stderr)
            return exc.code
    try:
        return serve_command(args, argv)
    except ConfigFileError as exc:
        return _stop(args, f"config file {exc}", 2)
    except ConfigError as exc:
        return _stop(args, f"invalid option {_with_source(args, exc)}", 2)
    except MissingDependency as exc:
        return _stop(args, str(exc), 1)
    except Failure as exc:
        return _stop(args, str(exc), exc.code)


def _with_source(args: argparse.Namespace, exc: ConfigError) -> str:
    """``max_connections (SMARTSOCKET_MAX_CONNECTIONS): must be >= 1``: where the value came
    from, so that the user knows what to change (a flag wins over env vars)."""
    names = {f.name for f in option_fields()}
    if exc.option not in names:
        return str(exc)  # names its source already (an env var or flag that did not parse)
    message = str(exc).removeprefix(f"{exc.option}: ")
    if getattr(args, exc.option, None) is not None:
        return f"{exc.option} (--{exc.option.replace('_', '-')}): {message}"
    source = next((var for var in env_names(exc.option) if os.environ.get(var)), None)
    return f"{exc.option} ({source}): {message}" if source else str(exc)


def _stop(args: argparse.Namespace, message: str, code: int) -> int:
    # With --log-json every line is JSON, the last one too.
    print(error_line(message, as_json=args.log_json), file=sys.stderr)
    return code


def serve_command(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    if args.workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {args.workers}")
    try:
        log_file = _log_file(args.log_file) if args.log_file else None
    except OSError as exc:
        raise UsageError(f"--log-file {args.log_file}: cannot open it: "
                         f"{exc.strerror or exc} (give a writable file path)") from None
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[log_file] if log_file is not None else None,
    )
    for handler in logging.getLogger().handlers:
        if args.log_json:
            handler.setFormatter(JsonFormatter())
        if handler is not log_file:  # the terminal shows the ready line already
            handler.addFilter(SkipReadyRecord())
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connection at INFO
    file = config_file_from_args(args)
    config = config_from_args(args, file=file)
    _warn_misspelled_env(os.environ)
    if args.workers > 1:
        from smartsocket.supervisor import SupervisorError, run_workers

        def workers_ready(message: str, url: str) -> None:
            print(ready_line(message, url, as_json=args.log_json), flush=True)

        argv = sys.argv[1:] if argv is None else list(argv)
        try:
            return run_workers(argv, args.workers, config, workers_ready)
        except SupervisorError as exc:
            failure = UsageError(str(exc)) if exc.code == 2 else Failure(str(exc))
            raise failure from None
    if args.app:
        sys.path.insert(0, os.getcwd())
        server = load_app(args.app, config)
    else:
        from smartsocket.demo import create_app

        server = create_app(config)
    if file is not None:
        try:
            server.add_policies(file.rooms)
        except ValueError as exc:  # a pattern the app set already
            raise UsageError(f"{file.path}: rooms: {exc}") from None
    listening = False

    def started() -> None:
        nonlocal listening
        listening = True
        if log_file is not None:
            _reopen_on_sighup(log_file)
        message = f"listening on {server.listening}"
        print(ready_line(message, server.url, as_json=args.log_json), flush=True)

    try:
        server.listen(started)
    except OSError as exc:
        if listening:
            raise
        where = f"{config.host or '0.0.0.0'}:{config.port}"
        if exc.errno == errno.EADDRINUSE:
            raise Failure(f"port {config.port} is already in use ({where}): stop the server "
                          "that holds it, or choose another port with --port") from None
        raise Failure(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
