from __future__ import annotations

import pytest

from smartsocket import Config, ConfigError, SmartSocket
from smartsocket.cli import build_parser, config_from_args


def test_defaults_match_the_seed() -> None:
    c = Config()
    assert (c.port, c.enable_compression, c.enable_metrics, c.max_connections) == (
        8080, True, True, 10_000,
    )
    assert c.enable_encryption is False and c.message_timeout == 30.0


def test_env_vars_seed_names_and_prefixed_names() -> None:
    env = {
        "PORT": "9000",
        "HOST": "127.0.0.1",
        "ENABLE_COMPRESSION": "false",
        "ENABLE_METRICS": "0",
        "MAX_CONNECTIONS": "5",
        "SMARTSOCKET_PING_INTERVAL": "2.5",
        "SMARTSOCKET_PORT": "9001",  # the prefixed name wins over the seed name
    }
    c = Config.from_env(env)
    assert (c.port, c.host, c.enable_compression, c.enable_metrics) == (
        9001, "127.0.0.1", False, False,
    )
    assert c.max_connections == 5 and c.ping_interval == 2.5


def test_overrides_win_over_env() -> None:
    assert Config.from_env({"PORT": "9000"}, port=1234).port == 1234


@pytest.mark.parametrize(
    ("env", "option"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "port"),
        ({"ENABLE_COMPRESSION": "maybe"}, "ENABLE_COMPRESSION"),
        ({"SMARTSOCKET_MAX_MESSAGE_SIZE": "10"}, "max_message_size"),
        ({"SMARTSOCKET_PING_TIMEOUT": "-1"}, "ping_timeout"),
        ({"ENABLE_ENCRYPTION": "true"}, "enable_encryption"),
        ({"SMARTSOCKET_RECOVERY_WINDOW": "-1"}, "recovery_window"),
        ({"SMARTSOCKET_HISTORY_SIZE": "0"}, "history_size"),
        ({"SMARTSOCKET_RECOVERY_WINDOW": "60", "SMARTSOCKET_CLUSTER_URL": "memory://x"},
         "recovery_window"),
    ],
)
def test_invalid_values_name_the_option(env: dict[str, str], option: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert str(info.value).startswith(option)


def test_keyword_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        SmartSocket(max_connections=0)
    with pytest.raises(ConfigError, match="no_such_option"):
        SmartSocket(no_such_option=1)
    with pytest.raises(ConfigError, match="port"):
        SmartSocket("8080")  # type: ignore[arg-type]
    assert SmartSocket(9000, enable_compression=False).config.enable_compression is False


def test_cli_flags_map_onto_config_over_env() -> None:
    args = build_parser().parse_args(
        ["serve", "--port", "9100", "--no-enable-compression", "--ping-interval", "3"]
    )
    c = config_from_args(args, {"PORT": "9000", "ENABLE_METRICS": "false"})
    assert (c.port, c.enable_compression, c.enable_metrics, c.ping_interval) == (
        9100, False, False, 3.0,
    )
    bad = build_parser().parse_args(["serve", "--max-connections", "lots"])
    with pytest.raises(ConfigError, match="--max-connections"):
        config_from_args(bad, {})


def test_list_options_take_a_list_or_a_comma_separated_string() -> None:
    for value in (["k1", "k2"], ("k1", "k2"), {"k2", "k1"}, "k1,k2"):
        assert Config(api_keys=value).api_keys == "k1,k2"  # type: ignore[arg-type]
    origins = ["https://app.example.com", "https://*.example.com"]
    assert SmartSocket(allowed_origins=origins).config.allowed_origins == ",".join(origins)
    assert Config(presence_rooms=("lobby", "game:*")).presence_rooms == "lobby,game:*"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [([], "empty"), (["k1", 2], "expected strings"), (["a,b"], "comma"), ([" "], "no key")],
)
def test_list_options_refuse_what_they_cannot_hold(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Config(api_keys=value)  # type: ignore[arg-type]
    assert info.value.option == "api_keys"


@pytest.mark.parametrize(
    ("options", "option", "words"),
    [
        ({"cluster_url": "redis://127.0.0.1:abc"}, "cluster_url", "not a valid URL"),
        ({"cluster_url": "redis://[::1"}, "cluster_url", "Invalid IPv6 URL"),
        ({"cluster_url": "nats://127.0.0.1:70000"}, "cluster_url", "Port out of range"),
        ({"cluster_url": "redis://h1:7000,h2:x?cluster=1"}, "cluster_url", "not a valid URL"),
        ({"outbox_url": "postgresql://app@db:port/app"}, "outbox_url", "not a valid URL"),
        ({"ssl_certfile": "cert.pem"}, "ssl_certfile", "enable_encryption is off"),
        ({"ssl_keyfile": "key.pem"}, "ssl_keyfile", "--encryption"),
    ],
)
def test_options_that_could_never_work_stop_the_start(
    options: dict[str, str], option: str, words: str
) -> None:
    """A broker or database URL that cannot be parsed would be retried forever, and a
    certificate without enable_encryption would serve clear text unnoticed: both refused."""
    with pytest.raises(ConfigError) as info:
        Config(**options)
    assert info.value.option == option and words in str(info.value)


def test_well_formed_urls_pass_whatever_the_network_does() -> None:
    for url in ("redis://127.0.0.1:6379?cluster=1", "rediss://u:p@h:1/0", "memory://x",
                "redis://u:p@h1:7000,[::1]:7001,h3?cluster=1",
                "nats://[::1]:4222", "unix:///run/redis.sock"):
        assert Config(cluster_url=url).cluster_url == url
    assert Config(outbox_url="postgresql://app@db/app").outbox_url


def test_kubernetes_service_link_in_smartsocket_port_is_explained() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"SMARTSOCKET_PORT": "tcp://10.96.0.12:8080"})
    assert info.value.option == "SMARTSOCKET_PORT"
    assert "enableServiceLinks: false" in str(info.value)


@pytest.mark.parametrize(("option", "meant"), [
    ("cors_allowed_origins", "allowed_origins"),  # python-socketio's names
    ("max_http_buffer_size", "max_message_size"),
    ("max_conections", "max_connections"),
    ("compression", "enable_compression"),  # the CLI flag's name
])
def test_an_unknown_keyword_names_the_option_meant(option: str, meant: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown option \\(did you mean '{meant}'\\?\\)"):
        SmartSocket(8080, **{option: 1})
