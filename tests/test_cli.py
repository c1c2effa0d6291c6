"""``smartsocket serve`` as users run it: a real process, a real client, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import websockets

from smartsocket import Client
from smartsocket.logs import ready_url
from smartsocket.testing import Recorder

# Upper bound for a server process to start, answer or exit: a loaded 2-core machine took
# over 10 s just to start one (imports alone: 5 s). A bound, never a sleep.
PROCESS = 30.0


@asynccontextmanager
async def serve(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), PROCESS)).decode()
        url = ready_url(line)
        assert url is not None, line + (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_runs_the_demo_and_drains_on_sigterm() -> None:
    async with serve() as (proc, url):
        client = Client(url, reconnect=False)
        await client.connect()
        assert await client.call("echo", {"ok": True}) == {"ok": True}
        closed = Recorder(client, "disconnect")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), PROCESS) == 0
        # the 1001 reached the client before the exit; it reads it when its loop gets to it
        assert (await closed.next("disconnect", timeout=10)).code == 1001
        assert closed.pending("disconnect") == 0
        await client.close()


async def test_env_vars_configure_the_cli() -> None:
    async with (
        serve(env={"SMARTSOCKET_MAX_MESSAGE_SIZE": "4096"}) as (_, url),
        websockets.connect(url) as ws,
    ):
        welcome = json.loads(await ws.recv())[1]
        assert welcome["maxMessageSize"] == 4096


async def test_invalid_option_fails_at_start_with_its_name() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--port", "0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "MAX_CONNECTIONS": "-3"},
    )
    _, err = await asyncio.wait_for(proc.communicate(), PROCESS)
    assert proc.returncode == 2
    assert b"max_connections" in err


async def test_app_option_runs_a_user_server(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent("""
        from smartsocket import SmartSocket
        server = SmartSocket()

        @server.on("shout")
        def shout(socket, text):
            return text.upper()
    """))
    async with serve("--app", "myapp:server", cwd=tmp_path) as (_, url):
        client = Client(url, reconnect=False)
        await client.connect()
        assert await client.call("shout", "hi") == "HI"
        await client.close()


def run_cli(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartsocket", *args], capture_output=True, text=True, timeout=20
    )


def test_version_and_help() -> None:
    from smartsocket import __version__

    assert run_cli(["--version"]).stdout.strip() == f"smartsocket {__version__}"
    help_text = run_cli(["serve", "--help"]).stdout
    for flag in ("--port", "--enable-compression", "--max-connections", "--app"):
        assert flag in help_text




# Mistakes a newcomer makes: one line that says what is wrong and what to do, no traceback.


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_port_already_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli(["serve", "--host", "127.0.0.1", "--port", port])
    assert_one_line(result, 1, f"port {port} is already in use", "--port")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nomodule:server", ["no module named 'nomodule'", "directory"]),
        ("os:nothing", ["has no 'nothing'", "SmartSocket instance"]),
        ("os:path", ["is a module, not a SmartSocket"]),
        ("os:getcwd", ["does not take a Config"]),
        ("builtins:id", ["returned an int, not a SmartSocket"]),
        ("nocolon", ["module:attr"]),
    ],
)
def test_bad_app_spec(spec: str, words: list[str]) -> None:
    assert_one_line(run_cli(["serve", "--port", "0", "--app", spec]), 2, f"{spec}", *words)


async def test_app_may_be_a_factory_or_the_class(tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text(textwrap.dedent("""
        from smartsocket import SmartSocket

        def make(config):
            server = SmartSocket(config=config)
            server.on("ping", lambda socket, data: "pong")
            return server
    """))
    for spec in ("factory:make", "smartsocket:SmartSocket"):
        async with serve("--app", spec, cwd=tmp_path) as (_, url):
            client = Client(url, reconnect=False)
            await client.connect()
            if spec == "factory:make":
                assert await client.call("ping") == "pong"
            await client.close()


def test_app_whose_own_import_fails_keeps_its_traceback(tmp_path: Path) -> None:
    """A module whose own import fails keeps its traceback: that is the user's bug to see."""
    (tmp_path / "broken.py").write_text("import not_installed_anywhere\n")
    result = subprocess.run(
        [sys.executable, "-m", "smartsocket", "serve", "--port", "0", "--app", "broken:server"],
        capture_output=True, text=True, timeout=20, cwd=tmp_path,
    )
    assert result.returncode == 1 and "not_installed_anywhere" in result.stderr


