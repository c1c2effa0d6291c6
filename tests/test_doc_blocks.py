"""Every Python code block of the README and docs/*.md runs as written.

Each fenced block (python, html, js) is preceded by an HTML comment that says what it is:

- ``<!-- doc-test: server [file=NAME] [run="CMD"] [url=URL] -->``: started in a subprocess
  (``python NAME``, or ``CMD``) and kept running for the blocks after it; it must accept
  connections (a client connects to ``url`` when given) and exit 0 on SIGINT;
- ``<!-- doc-test: client -->``: run against that server; it exits 0, and each ``print(...)``
  line's comment is the line it prints (``...`` matches anything: a socket id); a server
  marked ``clients=previous`` runs the clients of the server before it again, unchanged (a
  side-by-side: python-socketio's server and ours, one client for both);
- ``<!-- doc-test: script -->``: runs and exits 0;
- ``<!-- doc-test: pytest NAME (...) -->``: written as NAME; a file's pytest blocks run together
  (a ``myapp`` they import is the demo app);
- ``<!-- doc-test: browser (...) -->``: an html block that tests/browser/readme.test.mjs runs
  in Chromium;
- ``<!-- doc-test: skip REASON -->``: not run, for the reason given.

Ports 8080 and 8000 in a document are replaced by one free port on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
MARKER = re.compile(r"<!-- doc-test: (?P<spec>.*?) -->\s*$")
ROLES = ("server", "client", "script", "pytest", "browser", "skip")
CHECKED = ("python", "html", "js")  # languages whose blocks must say what they are
PORTS = ("8080", "8000")
PYTHON = sys.executable
TIMEOUT = 20.0


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    role: str = ""
    args: list[str] = field(default_factory=list)

    def option(self, key: str) -> str | None:
        for arg in self.args:
            if arg.startswith(key + "="):
                return arg.split("=", 1)[1]
        return None

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        block = Block(doc, text.count("\n", 0, m.start()) + 1, m[1], m[2])
        marker = MARKER.match(before)
        if marker:
            role, _, rest = marker["spec"].partition(" ")
            # a server's options are shell words; other roles end in free text (a reason)
            block.role, block.args = role, shlex.split(rest) if role == "server" else rest.split()
        found.append(block)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_port(text: str, port: int) -> str:
    for placeholder in PORTS:
        text = text.replace(placeholder, str(port))
    return text


def expected_output(code: str) -> list[str]:
    """The comments of ``print(...)`` lines: what each prints."""
    return [
        m[1].strip()
        for m in re.finditer(r"^\s*print\(.*\)\s*#\s*(.*)$", code, re.M)
    ]


def matches(line: str, expected: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, line) is not None


def wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited: {process.communicate()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {TIMEOUT} s")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@contextmanager
def serving(block: Block, port: int, workdir: Path) -> Iterator[None]:
    name = block.option("file") or f"server_{block.line}.py"
    (workdir / name).write_text(with_port(block.code, port))
    command = block.option("run")
    if command:
        program, *rest = shlex.split(with_port(command, port))
        argv = [PYTHON, "-m", program, *rest]  # uvicorn ...: the venv's module
    else:
        argv = [PYTHON, name]
    process = subprocess.Popen(
        argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port(port, process)
        url = block.option("url")
        if url:
            connect_to(with_port(url, port).replace("localhost", "127.0.0.1"), workdir)
        yield
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, f"{block.where()}: exit {process.returncode}\n{err}"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def connect_to(url: str, workdir: Path) -> None:
    """A client reaches the server at ``url`` and gets its ``$welcome``."""
    check = (
        "import asyncio, smartsocket\n"
        "async def main():\n"
        f"    client = await smartsocket.connect({url!r}, reconnect=False)\n"
        "    print(client.sid)\n"
        "    await client.close()\n"
        "asyncio.run(main())\n"
    )
    done = run([PYTHON, "-c", check], workdir)
    assert done.returncode == 0 and done.stdout.strip(), f"connect {url}: {done.stderr}"


def run_client(block: Block, port: int, workdir: Path) -> None:
    name = f"client_{block.line}.py"
    (workdir / name).write_text(with_port(block.code, port))
    done = run([PYTHON, name], workdir)
    assert done.returncode == 0, f"{block.where()}: exit {done.returncode}\n{done.stderr}"
    lines = done.stdout.splitlines()
    expected = expected_output(block.code)
    assert len(lines) == len(expected), f"{block.where()} printed {lines}, claims {expected}"
    for line, claim in zip(lines, expected, strict=True):
        assert matches(line, claim), f"{block.where()} printed {line!r}, claims {claim!r}"


def run_pytest(pending: list[Block], workdir: Path) -> None:
    """A file's pytest blocks together, with ``myapp`` standing for the demo app."""
    for block in pending:
        (workdir / block.args[0]).write_text(block.code)
    (workdir / "myapp.py").write_text(
        "from smartsocket.demo import create_app as create_server  # noqa: F401\n"
    )
    done = run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
         "-o", "asyncio_default_fixture_loop_scope=function",
         "-W", "error", "."],
        workdir,
    )
    assert done.returncode == 0, f"{pending[0].where()}: {done.stdout}\n{done.stderr}"
    assert re.search(r"\b[1-9]\d* passed\b", done.stdout), done.stdout


def test_every_code_block_says_what_it_is() -> None:
    for doc in DOCS:
        for block in blocks(doc):
            if block.lang not in CHECKED:
                continue
            assert block.role in ROLES, (
                f"{block.where()}: a {block.lang} block needs <!-- doc-test: ROLE --> before it"
            )
            if block.role == "skip":
                assert block.args, f"{block.where()}: say why it is skipped"
            if block.role == "browser":
                assert block.lang == "html", block.where()


def test_blocks_are_found() -> None:
    roles = [b.role for doc in DOCS for b in blocks(doc)]
    for role in ("server", "client", "script", "pytest", "browser"):
        assert role in roles


@pytest.mark.timeout(180)
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_python_blocks_run_as_written(doc: Path, tmp_path: Path) -> None:
    port = free_port()
    python = [b for b in blocks(doc) if b.lang == "python" and b.role != "skip"]
    if not python:
        pytest.skip(f"{doc.name} has no Python blocks")
    pending_pytest = [b for b in python if b.role == "pytest"]
    run_in_order([b for b in python if b.role != "pytest"], port, tmp_path)
    if pending_pytest:
        run_pytest(pending_pytest, tmp_path)


def run_in_order(python: list[Block], port: int, workdir: Path) -> None:
    """Run the blocks in order: each server until the next one, clients against it."""
    index = 0
    clients: list[Block] = []  # those of the last server
    while index < len(python):
        block = python[index]
        index += 1
        if block.role == "script":
            done = run([PYTHON, "-c", with_port(block.code, port)], workdir)
            assert done.returncode == 0, f"{block.where()}: {done.stderr}"
        elif block.role == "client":
            raise AssertionError(f"{block.where()}: a client block with no server before it")
        elif block.role == "server":
            again = clients if block.option("clients") == "previous" else []
            assert again or not block.option("clients"), f"{block.where()}: no clients to rerun"
            with serving(block, port, workdir):
                clients = list(again)
                while index < len(python) and python[index].role == "client":
                    clients.append(python[index])
                    index += 1
                for client in clients:
                    run_client(client, port, workdir)
