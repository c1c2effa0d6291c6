"""smartsocket.toml: every option, JWT options and room policies; each mistake is an error
naming the file, the key and what is wrong (smartsocket.config_file)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from smartsocket import Config
from smartsocket.config import option_fields
from smartsocket.config_file import ConfigFileError, load, parse
from smartsocket.policies import Join, Publish, Refusal, RoomPolicy


def write(tmp_path: Path, text: str, name: str = "smartsocket.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(text: str, tmp_path: Path | None = None) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as info:
        if tmp_path is None:
            parse(text, "smartsocket.toml")
        else:
            load(write(tmp_path, text))
    return info.value


def test_a_full_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "auth.pem").write_text("pem")
    path = write(tmp_path, """
port = 9000
host = "127.0.0.1"
enable_compression = false
ping_interval = 5            # an integer for a float option
api_keys = ["key-1", "key-2"]
allowed_origins = "https://a.example.com, https://*.example.com"
jwt_public_key = "keys/auth.pem"
jwt_audience = ["chat-app", "admin-app"]
jwt_issuer = "https://login.example.com"
jwt_leeway = 10
rooms_deny_by_default = true

[rooms.lobby]
join = "anyone"

[rooms."chat:*"]
join = ["grant", "subscription"]
publish = "members"
presence = true
history_size = 200
history_ttl = 3600
rate_limit_messages = 20
rate_limit_burst = 40

[rooms."user:*"]
join = "user"

