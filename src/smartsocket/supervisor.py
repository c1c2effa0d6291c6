"""``smartsocket serve --workers N``: N server processes on one port, joined as one cluster.

The parent reserves the port (a bound, never listening SO_REUSEPORT socket, so ``--port 0``
works too), starts N copies of the same ``smartsocket serve`` command with ``--reuse-port``,
and waits until each says it listens; the kernel then spreads new connections over them.
The workers join through ``cluster_url`` (required), so rooms, broadcasts and presence span
them. A worker that dies is started again (with a growing delay if it keeps dying); SIGTERM or
SIGINT stops them all gracefully (each drains its clients with 1001).

The supervisor logs (``smartsocket.supervisor``); what the user must read before it starts
(``SupervisorError``) and the ready line are the CLI's to print.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from smartsocket.config import Config
from smartsocket.logs import ready_url

logger = logging.getLogger("smartsocket.supervisor")

READY_TIMEOUT = 20.0


class SupervisorError(Exception):
    """The workers cannot be started (nothing was): one line for the user, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Worker:
    def __init__(self, index: int, command: list[str]) -> None:
        self.index = index
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.crashes = 0

    def start(self) -> None:
        env = {**os.environ, "SMARTSOCKET_WORKER_ID": str(self.index)}
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, env=env)
        self.started = time.monotonic()

    def wait_ready(self, timeout: float) -> str:
        """The worker's "listening on" line ('' if it died or stayed silent); its later output
        is copied to ours."""
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline().decode()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        threading.Thread(target=_copy, args=(stdout,), daemon=True).start()
        return result[0] if result else ""


def _copy(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def reserve_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def without_workers(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def run_workers(
    argv: Sequence[str], workers: int, config: Config, on_ready: Callable[[str, str], None],
) -> int:
    """Supervise ``workers`` copies of ``smartsocket serve <argv>``; returns the exit code.
    ``on_ready(message, url)`` once every worker listens. Raises ``SupervisorError`` (and
    ``MissingDependency``) before starting any worker."""
    if not config.cluster_url:
        raise SupervisorError("--workers needs --cluster-url (redis://... or nats://...) so "
                              "the workers act as one server", 2)
    if config.cluster_url.partition("://")[0].lower() == "memory":
        raise SupervisorError("--workers cannot join through memory:// (it lives inside one "
                              "process): give redis://... or nats://...", 2)
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SupervisorError("--workers needs SO_REUSEPORT (Linux, BSD, macOS)", 2)
    from smartsocket.cluster.brokers import create_adapter

    create_adapter(config.cluster_url)  # a missing extra fails here, once, not in each worker
    try:
        reserved = reserve_port(config.host, config.port)
    except OSError as exc:
        raise SupervisorError(f"cannot bind {config.host}:{config.port}: {exc}") from None
    port = reserved.getsockname()[1]
    command = [
        sys.executable, "-m", "smartsocket", *without_workers(argv), "--port", str(port),
        "--reuse-port",
    ]
    pool = [Worker(i, command) for i in range(workers)]
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for worker in pool:
            worker.start()
        url = ""
        failed = False
        for worker in pool:
            ready = ready_url(worker.wait_ready(READY_TIMEOUT))
            if ready is None:
                logger.error("worker %d did not start", worker.index)
                stopping.set()
                failed = True
                break
            url = ready
        else:
            on_ready(f"({workers} workers) listening on {url}", url)
        _supervise(pool, stopping)
    finally:
        code = _stop_all(pool, config.shutdown_timeout + 5.0)
        reserved.close()
    return 1 if failed else code


def _supervise(pool: list[Worker], stopping: threading.Event) -> None:
    while not stopping.wait(0.1):
        for worker in pool:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            quick = time.monotonic() - worker.started < 5.0
            worker.crashes = worker.crashes + 1 if quick else 1
            delay = min(5.0, 0.1 * 2 ** (worker.crashes - 1))
            logger.warning("worker %d (pid %d) exited with %s; restarting in %.1f s",
                           worker.index, process.pid, process.returncode, delay)
            if stopping.wait(delay):
                return
            worker.start()
            threading.Thread(target=worker.wait_ready, args=(READY_TIMEOUT,), daemon=True).start()


def _stop_all(pool: list[Worker], timeout: float) -> int:
    for worker in pool:
        if worker.process is not None and worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    code = 0
    for worker in pool:
        if worker.process is None:
            continue
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
            code = 1
    return code
