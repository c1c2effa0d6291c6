"""``smartsocket.toml``: every server option, the JWT options and room policies in one file
(``smartsocket serve --config smartsocket.toml``).

    port = 8080
    api_keys = ["key-1", "key-2"]          # list options take a TOML array or a string
    jwt_public_key = "keys/auth.pem"       # paths are relative to this file
    jwt_audience = "chat-app"
    rooms_deny_by_default = true

    [rooms."chat:*"]                       # a room pattern (room_patterns): quote it
    join = "grant"                         # or a list: ["grant", "subscription"]
    publish = "members"
    presence = true
    history_size = 200

Top-level keys are option names as in ``Config`` (and the CLI flags without ``--``, with
``_``); values have TOML's types (``port = "80"`` is an error, ``ping_interval = 5`` is fine).
This module checks each key on its own: its name (unknown: a did-you-mean), its type, its
range and syntax. Rules that tie options together are ``Config``'s, checked once the file,
env vars and flags are merged (defaults < file < env vars < flags), since an env var may
supply the other half (``jwt_secret`` from the environment, ``jwt_audience`` from the file).

The result is a ``ConfigFile``: ``options`` is what ``Config.replace(**options)`` takes and
``rooms`` the policies by pattern (``policies()`` builds a ``RoomPolicies``).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from smartsocket.config import Config, env_values, field_type, option_fields
from smartsocket.errors import ConfigError
from smartsocket.policies import Join, Publish, RoomPolicies, RoomPolicy
from smartsocket.room_patterns import pattern_problem

# Options that hold several values: a TOML array of strings, or one comma-separated string.
LIST_OPTIONS = frozenset({"api_keys", "allowed_origins", "presence_rooms", "jwt_audience"})
# Files: a relative path is taken from the config file's directory, and must exist.
PATH_OPTIONS = frozenset({"ssl_certfile", "ssl_keyfile", "jwt_public_key", "jwt_jwks"})
# Options whose syntax Config checks on their own, independent of every other option.
_SYNTAX_CHECKED = frozenset({"cluster_url", "cluster_prefix", "allowed_origins", "api_keys"})
_KEY_SOURCES = ("jwt_secret", "jwt_public_key", "jwt_jwks")

# Room policy keys -> (type, minimum); join and publish are checked by RoomPolicy.
_ROOM_KEYS: dict[str, tuple[type, float | None]] = {
    "join": (list, None),
    "publish": (str, None),
    "presence": (bool, None),
    "history_size": (int, 0),
    "history_ttl": (float, 0),
    "rate_limit_messages": (float, 0),
    "rate_limit_burst": (float, 0),
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_TYPE = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
              list: "an array", dict: "a table"}


class ConfigFileError(ConfigError):
    """A config file is wrong: ``path`` and ``key`` (dotted, as written in TOML) say where."""

    def __init__(self, path: str, key: str | None, message: str) -> None:
        where = f"{path}: {key}" if key else path
        super().__init__(where, message)
        self.path = path
        self.key = key
        self.option = key or ""


@dataclass(frozen=True, slots=True)
class ConfigFile:
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    rooms: dict[str, RoomPolicy] = field(default_factory=dict)

    def config_options(self) -> dict[str, Any]:
        """The options, for ``Config(**options)``."""
        known = {f.name for f in fields(Config)}
        return {k: v for k, v in self.options.items() if k in known}

    def policies(self, **kwargs: Any) -> RoomPolicies:
        """The room policies, with ``rooms_deny_by_default`` from the file."""
        kwargs.setdefault("deny_by_default", self.options.get("rooms_deny_by_default", False))
        return RoomPolicies(self.rooms, **kwargs)


def layered(file: ConfigFile | None, environ: Mapping[str, str],
            flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of defaults < ``file`` < env vars < ``flags``, for ``Config(**options)``
    (what ``smartsocket serve --config FILE`` and ``SmartSocket.from_file`` do)."""
    options = dict(file.config_options()) if file is not None else {}
    options.update(env_values(environ))
    options.update(flags or {})
    return options


def load(path: str | Path) -> ConfigFile:
    """Read and check ``path``. Raises ConfigFileError."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(name, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(name, None, "not UTF-8 text") from None
    return parse(text, name, Path(path).resolve().parent)


def parse(text: str, path: str = "smartsocket.toml", base: Path | None = None) -> ConfigFile:
    """Check the TOML ``text`` (read from ``path``; relative file paths start at ``base``)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, None, f"not valid TOML: {exc}") from None
    options: dict[str, Any] = {}
    rooms: dict[str, RoomPolicy] = {}
    for key, value in doc.items():
        if key == "rooms":
            rooms = _rooms(path, value)
        else:
            options[key] = _option(path, key, value, base)
    sources = [k for k in _KEY_SOURCES if k in options]
    if len(sources) > 1:
        raise ConfigFileError(path, sources[1], f"set only one of {', '.join(_KEY_SOURCES)}")
    if options.get("rooms_deny_by_default") and "*" in rooms:
        raise ConfigFileError(path, 'rooms."*"', "rooms_deny_by_default = true and a '*' "
                              "policy contradict each other: remove one")
    return ConfigFile(path, options, rooms)


