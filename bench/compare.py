"""``python -m bench compare BASE_REV``: the same workloads against this checkout and another
commit, in one run, interleaved (rep 1 new, rep 1 base, rep 2 new...), so that both see the
same machine.

BASE_REV is exported (``git archive``) into a cache directory with its own venv (an editable
install of that tree), kept across runs: ``$SMARTSOCKET_BENCH_CACHE`` or
``~/.cache/smartsocket-bench/<commit>``. Each SmartSocket peer asked for gets a twin
``NAME@base`` that runs the base's interpreter from the base's tree; flags the base's
``serve`` does not know (a limit added since) are left out of the twin's command, so both
run with what they have switched off by the benchmark.

The table: median of the repeats for each measure, and new/base (for a measure where lower is
better, base/new), so above 1 is faster; at or above ``NOISE`` (0.97) counts as within noise.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, REPO_ROOT, RESULTS_MD, loadavg, log
from bench.servers import PEERS, Peer, SmartSocketClusterPeer, SmartSocketPeer
from bench.workloads import WORKLOADS, Options, Workload

NOISE = 0.97
DASH = "\u2013"
DEFAULT_WORKLOADS = "ack,fanout,rooms,fanout-deflate,cluster-fanout"
# which peers run in which workload (the twins run wherever these do)
DEFAULT_PEERS = "smartsocket,ss-2nodes-redis,ss-2nodes-redis-cluster"
SUFFIX = "@base"
NEW_SUFFIX = "@new"  # with --new REV


def cache_root() -> Path:
    env = os.environ.get("SMARTSOCKET_BENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smartsocket-bench"


def resolve(rev: str) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"unknown revision {rev!r}: {out.stderr.strip()}")
    return out.stdout.strip()


def prepare_base(sha: str, extras: str = "redis,nats") -> Path:
    """The base tree with its venv (made once per commit); returns the tree."""
    tree = cache_root() / sha
    python = tree / ".venv" / "bin" / "python"
    stamp = tree / ".installed"
    if stamp.exists() and python.exists():
        log(f"compare: base {sha[:10]} cached in {tree}")
        return tree
    if tree.exists():
        shutil.rmtree(tree)  # a half-made one
    tree.mkdir(parents=True)
    log(f"compare: exporting {sha[:10]} to {tree}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", sha], cwd=REPO_ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    log("compare: creating its venv (pip install -e; pip's cache makes later ones quick)")
    subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", f"{tree}[{extras}]"], check=True
    )
    stamp.write_text(sha + "\n")
    return tree


def serve_flags(python: str, cwd: Path) -> set[str]:
    """The ``--options`` the base's ``smartsocket serve`` accepts."""
    out = subprocess.run(
        [python, "-m", "smartsocket", "serve", "--help"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )
    return set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))


class Twin:
    """Turns a SmartSocket peer into the same peer running another checkout."""

    def __init__(self, tree: Path, suffix: str) -> None:
        self.suffix = suffix
        self.tree = tree
        self.python = str(tree / ".venv" / "bin" / "python")
        self.known = serve_flags(self.python, tree)
        if not self.known:
            raise SystemExit(f"the base's `smartsocket serve --help` printed no options ({tree})")

    def twin(self, peer: SmartSocketPeer) -> SmartSocketPeer:
        twin = copy.copy(peer)
        twin.name = peer.name + self.suffix
        twin.description = f"{peer.description} [{self.tree.name[:10]}]"
        twin.extra_args = list(peer.extra_args)
        twin.tree, twin.python, twin.known_options = self.tree, self.python, self.known
        return twin


def compare(
    base_rev: str,
    new_rev: str | None,
    workloads: list[Workload],
    peer_names: list[str],
    opts: Options,
    *,
    pin: bool = True,
    section: str | None = None,
) -> int:
    from bench import runner

    sha = resolve(base_rev)
    base_twin = Twin(prepare_base(sha), SUFFIX)
    new_twin: Twin | None = None
    if new_rev is None:
        head = resolve("HEAD")
        dirty = bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True,
        ).stdout.strip())
        new = f"this checkout, {head[:10]}{' + uncommitted changes' if dirty else ''}"
    else:
        new_sha = resolve(new_rev)
        new_twin = Twin(prepare_base(new_sha), NEW_SUFFIX)
        new = f"{new_rev} ({new_sha[:10]})"
    peers: list[Peer] = []
    pairs: list[tuple[str, str]] = []
    for name in peer_names:
        peer = PEERS[name]
        if not isinstance(peer, SmartSocketPeer):
            raise SystemExit(f"{name} is not a SmartSocket peer: nothing to compare")
        if not isinstance(peer, SmartSocketClusterPeer):
            # the single node's figures in cluster-fanout add time, not a comparison
            peer = copy.copy(peer)
            peer.in_cluster_workloads = False
        first = peer if new_twin is None else new_twin.twin(peer)
        second = base_twin.twin(peer)
        peers += [first, second]
        pairs.append((first.name, second.name))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = loadavg()
    rc = runner.run(workloads, peers, opts, pin=pin, baseline=peers[1].name, write=False,
                    charts=False)
    doc = json.loads((OUT_DIR / "latest.json").read_text())
    table = render(doc, workloads, pairs, base=f"{base_rev} ({sha[:10]})", new=new,
                   started=started, load=(load_start, loadavg()))
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT_DIR / f"compare-{stamp}.md"
    path.write_text(table)
    log(f"compare: table in {path.relative_to(REPO_ROOT)}")
    if section:
        write_section(RESULTS_MD, section, table)
        log(f"compare: section {section!r} of {RESULTS_MD.relative_to(REPO_ROOT)} written")
    return rc


