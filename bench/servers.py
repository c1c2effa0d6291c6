"""Peers: the servers under test (their code lives in bench/peers/).

Each one is started as a subprocess on a free port of 127.0.0.1, pinned to the
server core, and killed afterwards.  Adding a peer: subclass :class:`Peer`
(or reuse ``PythonScriptPeer``) and register it in :data:`PEERS`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    HOST,
    LOG_DIR,
    REPO_ROOT,
    free_port,
    log,
    pin_preexec,
    pin_prefix,
    port_open,
    project_python,
    session_cpu_seconds,
)

PEERS_DIR = BENCH_DIR / "peers"
NODE_DIR = PEERS_DIR / "node"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


# workloads in which the generator offers permessage-deflate
DEFLATE_WORKLOADS = {"fanout-deflate"}


class PeerUnavailable(RuntimeError):
    """The peer cannot be run on this machine (missing tool, broken CLI...)."""


@dataclass
class Peer:
    name: str
    proto: str  # "smartsocket" | "socketio": the generator's application protocol
    description: str
    ws_path: str = "/"
    notes: str = ""
    extra_args: list[str] = field(default_factory=list)
    # workload -> why this peer does not take part (shown in that workload's table)
    not_in: dict[str, str] = field(default_factory=dict)
    # when set, the peer takes part only in these workloads (silently absent elsewhere)
    only_in: set[str] | None = None

    def prepare(self) -> None:
        """Check availability / do explicit setup steps. Raise PeerUnavailable."""

    def applies(self, workload: str) -> tuple[bool, str | None]:
        """(takes part, reason shown when it does not; None: leave it out of the table)."""
        if self.only_in is not None and workload not in self.only_in:
            return False, None
        if workload in self.not_in:
            return False, self.not_in[workload]
        return True, None

    def command(self, port: int, workload: str = "") -> list[str]:
        raise NotImplementedError

    @property
    def cwd(self) -> Path:
        return REPO_ROOT


class PythonScriptPeer(Peer):
    def __init__(
        self,
        name: str,
        proto: str,
        description: str,
        script: Path,
        ws_path: str = "/",
        not_in: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, proto, description, ws_path=ws_path, not_in=not_in or {})
        self.script = script

    def prepare(self) -> None:
        if not self.script.exists():
            raise PeerUnavailable(f"{self.script} is missing")

    def command(self, port: int, workload: str = "") -> list[str]:
        return [project_python(), str(self.script), "--host", HOST, "--port", str(port)]


class NodeSocketIOPeer(Peer):
    def prepare(self) -> None:
        node = shutil.which("node")
        if not node:
            raise PeerUnavailable("`node` is not installed")
        if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
            npm = shutil.which("npm")
            if not npm:
                raise PeerUnavailable("node_modules missing and `npm` is not installed")
            has_lock = (NODE_DIR / "package-lock.json").exists()
            cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund"]
            log(f"setup: {' '.join(cmd)} (in {NODE_DIR.relative_to(REPO_ROOT)})")
            proc = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
                raise PeerUnavailable(f"`{' '.join(cmd[:2])}` failed:\n{tail}")

    @property
    def cwd(self) -> Path:
        return NODE_DIR

    # ws' own default threshold, which engine.io also applies when deflate is switched on
    DEFLATE_THRESHOLD = 1024

    def command(self, port: int, workload: str = "") -> list[str]:
        cmd = [shutil.which("node") or "node", "server.js", "--host", HOST, "--port", str(port)]
        if workload in DEFLATE_WORKLOADS:
            cmd += ["--per-message-deflate", str(self.DEFLATE_THRESHOLD)]
        return cmd


class CRefPeer(Peer):
    """bench/peers/cref/cref.c: a minimal C epoll server (this machine's limit)."""

    def prepare(self) -> None:
        from bench import loadgen

        try:
            loadgen.ensure_cref_built()
        except loadgen.BuildError as e:
            raise PeerUnavailable(str(e)) from e

    def command(self, port: int, workload: str = "") -> list[str]:
        from bench.loadgen import CREF_BINARY

        return [str(CREF_BINARY), "--host", HOST, "--port", str(port)]


class SmartSocketPeer(Peer):
    """The real server: ``python -m smartsocket serve`` (the demo app) on 127.0.0.1.

    The per-socket rate limits and the per-IP connection limit are switched off: every
    benchmark client comes from 127.0.0.1 and sends thousands of events per second, which the
    product defaults (1,000 connections per IP, 200 events/s per socket) rightly refuse. No
    peer in the comparison has such limits. Extra arguments: ``--smartsocket-arg``.
    """

    FLAGS: list[str] = [
        "--log-level", "WARNING",
        "--max-connections", "20000",
        "--max-connections-per-ip", "0",
        "--rate-limit-messages", "0",
        "--rate-limit-bytes", "0",
    ]  # fmt: skip

    def __init__(
        self,
        name: str,
        description: str,
        variant_args: list[str] | None = None,
        only_in: set[str] | None = None,
    ) -> None:
        super().__init__(name, "smartsocket", description, only_in=only_in)
        self.variant_args = variant_args or []

    def command(self, port: int, workload: str = "") -> list[str]:
        cmd = [project_python(), "-m", "smartsocket", "serve", "--port", str(port), "--host", HOST]
        return cmd + self.FLAGS + self.variant_args + self.extra_args


PEERS: dict[str, Peer] = {
    p.name: p
    for p in [
        PythonScriptPeer(
            "python-socketio",
            "socketio",
            "python-socketio AsyncServer on aiohttp + uvloop, websocket transport only",
            PEERS_DIR / "socketio_server.py",
            ws_path=SIO_PATH,
        ),
        NodeSocketIOPeer(
            "socketio-node",
            "socketio",
            "Node Socket.IO 4.x (ws engine, no native add-ons), websocket transport only",
            ws_path=SIO_PATH,
        ),
        PythonScriptPeer(
            "picows-raw",
            "smartsocket",
            "raw picows + msgspec speaking the SmartSocket v1 wire format (transport ceiling)",
            PEERS_DIR / "picows_server.py",
            not_in={"fanout-deflate": "picows has no permessage-deflate"},
        ),
        SmartSocketPeer(
            "smartsocket",
            "SmartSocket (`python -m smartsocket serve`), compression on (its default)",
        ),
        SmartSocketPeer(
            "smartsocket-nodeflate",
            "SmartSocket with `--no-compression` (fanout-deflate only: the same run, deflate off)",
            variant_args=["--no-compression"],
            only_in=DEFLATE_WORKLOADS,
        ),
        CRefPeer(
            "c-reference",
            "smartsocket",
            "minimal C epoll server (bench/peers/cref/cref.c): this machine's limit",
        ),
    ]
}
BASELINE = "python-socketio"
SECOND_BASELINE = "socketio-node"  # the second ratio column


class ServerStartError(RuntimeError):
    def __init__(self, msg: str, log_path: Path) -> None:
        super().__init__(msg)
        self.log_path = log_path


class RunningServer:
    """A started peer. Use as a context manager; always stops the process."""

    def __init__(
        self, peer: Peer, core: int | None, ready_timeout: float = 30.0, workload: str = ""
    ) -> None:
        self.peer = peer
        self.workload = workload
        self.core = core
        self.ready_timeout = ready_timeout
        self.port = free_port()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = LOG_DIR / f"{peer.name}-{stamp}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def __enter__(self) -> RunningServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return session_cpu_seconds(self.pid)

    def log_tail(self, n: int = 8) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def start(self) -> None:
        cmd = pin_prefix(self.core) + self.peer.command(self.port, self.workload)
        env = dict(os.environ, PYTHONUNBUFFERED="1", NODE_ENV="production")
        with open(self.log_path, "wb") as logf:
            logf.write(f"$ {' '.join(cmd)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.peer.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pin_preexec(self.core),
            )
        self.started_at = time.monotonic()
        deadline = self.started_at + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise ServerStartError(f"exited with code {code} before listening", self.log_path)
            if port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"not listening on {HOST}:{self.port} after {self.ready_timeout:.0f} s", self.log_path
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            # the peer is a session/process-group leader we started: signal its group by id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # reap stragglers of the group (e.g. a child of the server)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
