"""Peers: the servers under test (their code lives in bench/peers/).

Each one is started as a subprocess on a free port of 127.0.0.1, pinned to the
server core, and killed afterwards.  Adding a peer: subclass :class:`Peer`
(or reuse ``PythonScriptPeer``) and register it in :data:`PEERS`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
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
# SmartSocket-only workloads: several nodes joined by a broker vs one node
CLUSTER_WORKLOADS = {"cluster-fanout", "workers-fanout"}
BROKER_URLS = {
    "redis": "redis://127.0.0.1:6379",
    "nats": "nats://127.0.0.1:4222",
    # the throwaway Redis Cluster of scripts/redis-cluster (sharded pub/sub)
    "redis-cluster": "redis://127.0.0.1:7101?cluster=1",
}
# broker CPU is that of every process of this name (redis-cluster: all redis-servers)
BROKER_PROCESS = {"redis": "redis-server", "nats": "nats-server", "redis-cluster": "redis-server"}


def broker_pids(broker: str | None) -> list[int]:
    """Pids of the running broker (found by process name in /proc): for its CPU."""
    if not broker:
        return []
    want = BROKER_PROCESS[broker]
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                if f.read().strip() == want:
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def listeners(port: int) -> int:
    """Listening TCP sockets on 127.0.0.1:``port`` (SO_REUSEPORT workers: one each)."""
    n = 0
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                    n += 1
    except OSError:
        return 0
    return n


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
    # takes part in CLUSTER_WORKLOADS (SmartSocket only; absent from them otherwise)
    in_cluster_workloads: bool = False
    nodes: int = 1  # separate servers started (2: the second on RunningServer.port2)
    workers: int = 1  # listening sockets to wait for on the port (--workers N)
    broker: str | None = None  # "redis" | "nats": the broker whose CPU is reported

    def prepare(self) -> None:
        """Check availability / do explicit setup steps. Raise PeerUnavailable."""

    def applies(self, workload: str) -> tuple[bool, str | None]:
        """(takes part, reason shown when it does not; None: leave it out of the table)."""
        if self.only_in is not None and workload not in self.only_in:
            return False, None
        if workload in CLUSTER_WORKLOADS and not self.in_cluster_workloads:
            return False, None
        if workload in self.not_in:
            return False, self.not_in[workload]
        return True, None

    def command(self, port: int, workload: str = "") -> list[str]:
        raise NotImplementedError

    def cluster_command(self, ports: list[int], prefix: str, workload: str = "") -> list[str]:
        """Command for a peer of several nodes or workers (default: the plain command)."""
        return self.command(ports[0], workload)

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
        "--rate-limit-frames", "0",  # the generator sends far more than 2,000 frames/s per socket
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
        # another checkout (``bench compare``): its tree, interpreter and the serve options
        # it knows (the others are left out of its command)
        self.tree: Path | None = None
        self.python: str | None = None
        self.known_options: set[str] | None = None

    def command(self, port: int, workload: str = "") -> list[str]:
        args = ["-m", "smartsocket", "serve", "--port", str(port), "--host", HOST]
        args += self.FLAGS + self.variant_args + self.extra_args
        if self.known_options is not None:
            args = known_args(args, self.known_options)
        return [self.python or project_python(), *args]

    @property
    def cwd(self) -> Path:
        return self.tree or REPO_ROOT


class SmartSocketIOPeer(SmartSocketPeer):
    """The same server and demo app, driven through its Socket.IO endpoint: the generator
    speaks Socket.IO to it exactly as to the Socket.IO peers (issue 17)."""

    def __init__(self, name: str, description: str, only_in: set[str] | None = None) -> None:
        super().__init__(name, description, only_in=only_in)
        self.proto = "socketio"
        self.ws_path = SIO_PATH


def known_args(args: list[str], known: set[str]) -> list[str]:
    """``args`` without the ``--options`` not in ``known`` (and their values)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in known:
            nxt = args[i + 1] if i + 1 < len(args) else None
            skip = "=" not in arg and nxt is not None and not nxt.startswith("--")
            continue
        out.append(arg)
    return out


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