def test_invalid_log_level() -> None:
    result = run_cli(["serve", "--port", "0", "--log-level", "LOUD"])
    assert_one_line(result, 2, "--log-level", "'LOUD'", "DEBUG", "--help")
    assert result.stdout == ""


@pytest.mark.parametrize("missing", ["ssl_certfile", "ssl_keyfile"])
def test_missing_tls_file_is_named(missing: str, tmp_path: Path) -> None:
    files = {"ssl_certfile": tmp_path / "cert.pem", "ssl_keyfile": tmp_path / "key.pem"}
    for name, path in files.items():
        if name != missing:
            path.write_text("not really PEM\n")
    result = run_cli([
        "serve", "--port", "0", "--encryption",
        "--ssl-certfile", str(files["ssl_certfile"]), "--ssl-keyfile", str(files["ssl_keyfile"]),
    ])
    assert_one_line(result, 2, missing, f"no such file: {files[missing]}")


def test_unreadable_tls_files_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not really PEM\n")
    key.write_text("not really PEM\n")
    result = run_cli(["serve", "--port", "0", "--encryption",
                      "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    assert_one_line(result, 2, "ssl_certfile", f"cannot load {cert}")


@pytest.mark.parametrize(
    ("url", "extra", "workers"),
    [("redis://127.0.0.1:6379", "redis", "1"), ("redis://127.0.0.1:7101?cluster=1", "redis", "1"),
     ("nats://127.0.0.1:4222", "nats", "1"), ("redis://127.0.0.1:6379", "redis", "2")],
)
def test_missing_extra_names_the_pip_command(
    url: str, extra: str, workers: str, tmp_path: Path
) -> None:
    """A PYTHONPATH shim makes ``import redis`` / ``import nats`` fail, as without the extra.
    With --workers the supervisor says it once, before starting any worker."""
    for package in ("redis", "nats"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"raise ImportError('no {package}')\n")
    result = subprocess.run(
        [sys.executable, "-m", "smartsocket", "serve", "--port", "0", "--cluster-url", url,
         "--workers", workers],
        capture_output=True, text=True, timeout=20,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert_one_line(result, 1, f"pip install 'smartsocket[{extra}]'")


def test_log_json_errors_are_json_too() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli(["serve", "--host", "127.0.0.1", "--port", port, "--log-json"])
    assert result.returncode == 1
    entry = json.loads(result.stderr)
    assert entry["level"] == "ERROR" and "already in use" in entry["message"]


async def test_stats_into_a_closed_pipe_is_quiet() -> None:
    """``smartsocket stats URL | head``: the reader is gone before a byte is written."""
    async with serve() as (_, url):
        read, write = os.pipe()
        os.close(read)
        try:
            for extra in ([], ["--json"]):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "smartsocket", "stats", *extra, url,
                    stdout=write, stderr=subprocess.PIPE,
                )
                _, err = await asyncio.wait_for(proc.communicate(), 20)
                assert proc.returncode == 1 and err == b"", err.decode()
        finally:
            os.close(write)


# What `serve` prints: one ready line, true about the address, JSON with --log-json.


async def test_ready_line_once_and_true_about_the_bound_address() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--host", "0.0.0.0", "--port", "0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), PROCESS)).decode()
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), PROCESS)
    assert "every interface (0.0.0.0:" in line, line
    url = line.rsplit(" ", 1)[1].strip()
    assert url.startswith("ws://127.0.0.1:") and url.endswith("/")
    assert (line + out.decode() + err.decode()).count("listening") == 1


async def test_log_json_prints_json_on_every_line() -> None:
    async with serve("--log-json", "--log-level", "DEBUG") as (proc, url):
        client = Client(url, reconnect=False)
        await client.connect()
        await client.close()
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), PROCESS)
    lines = (out + err).decode().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, stdout and stderr
    assert [e["message"] for e in entries].count("closed") == 1
    assert sum("listening" in e["message"] for e in entries) == 0  # (the ready line was read)


def test_help_is_written_for_users() -> None:
    for args in (["--help"], ["serve", "--help"], ["stats", "--help"]):
        text = run_cli(args).stdout
        assert "``" not in text and "seed" not in text.lower(), text
    assert "SMARTSOCKET_" in run_cli(["serve", "--help"]).stdout


