"""Shared paths, logging and CPU accounting helpers for the benchmark harness."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
OUT_DIR = BENCH_DIR / "out"
LOG_DIR = OUT_DIR / "logs"
RESULTS_MD = BENCH_DIR / "RESULTS.md"

SERVER_CORE = 0
LOADGEN_CORE = 1
HOST = "127.0.0.1"  # every byte of benchmark traffic stays on loopback

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress output goes to stderr, one line at a time."""
    print(msg, file=sys.stderr, flush=True)


def project_python() -> str:
    """The project's venv interpreter if present, else the running one."""
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# CPU pinning


def pinning_available() -> bool:
    try:
        cores = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False
    return SERVER_CORE in cores and LOADGEN_CORE in cores


def pin_prefix(core: int | None) -> list[str]:
    """Command prefix that pins the child (and all its threads) to ``core``."""
    if core is None:
        return []
    taskset = shutil.which("taskset")
    if taskset:
        return [taskset, "-c", str(core)]
    return []


def pin_preexec(core: int | None):  # type: ignore[no-untyped-def]
    """Fallback when taskset is missing: set the affinity in the child."""
    if core is None or shutil.which("taskset"):
        return None

    def _pin() -> None:
        os.sched_setaffinity(0, {core})

    return _pin


# --------------------------------------------------------------------------
# CPU accounting


def _proc_cpu_table() -> list[tuple[int, int, int]]:
    """(pid, session id, user+sys clock ticks) of every visible process.

    utime/stime in /proc/PID/stat cover all threads of the process and are
    scaled to the scheduler's precise runtime, unlike the tick-sampled per-core
    counters of /proc/stat (which over-count wake-heavy processes on VMs).
    """
    table = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
        # rest[0] = state (field 3); session = field 6; utime/stime = fields 14/15
        try:
            table.append((int(entry.name), int(rest[3]), int(rest[11]) + int(rest[12])))
        except (IndexError, ValueError):
            continue
    return table


def session_rss_kb(sid: int) -> int:
    """Resident set size (VmRSS, KiB) of every live process in session ``sid``, summed."""
    total = 0
    for pid, s, _ticks in _proc_cpu_table():
        if s != sid:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


def session_cpu_seconds(sid: int) -> float:
    """user+sys CPU seconds of every live process in session ``sid``.

    Peers are started with ``start_new_session=True``, so the session id is the
    pid of the process we started and covers any children it forks.
    """
    return sum(ticks for _pid, s, ticks in _proc_cpu_table() if s == sid) / CLK_TCK


@dataclass
class Sample:
    """A point-in-time CPU sample of the server and of everything else.

    ``others`` maps pid -> ticks for every visible process that is neither the
    server (its session), the load generator, nor this tool, so the difference
    of two samples tells whether other work competed for the CPUs.
    """

    t: float
    server_cpu: float
    others: dict[int, int]
    server_procs: dict[int, int] | None = None  # pid -> ticks of each server process

    @classmethod
    def take(cls, server_sid: int | None, exclude_pids: set[int]) -> Sample:
        t = time.monotonic()
        server = 0
        others: dict[int, int] = {}
        procs: dict[int, int] = {}
        for pid, sid, ticks in _proc_cpu_table():
            if server_sid and sid == server_sid:
                server += ticks
                procs[pid] = ticks
            elif pid not in exclude_pids:
                others[pid] = ticks
        return cls(t=t, server_cpu=server / CLK_TCK, others=others, server_procs=procs)

    def server_procs_since(self, earlier: Sample) -> list[float]:
        """CPU seconds of each server process between two samples, largest first."""
        now, before = self.server_procs or {}, earlier.server_procs or {}
        return sorted(
            ((ticks - before.get(pid, 0)) / CLK_TCK for pid, ticks in now.items()), reverse=True
        )

    def other_cpu_since(self, earlier: Sample) -> float:
        """CPU seconds used by other processes between two samples."""
        total = 0
        for pid, ticks in self.others.items():
            # a process that appeared during the window counts from zero;
            # one that exited during it is not seen (under-count, never over)
            total += max(0, ticks - earlier.others.get(pid, 0))
        return total / CLK_TCK

    def top_others(self, earlier: Sample, n: int = 3) -> list[list[object]]:
        """The ``n`` other processes that used the most CPU between two samples."""
        deltas = sorted(
            ((ticks - earlier.others.get(pid, 0), pid) for pid, ticks in self.others.items()),
            reverse=True,
        )
        out: list[list[object]] = []
        for ticks, pid in deltas[:n]:
            if ticks <= 0:
                break
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    name = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
            except OSError:
                name = "?"
            out.append([pid, name, round(ticks / CLK_TCK, 2)])
        return out


def loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