class SmartSocketClusterPeer(SmartSocketPeer):
    """SmartSocket joined through a broker: ``nodes`` servers on their own ports (started by
    one ``sh`` so that they share the session whose CPU is measured), or one server with
    ``--workers N`` (one port, SO_REUSEPORT). Every run gets its own ``--cluster-prefix``."""

    def __init__(
        self,
        name: str,
        description: str,
        broker: str,
        nodes: int = 1,
        workers: int = 1,
        only_in: set[str] | None = None,
    ) -> None:
        super().__init__(name, description, only_in=only_in or CLUSTER_WORKLOADS)
        self.in_cluster_workloads = True
        self.broker = broker
        self.nodes = nodes
        self.workers = workers

    def prepare(self) -> None:
        if not broker_pids(self.broker):
            raise PeerUnavailable(f"no {BROKER_PROCESS[self.broker or 'redis']} process running")
        if self.broker == "redis-cluster" and not _answers(7101):
            raise PeerUnavailable("no Redis Cluster on 127.0.0.1:7101 (scripts/redis-cluster)")
        mod = {"redis": "redis", "nats": "nats", "redis-cluster": "redis"}[self.broker or "redis"]
        probe = subprocess.run(
            [project_python(), "-c", f"import {mod}"], capture_output=True, timeout=60
        )
        if probe.returncode != 0:
            raise PeerUnavailable(
                f"python package `{mod}` missing: pip install 'smartsocket[{mod}]'"
            )

    def cluster_command(self, ports: list[int], prefix: str, workload: str = "") -> list[str]:
        cluster = ["--cluster-url", BROKER_URLS[self.broker or "redis"], "--cluster-prefix", prefix]
        if self.workers > 1 or self.nodes == 1:
            return [*self.command(ports[0], workload), "--workers", str(self.workers), *cluster]
        # several nodes: one shell (session leader) runs them all and waits
        node_cmds = [
            " ".join(shlex.quote(a) for a in self.command(p, workload) + cluster) for p in ports
        ]
        return ["sh", "-c", " & ".join(node_cmds) + " & wait"]


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
        SmartSocketIOPeer(
            "smartsocket-socketio",
            "SmartSocket (the same server and app) through its Socket.IO endpoint, websocket "
            "transport: the Socket.IO peers' clients against SmartSocket",
            only_in={"ack", "fanout", "rooms", "idle"},
        ),
        SmartSocketPeer(
            "smartsocket-nodeflate",
            "SmartSocket with `--no-compression` (fanout-deflate only: the same run, deflate off)",
            variant_args=["--no-compression"],
            only_in=DEFLATE_WORKLOADS,
        ),
        SmartSocketPeer(
            "smartsocket-history",
            "SmartSocket with recovery on (`--recovery-window 60`): every room message gets a "
            "position and is kept in the room's history (fanout and rooms only: the cost of "
            "history)",
            variant_args=["--recovery-window", "60"],
            only_in={"fanout", "rooms"},
        ),
        CRefPeer(
            "c-reference",
            "smartsocket",
            "minimal C epoll server (bench/peers/cref/cref.c): this machine's limit",
        ),
        SmartSocketClusterPeer(
            "ss-2nodes-redis",
            "2 SmartSocket nodes (2 processes, 2 ports) joined by Redis; members alternate "
            "between them, the publisher on the first",
            broker="redis",
            nodes=2,
            only_in={"cluster-fanout"},
        ),
        SmartSocketClusterPeer(
            "ss-2nodes-redis-cluster",
            "the same 2 nodes joined by a 3-primary Redis Cluster (sharded pub/sub, "
            "`redis://...?cluster=1`)",
            broker="redis-cluster",
            nodes=2,
            only_in={"cluster-fanout"},
        ),
        SmartSocketClusterPeer(
            "ss-2nodes-nats",
            "the same 2 nodes joined by NATS",
            broker="nats",
            nodes=2,
            only_in={"cluster-fanout"},
        ),
        SmartSocketClusterPeer(
            "ss-workers1-redis",
            "`--workers 1 --cluster-url redis://...`: one node with the Redis adapter",
            broker="redis",
            workers=1,
            only_in={"workers-fanout"},
        ),
        SmartSocketClusterPeer(
            "ss-workers2-redis",
            "`--workers 2 --cluster-url redis://...`: 2 worker processes on one port "
            "(SO_REUSEPORT: the kernel spreads the connections)",
            broker="redis",
            workers=2,
            only_in={"workers-fanout"},
        ),
    ]
}
PEERS["smartsocket"].in_cluster_workloads = True
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
        self.port2 = free_port() if peer.nodes > 1 else 0
        self.prefix = f"bench{os.getpid()}x{self.port}"  # a fresh cluster prefix per run
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

    @property
    def ports(self) -> list[int]:
        return [self.port, self.port2] if self.port2 else [self.port]

    def command(self) -> list[str]:
        if self.peer.nodes > 1 or self.peer.broker:
            return self.peer.cluster_command(self.ports, self.prefix, self.workload)
        return self.peer.command(self.port, self.workload)

    def listening(self) -> bool:
        if self.peer.workers > 1:
            return listeners(self.port) >= self.peer.workers
        return all(port_open(p) for p in self.ports)

    def cpu_seconds(self) -> float:
        return session_cpu_seconds(self.pid)

    def log_count(self, text: str) -> int:
        """Lines of the server log that contain ``text``."""
        try:
            return self.log_path.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def log_tail(self, n: int = 8) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def start(self) -> None:
        cmd = pin_prefix(self.core) + self.command()
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
            if self.listening():
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