def test_workers_without_a_cluster_url_is_a_usage_error() -> None:
    """The supervisor refuses before starting anything; the CLI prints its one line."""
    result = run_cli(["serve", "--port", "0", "--workers", "2"])
    assert_one_line(result, 2, "--workers needs --cluster-url")


def test_workers_on_a_taken_port_say_so_in_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound without SO_REUSEPORT: the supervisor cannot share it
        port = str(taken.getsockname()[1])
        result = run_cli(["serve", "--host", "127.0.0.1", "--port", port, "--workers", "2",
                          "--cluster-url", "redis://127.0.0.1:6379"])
    assert_one_line(result, 1, f"cannot bind 127.0.0.1:{port}")


def test_bad_config_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "smartsocket.toml"
    bad.write_text('prot = 80\n[rooms."chat:*"]\njoin = "grant"\n')
    assert_one_line(run_cli(["serve", "--config", str(bad)]), 2, "prot", "did you mean 'port'")
    bad.write_text('[rooms."chat:*"]\njoin = "grants"\n')
    assert_one_line(run_cli(["serve", "--config", str(bad)]), 2, "did you mean 'grant'")
    assert_one_line(run_cli(["serve", "--config", str(tmp_path / "none.toml")]), 2,
                    "none.toml", "cannot read")
    assert_one_line(run_cli(["serve", "--jwt-secret", "short"]), 2, "jwt_secret", "32 bytes")


# smartsocket publish ----------------------------------------------------------------------

API_SECRET = "cli-test-secret-0123456789"