def _option(path: str, key: str, value: Any, base: Path | None) -> Any:
    types = _option_types()
    if key not in types:
        raise ConfigFileError(path, _quote(key), "unknown option" + _did_you_mean(
            key.replace("-", "_").lower(), [*types, "rooms"]))
    kind, low, high = types[key]
    if isinstance(value, dict):
        raise ConfigFileError(path, _quote(key), f"expected {_TOML_TYPE[kind]}, got a table "
                              f"(options are top-level keys: {key} = ...)")
    if key in LIST_OPTIONS and isinstance(value, list):
        if not value or not all(type(v) is str and v and "," not in v for v in value):
            raise ConfigFileError(path, key, "expected a non-empty array of strings without "
                                  "commas")
        value = ",".join(value)
    value = _typed(path, _quote(key), value, kind)
    if low is not None and value < low:
        raise ConfigFileError(path, key, f"must be >= {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ConfigFileError(path, key, f"must be <= {high:g}, got {value!r}")
    if key in PATH_OPTIONS and not (key == "jwt_jwks" and "://" in value):
        file = Path(value).expanduser()
        if not file.is_absolute() and base is not None:
            file = base / file
        if not file.is_file():
            raise ConfigFileError(path, key, f"no such file: {file}")
        value = str(file)
    if key == "jwt_jwks" and "://" in value and not value.startswith(("https://", "http://")):
        raise ConfigFileError(path, key, "a JWKS URL must start with https://")
    if key == "jwt_secret" and len(value.encode()) < 32:
        raise ConfigFileError(path, key, "at least 32 bytes for HS256 (RFC 7518 3.2); "
                              "prefer the SMARTSOCKET_JWT_SECRET env var to a file")
    if key in _SYNTAX_CHECKED:
        try:
            Config(**{key: value})
        except ConfigError as exc:
            raise ConfigFileError(path, key, str(exc).removeprefix(f"{key}: ")) from None
    return value


def _typed(path: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        got = _TOML_TYPE.get(type(value), type(value).__name__)
        hint = ""
        if type(value) is str and _parses_as(value, kind):
            hint = f" (write {key} = {value}, without quotes)"
        raise ConfigFileError(path, key, f"expected {_TOML_TYPE[kind]}, got {got} "
                              f"{value!r}{hint}")
    return value


def _parses_as(text: str, kind: type) -> bool:
    if kind is bool:
        return text in ("true", "false")
    try:
        kind(text)
    except (TypeError, ValueError):
        return False
    return kind in (int, float)


def _rooms(path: str, value: Any) -> dict[str, RoomPolicy]:
    if not isinstance(value, dict):
        raise ConfigFileError(path, "rooms", 'expected tables: [rooms."chat:*"]')
    rooms: dict[str, RoomPolicy] = {}
    for pattern, table in value.items():
        where = f"rooms.{_quote(pattern)}"
        problem = pattern_problem(pattern)
        if problem is not None:
            raise ConfigFileError(path, where, f"bad room pattern: {problem}")
        if not isinstance(table, dict):
            raise ConfigFileError(path, where, f'expected a table: [rooms."{pattern}"]')
        settings: dict[str, Any] = {}
        for key, item in table.items():
            if key not in _ROOM_KEYS:
                raise ConfigFileError(path, f"{where}.{_quote(key)}", "unknown room setting"
                                      + _did_you_mean(key, list(_ROOM_KEYS)))
            kind, low = _ROOM_KEYS[key]
            if key == "join":
                settings[key] = _join_rules(path, f"{where}.join", item)
                continue
            item = _typed(path, f"{where}.{key}", item, kind)
            if low is not None and item < low:
                raise ConfigFileError(path, f"{where}.{key}", f"must be >= {low:g}")
            if key == "publish" and item not in set(Publish):
                raise ConfigFileError(path, f"{where}.publish", f"unknown rule {item!r}"
                                      + _did_you_mean(item, list(Publish))
                                      + f" (one of {', '.join(Publish)})")
            settings[key] = item
        try:
            policy = RoomPolicy(**settings)
            RoomPolicies({pattern: policy})  # the rules that depend on the pattern
        except ValueError as exc:
            raise ConfigFileError(path, where, str(exc)) from None
        rooms[pattern] = policy
    return rooms


def _join_rules(path: str, where: str, value: Any) -> frozenset[Join]:
    items = [value] if type(value) is str else value
    if type(items) is not list or not items or not all(type(v) is str for v in items):
        raise ConfigFileError(path, where, "expected a rule or an array of rules, e.g. "
                              'join = ["grant", "subscription"]')
    for item in items:
        if item not in set(Join):
            raise ConfigFileError(path, where, f"unknown rule {item!r}"
                                  + _did_you_mean(item, list(Join))
                                  + f" (one of {', '.join(Join)})")
    return frozenset(Join(v) for v in items)


def _option_types() -> Mapping[str, tuple[type, float | None, float | None]]:
    types: dict[str, tuple[type, float | None, float | None]] = {
        f.name: (field_type(f.name), f.metadata["min"], f.metadata["max"])
        for f in option_fields()
    }
    return types


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _quote(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else '"' + key.replace('"', '\\"') + '"'
