"""``smartsocket`` command line: ``serve`` (the demo app or ``--app module:attr``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from smartsocket._version import __version__
from smartsocket.config import Config, env_names, field_type, option_fields, parse_value
from smartsocket.errors import ConfigError
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
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connection at INFO
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"smartsocket: invalid option {exc}", file=sys.stderr)
        return 2
    if args.app:
        sys.path.insert(0, os.getcwd())
        server = load_app(args.app, config)
    else:
        from smartsocket.demo import create_app

        server = create_app(config)
    server.listen(lambda: print(f"SmartSocket listening on {server.url}", flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