[rooms.admin]
join = "server"
publish = "server"
""")
    loaded = load(path)
    assert loaded.options == {
        "port": 9000, "host": "127.0.0.1", "enable_compression": False, "ping_interval": 5.0,
        "api_keys": "key-1,key-2",
        "allowed_origins": "https://a.example.com, https://*.example.com",
        "jwt_public_key": str(tmp_path / "keys" / "auth.pem"),
        "jwt_audience": "chat-app,admin-app", "jwt_issuer": "https://login.example.com",
        "jwt_leeway": 10.0, "rooms_deny_by_default": True,
    }
    config = Config().replace(**loaded.config_options())
    assert config.port == 9000 and config.api_keys == "key-1,key-2"
    assert type(config.ping_interval) is float
    chat = loaded.rooms["chat:*"]
    assert chat == RoomPolicy(join=frozenset({Join.GRANT, Join.SUBSCRIPTION}),
                              publish=Publish.MEMBERS, presence=True, history_size=200,
                              history_ttl=3600.0, rate_limit_messages=20.0,
                              rate_limit_burst=40.0)
    policies = loaded.policies()
    assert policies.deny_by_default
    assert policies.may_join("elsewhere", None).reason is Refusal.NO_POLICY
    assert policies.may_join("admin", None).reason is Refusal.SERVER_ONLY
    assert policies.may_join("lobby", None).allowed


def test_every_config_option_can_be_set() -> None:
    samples = {int: "1", float: "1.5", bool: "true", str: '"x"'}
    for f in option_fields():
        from smartsocket.config import field_type

        kind = field_type(f.name)
        value = samples[kind]
        if f.metadata["min"] is not None and kind in (int, float):
            value = str(max(f.metadata["min"], 1) * (1 if kind is int else 1.0))
            if f.metadata["max"] is not None:
                value = str(f.metadata["max"])
        if f.name in ("ssl_certfile", "ssl_keyfile", "cluster_url", "cluster_prefix",
                      "allowed_origins", "jwt_secret", "jwt_public_key", "jwt_jwks"):
            continue  # files, URLs, origins, secrets: their own tests
        assert f.name in parse(f"{f.name} = {value}").options, f.name


def test_token_options_are_config_fields() -> None:
    names = {f.name for f in fields(Config)}
    assert {"jwt_secret", "jwt_public_key", "jwt_jwks", "jwt_audience", "jwt_issuer",
            "jwt_leeway", "rooms_deny_by_default"} <= names


def test_empty_file_is_fine() -> None:
    loaded = parse("")
    assert loaded.options == {} and loaded.rooms == {}


@pytest.mark.parametrize(("text", "key", "words"), [
    ("prot = 80", "prot", "unknown option (did you mean 'port'?)"),
    ("max-connections = 5", "max-connections", "did you mean 'max_connections'?"),
    ("jwt_secrett = 'x'", "jwt_secrett", "did you mean 'jwt_secret'?"),
    ("colour = 'blue'", "colour", "unknown option"),
    ('port = "8080"', "port", 'expected an integer, got a string \'8080\' (write port = 8080'),
    ("port = 8080.0", "port", "expected an integer, got a number"),
    ("port = 70000", "port", "must be <= 65535"),
    ("ping_interval = -1", "ping_interval", "must be >= 0.01"),
    ("enable_compression = 1", "enable_compression", "expected a boolean, got an integer"),
    ("enable_compression = 'yes'", "enable_compression", "expected a boolean"),
    ("host = 127", "host", "expected a string"),
    ("api_keys = []", "api_keys", "non-empty array of strings"),
    ("api_keys = ['a,b']", "api_keys", "without commas"),
    ("api_keys = [1]", "api_keys", "non-empty array of strings"),
    ("api_keys = ' , '", "api_keys", "holds no key"),
    ("allowed_origins = 'example.com'", "allowed_origins", "not an origin"),
    ("cluster_url = 'http://x'", "cluster_url", "must start with redis://"),
    ("cluster_prefix = 'a b'", "cluster_prefix", "letters, digits"),
    ("jwt_leeway = -1", "jwt_leeway", "must be >= 0"),
    ("jwt_secret = 'short'", "jwt_secret", "at least 32 bytes"),
    ("jwt_jwks = 'ftp://keys'", "jwt_jwks", "https://"),
    ("jwt_public_key = 'missing.pem'", "jwt_public_key", "no such file"),
    ("ssl_certfile = '/nonexistent/cert.pem'", "ssl_certfile", "no such file"),
    ("jwt_secret = '" + "x" * 32 + "'\njwt_jwks = 'https://a/jwks'", "jwt_jwks",
     "set only one of jwt_secret, jwt_public_key, jwt_jwks"),
    ("[jwt]\nsecret = 'x'", "jwt", "unknown option"),
    ("[port]\nx = 1", "port", "got a table"),
    ("rooms = 5", "rooms", "expected tables"),
    ('[rooms."a*b"]\njoin = "anyone"', 'rooms."a*b"', "bad room pattern: '*' may only end"),
    ('[rooms."chat:*"]\njoin = "grants"', 'rooms."chat:*".join',
     "unknown rule 'grants' (did you mean 'grant'?) (one of anyone, authenticated, grant"),
    ('[rooms."chat:*"]\njoin = []', 'rooms."chat:*".join', "expected a rule or an array"),
    ('[rooms."chat:*"]\njoin = 1', 'rooms."chat:*".join', "expected a rule or an array"),
    ('[rooms."chat:*"]\njoin = ["anyone", "grant"]', 'rooms."chat:*"', "cannot be combined"),
    ('[rooms."chat:*"]\npublish = "everyone"', 'rooms."chat:*".publish', "unknown rule"),
    ('[rooms."chat:*"]\nhistory_sise = 5', 'rooms."chat:*".history_sise',
     "unknown room setting (did you mean 'history_size'?)"),
    ('[rooms."chat:*"]\nhistory_size = -1', 'rooms."chat:*".history_size', "must be >= 0"),
    ('[rooms."chat:*"]\nhistory_size = "5"', 'rooms."chat:*".history_size',
     "expected an integer"),
    ('[rooms."chat:*"]\npresence = "on"', 'rooms."chat:*".presence', "expected a boolean"),
    ('[rooms.lobby]\njoin = "user"', "rooms.lobby", "prefix pattern"),
    ('rooms."chat:*" = 1', 'rooms."chat:*"', "expected a table"),
    ('rooms_deny_by_default = true\n[rooms."*"]\njoin = "anyone"', 'rooms."*"', "contradict"),
])
def test_errors_name_the_file_the_key_and_the_problem(text: str, key: str, words: str) -> None:
    exc = error(text)
    assert exc.path == "smartsocket.toml" and exc.key == key, exc
    assert str(exc).startswith(f"smartsocket.toml: {key}: "), exc
    assert words in str(exc), exc


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    exc = error("port = 80\nhost = \n", tmp_path)
    assert str(exc).startswith(f"{tmp_path / 'smartsocket.toml'}: not valid TOML")
    assert "line 2" in str(exc)


def test_duplicate_key_is_a_toml_error() -> None:
    assert "not valid TOML" in str(error("port = 1\nport = 2"))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        load(tmp_path / "nope.toml")
    path = tmp_path / "binary.toml"
    path.write_bytes(b"port = \xff\xfe")
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        load(path)


def test_relative_paths_start_at_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "jwks.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # not where the files are
    loaded = load(write(conf, "jwt_jwks = 'jwks.json'"))
    assert loaded.options["jwt_jwks"] == str(conf / "jwks.json")
    url = parse("jwt_jwks = 'https://login.example.com/.well-known/jwks.json'")
    assert url.options["jwt_jwks"].startswith("https://")


def test_cross_option_rules_are_left_to_config() -> None:
    # TLS on with the certificate from an env var: the file alone cannot know.
    loaded = parse("enable_encryption = true\njwt_audience = 'app'")
    assert loaded.options["enable_encryption"] is True
    with pytest.raises(ValueError, match="enable_encryption"):
        Config(**loaded.config_options())


def test_error_is_a_config_error() -> None:
    from smartsocket.errors import ConfigError

    assert isinstance(error("prot = 1"), ConfigError)


def test_layers_defaults_file_env_flags() -> None:
    from smartsocket.config_file import layered

    loaded = parse("port = 9000\nhost = '127.0.0.1'\nping_interval = 5\njwt_leeway = 2")
    env = {"SMARTSOCKET_PORT": "9001", "SMARTSOCKET_MAX_CONNECTIONS": "7"}
    options = layered(loaded, env, {"max_connections": 8})
    config = Config(**options)
    assert config.port == 9001  # env over file
    assert config.host == "127.0.0.1" and config.ping_interval == 5.0  # file over defaults
    assert config.max_connections == 8  # flags over env
    assert config.jwt_leeway == 2.0  # the token options layer like every other
    assert Config(**layered(None, {})) == Config()