def ratio(new: float | None, base: float | None, higher_is_better: bool) -> float | None:
    if not new or not base:
        return None
    return new / base if higher_is_better else base / new


def render(
    doc: dict[str, Any], workloads: list[Workload], pairs: list[tuple[str, str]], *, base: str,
    new: str, started: str, load: tuple[Any, Any],
) -> str:
    summary = doc["summary"]
    meta = doc["meta"]
    o = meta["options"]
    runs = doc.get("runs", [])
    lines = [
        f"new: {new} against base: {base}; {started}; {o['duration']:g} s windows, median of "
        f"{o['repeat']}, peers interleaved; "
        + ("server and generator pinned" if meta.get("pinned") else "not pinned")
        + f"; load average at start {_load(load[0])}, at end {_load(load[1])}.",
        "",
        "| workload | measure | peer | base (min\u2013max) | new (min\u2013max) | new/base | "
        "generator CPU (base / new) |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    below: list[str] = []
    for wl in workloads:
        for m in wl.measures:
            rows = summary.get(m.key, {})
            for name, base_name in pairs:
                n, b = rows.get(name), rows.get(base_name)
                if not n or not b or n.get("metric") is None or b.get("metric") is None:
                    continue
                r = ratio(n["metric"], b["metric"], m.higher_is_better)
                shown = name.removesuffix(NEW_SUFFIX)
                flag = "" if r is None or r >= NOISE else " **below**"
                if flag:
                    below.append(f"{m.key} ({shown})")
                lines.append(
                    f"| {wl.name} | {m.title} [{m.unit}] | {shown} | "
                    f"{_num(b['metric'])}{_spread(runs, m.key, base_name)} | "
                    f"{_num(n['metric'])}{_spread(runs, m.key, name)} | {_ratio(r)}{flag} | "
                    f"{_cpu(b.get('gen_cpu'))} / {_cpu(n.get('gen_cpu'))} |"
                )
    lines.append("")
    lines.append(
        f"Ratios at or above {NOISE} are within noise; "
        + (f"below: {', '.join(below)}." if below else "none is below.")
    )
    if doc.get("skipped"):
        lines.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in doc["skipped"].items()))
    return "\n".join(lines) + "\n"


def _spread(runs: list[dict[str, Any]], measure: str, peer: str) -> str:
    vals = [r["metric"] for r in runs if r["measure"] == measure and r["peer"] == peer and r["ok"]]
    return "" if len(vals) < 2 else f" ({_num(min(vals))}{DASH}{_num(max(vals))})"


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def _ratio(r: float | None) -> str:
    if r is None:
        return DASH
    # enough digits that a ratio just under the line does not print as 0.970
    return f"{r:.4f}" if r < NOISE <= round(r, 3) else f"{r:.3f}"


def _cpu(v: float | None) -> str:
    return DASH if v is None else f"{v:.0%}"


def _load(v: Any) -> str:
    return DASH if not v else " ".join(f"{x:.2f}" for x in v)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of ``path`` (up to the next ``## ``),
    outside the generated results block."""
    text = path.read_text()
    heading = f"## {title}\n"
    block = f"{heading}\n_Generated by `python -m bench compare`._\n\n{body}\n"
    if heading in text:
        start = text.index(heading)
        nxt = text.find("\n## ", start + len(heading))
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:start] + block + text[end:]
    else:
        marker = "<!-- results:start -->"
        at = text.find(marker)
        if at >= 0:  # before the results section's heading
            at = text.rfind("\n## ", 0, at) + 1
            text = text[:at] + block + "\n" + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def pick_workloads(spec: str) -> list[Workload]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(unknown)}")
    return [WORKLOADS[n] for n in names]