async def run_publish(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "publish", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_publish_reaches_a_room_through_the_http_api() -> None:
    from smartsocket.testing import Recorder, running

    async with running(api_secret=API_SECRET) as server:
        a = Client(server.url, reconnect=False)
        b = Client(server.url, reconnect=False)
        await a.connect()
        await b.connect()
        for c in (a, b):
            assert await server.join(c.sid, "lobby")
        recs = [Recorder(c, "news") for c in (a, b)]
        code, out, err = await run_publish(
            server.url, "lobby", "news", '{"text": "hi"}', "--api-secret", API_SECRET,
            "--exclude", b.sid,
        )
        assert (code, out, err) == (0, "", "")
        assert await recs[0].next("news") == {"text": "hi"}
        code, _, err = await run_publish(  # the secret from the environment, a bare host:port
            f"127.0.0.1:{server.port}", "lobby", "news", '"plain"',
            env={"SMARTSOCKET_API_SECRET": API_SECRET},
        )
        assert code == 0, err
        assert [await r.next("news") for r in recs] == ["plain", "plain"]
        assert recs[1].pending("news") == 0
        await a.close()
        await b.close()


def assert_one_error_line(code: int, err: str, expected: int, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code == expected and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


async def test_publish_mistakes_are_one_line() -> None:
    from smartsocket.testing import running

    async with running(api_secret=API_SECRET) as server:
        url = server.url
        code, _, err = await run_publish(url, "lobby", "news", "1", "--api-secret", "x" * 20)
        assert_one_error_line(code, err, 1, "HTTP 403 forbidden", "wrong API secret")
        code, _, err = await run_publish(url, "", "news", "1", "--api-secret", API_SECRET)
        assert_one_error_line(code, err, 1, "HTTP 400 invalid_name", "(field room)")
        code, _, err = await run_publish(url, "lobby", "news", "not json", "--api-secret", "s")
        assert_one_error_line(code, err, 2, "DATA must be JSON")
        code, _, err = await run_publish(url, "lobby", "news", "1", env={
            "SMARTSOCKET_API_SECRET": ""
        })
        assert_one_error_line(code, err, 2, "--api-secret")
    async with running() as server:  # no api_secret: the API is off
        code, _, err = await run_publish(server.url, "r", "e", "1", "--api-secret", API_SECRET)
        assert_one_error_line(code, err, 1, "HTTP 404", "api_secret set on the server")
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, _, err = await run_publish(f"http://127.0.0.1:{port}", "r", "e", "1",
                                     "--api-secret", API_SECRET)
    assert_one_error_line(code, err, 1, "cannot reach")


# smartsocket stats and publish: what a newcomer gets wrong -----------------------------------


@pytest.mark.parametrize("url", ["http://[::1", "localhost:abc", "redis://127.0.0.1:6379"])
@pytest.mark.parametrize("command", [["stats"], ["publish"]])
def test_a_url_that_is_no_server_url_is_a_usage_error(url: str, command: list[str]) -> None:
    args = [*command, url] + (["r", "e", "1", "--api-secret", API_SECRET]
                              if command == ["publish"] else [])
    assert_one_line(run_cli(args), 2, repr(url), "is not a server URL", "http://localhost:8080")


def test_stats_of_a_server_that_is_down_says_so_in_one_line() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = run_cli(["stats", f"http://127.0.0.1:{port}"])
    assert_one_line(result, 1, f"cannot reach http://127.0.0.1:{port}/smartsocket/stats",
                    "Connection refused", "is a SmartSocket server running")
    assert "Errno" not in result.stderr and "urlopen" not in result.stderr


async def test_stats_behind_a_stats_token_names_the_flag() -> None:
    from smartsocket.testing import running

    async with running(stats_token="cli-stats-token") as server:
        for extra, words in (([], "give --token"), (["--token", "wrong"], "refused --token")):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smartsocket", "stats", server.url, *extra,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode is not None
            assert_one_error_line(proc.returncode, err.decode(), 1, "HTTP 401", words)


def test_bad_option_values_name_where_they_came_from(tmp_path: Path) -> None:
    env_run = subprocess.run(
        [sys.executable, "-m", "smartsocket", "serve"], capture_output=True, text=True,
        timeout=20, env={**os.environ, "SMARTSOCKET_MAX_CONNECTIONS": "-5"},
    )
    assert_one_line(env_run, 2, "max_connections (SMARTSOCKET_MAX_CONNECTIONS)", ">= 1")
    assert_one_line(run_cli(["serve", "--max-connections", "0"]), 2,
                    "max_connections (--max-connections)")
    assert_one_line(run_cli(["serve", "--cluster-url", "redis://127.0.0.1:abc"]), 2,
                    "cluster_url (--cluster-url)", "not a valid URL")
    assert_one_line(run_cli(["serve", "--config", str(tmp_path / "none.toml")]), 2,
                    f"config file {tmp_path / 'none.toml'}: cannot read")


def test_a_certificate_without_encryption_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("PEM\n")
    result = run_cli(["serve", "--port", "0", "--ssl-certfile", str(cert),
                      "--ssl-keyfile", str(cert)])
    assert_one_line(result, 2, "ssl_certfile", "enable_encryption is off", "--encryption")


def test_an_app_that_listens_when_imported_is_told_to_guard_it(tmp_path: Path) -> None:
    """README's first server ends in listen(): imported by --app unguarded, it would block the
    import and serve with its own options, ignoring every flag. One line says what to do."""
    (tmp_path / "server.py").write_text(
        "from smartsocket import SmartSocket\nserver = SmartSocket(0)\nserver.listen()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "smartsocket", "serve", "--app", "server:server", "--port", "0"],
        capture_output=True, text=True, timeout=20, cwd=tmp_path,
    )
    assert_one_line(result, 2, "--app server:server", "calls listen() when imported",
                    'if __name__ == "__main__":')


@pytest.mark.parametrize(("args", "words"), [
    (["--workers", "0"], ["--workers must be 1 or more, got 0"]),
    (["--workers", "2", "--cluster-url", "memory://x"], ["memory://", "redis://"]),
    (["--log-file", "/nonexistent/dir/x.log"], ["--log-file /nonexistent/dir/x.log",
                                                "No such file or directory"]),
    (["--jwt-jwks", "/nonexistent/jwks.json"], ["jwt_jwks (--jwt-jwks)",
                                                "No such file or directory"]),
])
def test_serve_option_mistakes_are_one_line(args: list[str], words: list[str]) -> None:
    assert_one_line(run_cli(["serve", "--port", "0", *args]), 2, *words)


async def test_a_misspelled_env_var_is_named_with_the_right_one() -> None:
    env = {"SMARTSOCKET_MAX_CONECTIONS": "5", "SMARTSOCKET_SERVICE_HOST": "10.0.0.1"}
    async with serve(env=env) as (proc, _):
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    warnings = [line for line in err.decode().splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings  # Kubernetes' service variables are no typo
    assert "SMARTSOCKET_MAX_CONECTIONS" in warnings[0]
    assert "did you mean SMARTSOCKET_MAX_CONNECTIONS?" in warnings[0]
