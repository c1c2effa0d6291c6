"""Build and drive the C load generator (bench/loadgen/loadgen.c)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    BUILD_DIR,
    CLK_TCK,
    Sample,
    log,
    pin_preexec,
    pin_prefix,
    session_rss_kb,
)

SOURCE = BENCH_DIR / "loadgen" / "loadgen.c"
BINARY = BUILD_DIR / "loadgen"
CREF_SOURCE = BENCH_DIR / "peers" / "cref" / "cref.c"
CREF_BINARY = BUILD_DIR / "cref"

# Both C programs link zlib (permessage-deflate): its header comes with a distro package.
ZLIB_HINT = (
    "zlib's development files are missing (zlib.h): install them, on Debian/Ubuntu with "
    "`apt-get install zlib1g-dev` (Fedora: zlib-devel, Alpine: zlib-dev)"
)


class BuildError(RuntimeError):
    pass


def zlib_header_present() -> bool:
    """True when the C compiler finds zlib.h (checked with the preprocessor only)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return False
    proc = subprocess.run(
        [cc, "-E", "-x", "c", "-"],
        input="#include <zlib.h>\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode == 0


def _build(source: Path, binary: Path, what: str, force: bool) -> Path:
    if not force and binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BuildError("no C compiler found (need `cc` or `gcc`)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    cmd = [cc, "-O2", "-Wall", "-o", str(tmp), str(source), "-lz"]
    log(f"building {what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "zlib.h" in err or "-lz" in err or "cannot find -lz" in err:
            raise BuildError(f"compiling {source.name} failed: {ZLIB_HINT}\n{err}")
        raise BuildError(f"compiling {source.name} failed:\n{err}")
    if proc.stderr.strip():
        log(proc.stderr.strip())
    tmp.replace(binary)
    return binary


def ensure_built(force: bool = False) -> Path:
    """Compile the generator with the system C compiler when missing or stale."""
    return _build(SOURCE, BINARY, "load generator", force)


def ensure_cref_built(force: bool = False) -> Path:
    """Compile the C reference server (bench/peers/cref/cref.c) when missing or stale."""
    return _build(CREF_SOURCE, CREF_BINARY, "C reference server", force)


@dataclass
class LoadgenRun:
    """One generator execution and the CPU samples taken around its window."""

    argv: list[str]
    result: dict[str, Any]
    returncode: int | None
    stderr: str
    wall_s: float
    gen_rusage: dict[str, float] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.result.get("ok"))

    @property
    def error(self) -> str:
        if self.result.get("error"):
            return str(self.result["error"])
        if self.returncode not in (0, None):
            tail = self.stderr.strip().splitlines()[-1:] or [""]
            return f"loadgen exited with {self.returncode}: {tail[0]}"
        return "no result from loadgen"


def run(
    args: list[str],
    *,
    server_sid: int | None,
    core: int | None,
    timeout_s: float,
    rss: bool = False,
    broker_pids: list[int] | None = None,
) -> LoadgenRun:
    """Run the generator; sample the server's and other processes' CPU at the
    ``#MEASURE_START`` / ``#MEASURE_END`` markers it prints.  With ``rss``, the
    server's resident memory is also read before the generator starts and at
    both markers.  ``broker_pids`` (a cluster's Redis or NATS server): their CPU in the
    window is reported apart as ``broker_cpu_s`` and left out of ``other_cpu_s``."""
    binary = ensure_built()
    argv = [*pin_prefix(core), str(binary), *args]
    rss_kb: dict[str, int] = {}
    if rss and server_sid:
        rss_kb["before"] = session_rss_kb(server_sid)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=pin_preexec(core),
    )
    exclude = {os.getpid(), proc.pid}
    samples: dict[str, Sample] = {}
    lines: list[str] = []
    err_chunks: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line == "#MEASURE_START":
                samples["start"] = Sample.take(server_sid, exclude)
                if rss and server_sid:
                    rss_kb["start"] = session_rss_kb(server_sid)
            elif line == "#MEASURE_END":
                samples["end"] = Sample.take(server_sid, exclude)
                if rss and server_sid:
                    rss_kb["end"] = session_rss_kb(server_sid)
            elif line:
                lines.append(line)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if sum(len(c) for c in err_chunks) < 20000:
                err_chunks.append(line)

    threads = [
        threading.Thread(target=read_stdout, daemon=True),
        threading.Thread(target=read_stderr, daemon=True),
    ]
    for t in threads:
        t.start()

    # wait with wait4() so we get the generator's own rusage
    deadline = t0 + timeout_s
    rusage = None
    status = None
    try:
        while True:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status, rusage = st, ru
                break
            if time.monotonic() > deadline:
                log(f"loadgen did not finish within {timeout_s:.0f} s, killing it (pid {proc.pid})")
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    except BaseException:  # e.g. Ctrl-C: do not leave the generator running
        if status is None:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
        raise
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else None
    for t in threads:
        t.join(timeout=5)
    wall = time.monotonic() - t0

    result: dict[str, Any] = {}
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                result = {"ok": False, "error": f"unparsable loadgen output: {line[:200]}"}
            break
    gen_ru = {}
    if rusage is not None:
        gen_ru = {
            "user_s": rusage.ru_utime,
            "sys_s": rusage.ru_stime,
            "wall_s": wall,
            "frac": (rusage.ru_utime + rusage.ru_stime) / wall if wall > 0 else 0.0,
            "maxrss_kb": rusage.ru_maxrss,
        }
    window: dict[str, Any] = {}
    if "start" in samples and "end" in samples:
        a, b = samples["start"], samples["end"]
        dt = b.t - a.t
        window = {
            "wall_s": dt,
            "server_cpu_s": b.server_cpu - a.server_cpu,
            "other_cpu_s": b.other_cpu_since(a),
            "other_top": b.top_others(a),
            "server_procs_cpu_s": b.server_procs_since(a),
        }
        if broker_pids:
            ticks = sum(max(0, b.others.get(pid, 0) - a.others.get(pid, 0)) for pid in broker_pids)
            broker = ticks / CLK_TCK
            window["broker_cpu_s"] = broker
            window["other_cpu_s"] = max(0.0, window["other_cpu_s"] - broker)
    if rss_kb:
        window["rss_kb"] = rss_kb
    return LoadgenRun(
        argv=argv,
        result=result,
        returncode=proc.returncode,
        stderr="".join(err_chunks),
        wall_s=wall,
        gen_rusage=gen_ru,
        window=window,
    )
