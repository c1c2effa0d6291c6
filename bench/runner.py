"""Orchestration: for each workload, repeat N times, run every peer back to back."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict
from typing import Any

from bench import loadgen, report
from bench.common import (
    LOADGEN_CORE,
    LOG_DIR,
    OUT_DIR,
    REPO_ROOT,
    RESULTS_MD,
    SERVER_CORE,
    cpu_model,
    loadavg,
    log,
    pinning_available,
)
from bench.servers import (
    SECOND_BASELINE,
    Peer,
    PeerUnavailable,
    RunningServer,
    ServerStartError,
    broker_pids,
)
from bench.workloads import Measure, NeedsEarlierMeasure, Options, Workload

GEN_BUSY = 0.90  # generator CPU above this: it may be the bottleneck
OTHER_BUSY = 0.10  # foreign CPU load above this: the machine was busy


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def _fmt_us(v: float) -> str:
    if v >= 10000:
        return f"{v / 1000:.1f}ms"
    return f"{v:.0f}us" if v >= 100 else f"{v:.1f}us"


def make_record(
    wl: Workload,
    m: Measure,
    peer: Peer,
    rep: int,
    lr: loadgen.LoadgenRun,
    server: RunningServer,
    opts: Options,
    pinned: bool,
) -> dict[str, Any]:
    r = lr.result
    rec: dict[str, Any] = {
        "workload": wl.name,
        "measure": m.key,
        "peer": peer.name,
        "rep": rep,
        "ok": lr.ok,
        "error": None if lr.ok else lr.error,
        "unit": m.unit,
        "argv": lr.argv,
        "server_cmd": server.command(),
        "server_log": str(server.log_path.relative_to(REPO_ROOT)),
        "loadgen": r,
        "loadgen_rusage": lr.gen_rusage,
        "window": lr.window,
        "loadgen_stderr": lr.stderr[-4000:],
    }
    if not lr.ok:
        return rec
    try:
        rec["metric"] = m.metric(r, lr.window)
    except (KeyError, ValueError, TypeError, ZeroDivisionError) as e:
        rec["ok"] = False
        rec["error"] = f"no metric: {e}"
        return rec
    extra: dict[str, float] = {}
    for x in m.extras:
        try:
            v = x.value(r, lr.window)
        except (KeyError, ValueError, TypeError, ZeroDivisionError):
            v = None
        if v is not None:
            extra[x.key] = float(v)
    rec["extra"] = extra
    lat = r.get("lat_us", {})
    rec["lat_p50_us"] = lat.get("p50")
    rec["lat_p99_us"] = lat.get("p99")
    rec["lat_p999_us"] = lat.get("p999")
    # The share of the window the generator spent working: in rate mode (ack/half-load) it
    # busy-polls between requests, and the polls that find nothing to do are left out.
    rec["gen_cpu"] = r["cpu"].get("busy_frac", r["cpu"]["frac"])
    w = lr.window
    if w and w.get("wall_s", 0) > 0:
        dt = w["wall_s"]
        rec["server_cpu"] = w["server_cpu_s"] / dt
        if w.get("broker_cpu_s") is not None:
            rec["broker_cpu"] = w["broker_cpu_s"] / dt
        other = w["other_cpu_s"]
        rec["other_load"] = max(0.0, other / dt)
    else:
        rec["server_cpu"] = None
        rec["other_load"] = None
    notes = m.checks(r, opts)
    if (
        m.higher_is_better
        and rec["server_cpu"] is not None
        and rec["server_cpu"] < 0.8
        and rec["gen_cpu"] < 0.8
    ):
        notes.append("neither server nor generator saturated: bound by latency x in-flight window")
    if rec["gen_cpu"] >= GEN_BUSY:
        notes.append(f"generator at {rec['gen_cpu']:.0%} CPU: may be the bottleneck")
    if rec["other_load"] is not None and rec["other_load"] >= OTHER_BUSY:
        notes.append(f"other processes used {rec['other_load']:.0%} of a core")
    if peer.broker:
        # (a node that lost its broker link dropped what was in flight: the likely reason of
        # a "not drained" note, said here rather than found in the log)
        drops = server.log_count("lost the cluster broker")
        if drops:
            notes.append(f"a node lost its broker link {drops} time(s) (see the server log)")
    rec["notes"] = notes
    return rec


def progress_line(tag: str, rec: dict[str, Any], elapsed: float) -> str:
    head = f"{tag} {rec['peer']:<16} {rec['measure']:<12}"
    if not rec["ok"]:
        return f"{head} FAILED: {rec['error']}"
    if rec["unit"].endswith("/s"):
        val = f"{_fmt_rate(rec['metric'])} {rec['unit']}"
    elif rec["unit"].startswith("p50"):
        val = f"p50 {_fmt_us(rec['metric'])}"
    else:
        val = f"{rec['metric']:.2f} {rec['unit']}"
    lat = f"p50/p99 {_fmt_us(rec['lat_p50_us'] or 0)}/{_fmt_us(rec['lat_p99_us'] or 0)}"
    srv = "?" if rec["server_cpu"] is None else f"{rec['server_cpu']:.0%}"
    oth = "?" if rec["other_load"] is None else f"{rec['other_load']:.0%}"
    status = "ok" if not rec["notes"] else "WARN: " + "; ".join(rec["notes"])
    cpu = f"gen {rec['gen_cpu']:.0%}  srv {srv}  other {oth}"
    ex = "".join(f"  {k}={v:,.4g}" for k, v in (rec.get("extra") or {}).items())
    return f"{head} {val:>22}  {lat:<22} {cpu}{ex}  ({elapsed:.1f} s)  {status}"


def summarize(
    records: list[dict[str, Any]],
    workloads: list[Workload],
    peers: list[Peer],
    baseline: str,
    skipped: dict[str, str],
    second: str = SECOND_BASELINE,
) -> dict[str, Any]:
    """Median per (measure, peer) plus ratios against the baseline peers."""
    out: dict[str, Any] = {}
    for wl in workloads:
        for m in wl.measures:
            rows: dict[str, Any] = {}
            for peer in peers:
                takes_part, why_not = peer.applies(wl.name)
                if not takes_part:
                    if why_not:
                        rows[peer.name] = {"runs": 0, "ok_runs": 0, "skipped": why_not}
                    continue
                recs = [r for r in records if r["measure"] == m.key and r["peer"] == peer.name]
                oks = [r for r in recs if r["ok"]]
                row: dict[str, Any] = {"runs": len(recs), "ok_runs": len(oks)}
                if peer.name in skipped and not recs:
                    row["skipped"] = skipped[peer.name]
                if not oks:
                    errs = [r["error"] for r in recs if r["error"]]
                    if errs:
                        row["error"] = errs[0]
                    rows[peer.name] = row
                    continue
                vals = [r["metric"] for r in oks]

                def med(key: str, oks: list[dict[str, Any]] = oks) -> float | None:
                    xs = [r[key] for r in oks if r.get(key) is not None]
                    return statistics.median(xs) if xs else None

                notes: list[str] = []
                for r in oks:
                    for n in r["notes"]:
                        if n not in notes:
                            notes.append(n)
                notes = report.merge_notes(notes)
                fails = len(recs) - len(oks)
                if fails:
                    notes.append(
                        f"{fails} run(s) failed: {next(r['error'] for r in recs if not r['ok'])}"
                    )
                other = [r["other_load"] for r in oks if r.get("other_load") is not None]
                extra: dict[str, float] = {}
                for x in m.extras:
                    xs = [r["extra"][x.key] for r in oks if x.key in (r.get("extra") or {})]
                    if xs:
                        extra[x.key] = statistics.median(xs)
                row.update(
                    extra=extra,
                    metric=statistics.median(vals),
                    min=min(vals),
                    max=max(vals),
                    lat_p50_us=med("lat_p50_us"),
                    lat_p99_us=med("lat_p99_us"),
                    gen_cpu=med("gen_cpu"),
                    server_cpu=med("server_cpu"),
                    other_load_max=max(other) if other else None,
                    notes=notes,
                )
                rows[peer.name] = row
            refs = wl.baselines or (baseline, second)
            for key, ref in (("ratio", refs[0]), ("ratio2", refs[1])):
                base = rows.get(ref, {}).get("metric")
                for row in rows.values():
                    v = row.get("metric")
                    if base and v:
                        row[key] = v / base if m.higher_is_better else base / v
            out[m.key] = rows
    return out


def _raise_nofile() -> None:
    """Servers inherit our fd limit: the idle and rooms workloads need >10,000 sockets."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        if want < 10300:
            log(f"warning: fd limit {want}: the idle and rooms workloads need ~10,300")
    except (ImportError, ValueError, OSError) as e:  # pragma: no cover
        log(f"warning: cannot raise RLIMIT_NOFILE: {e}")


def _prune_logs(keep: int = 200) -> None:
    """Keep only the newest server logs in bench/out/logs (git-ignored anyway)."""
    if not LOG_DIR.is_dir():
        return
    logs = sorted(LOG_DIR.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[keep:]:
        old.unlink(missing_ok=True)


def run(
    workloads: list[Workload],
    peers: list[Peer],
    opts: Options,
    *,
    pin: bool = True,
    baseline: str = "python-socketio",
    write: bool = True,
    charts: bool = True,
) -> int:
    try:
        loadgen.ensure_built()
    except loadgen.BuildError as e:
        log(f"error: {e}")
        return 2
    _raise_nofile()

    pinned = pin and pinning_available()
    if pin and not pinned:
        log("warning: cores 0 and 1 are not both available: running without CPU pinning")
    server_core = SERVER_CORE if pinned else None
    gen_core = LOADGEN_CORE if pinned else None

    skipped: dict[str, str] = {}
    active: list[Peer] = []
    for peer in peers:
        try:
            peer.prepare()
            active.append(peer)
        except PeerUnavailable as e:
            skipped[peer.name] = str(e)
            log(f"SKIP {peer.name}: {e}")

    _prune_logs()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "options": asdict(opts),
        "pinned": pinned,
        "server_core": server_core,
        "loadgen_core": gen_core,
        "baseline": baseline,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
        "workloads": [w.name for w in workloads],
        "peers": [p.name for p in peers],
        "peer_descriptions": {p.name: p.description for p in peers},
    }
    records: list[dict[str, Any]] = []
    failed_measures: set[tuple[str, str]] = set()  # (peer, measure) that failed once: not retried
    total_runs = sum(
        len(w.measures) * opts.repeat * sum(1 for p in active if p.applies(w.name)[0])
        for w in workloads
    )
    done = 0
    t_all = time.monotonic()
    log(
        f"bench: {len(workloads)} workload(s) x {len(active)} peer(s) x {opts.repeat} "
        f"repeat(s) = {total_runs} runs{' (quick)' if opts.quick else ''}; "
        + (f"server on core {server_core}, generator on core {gen_core}" if pinned else "unpinned")
    )
    for wl in workloads:
        for rep in range(1, opts.repeat + 1):
            for peer in active:
                if not peer.applies(wl.name)[0]:
                    continue
                if peer.name in skipped:
                    done += len(wl.measures)
                    continue
                todo = {m.key for m in wl.measures if (peer.name, m.key) not in failed_measures}
                if not todo:
                    done += len(wl.measures)
                    continue
                prev: dict[str, dict[str, Any]] = {}
                server = RunningServer(peer, server_core, workload=wl.name)
                try:
                    server.start()
                except ServerStartError as e:
                    tail = server.log_tail()
                    msg = f"failed to start: {e}"
                    skipped[peer.name] = msg
                    log(f"SKIP {peer.name}: {msg} (log: {e.log_path.relative_to(REPO_ROOT)})")
                    if tail:
                        log("  " + tail.replace("\n", "\n  "))
                    done += len(wl.measures)
                    continue
                try:
                    for m in wl.measures:
                        done += 1
                        tag = f"[{done}/{total_runs} {wl.name} rep {rep}/{opts.repeat}]"
                        if m.key not in todo:
                            continue
                        if not server.alive():
                            log(f"{tag} {peer.name}: server exited; skipping {m.key}")
                            failed_measures.add((peer.name, m.key))
                            continue
                        try:
                            margs = m.args(opts, prev)
                        except NeedsEarlierMeasure as e:
                            log(f"{tag} {peer.name}: skipping {m.key}: {e}")
                            continue
                        args = [
                            *("--proto", peer.proto, "--port", str(server.port)),
                            *("--path", peer.ws_path, "--warmup", str(opts.warmup)),
                            *(("--port2", str(server.port2)) if server.port2 else ()),
                            *("--connect-timeout", str(opts.connect_timeout)),
                            *("--drain-timeout", str(m.drain_timeout(opts))),
                            *margs,
                        ]
                        t0 = time.monotonic()
                        lr = loadgen.run(
                            args,
                            server_sid=server.pid,
                            core=gen_core,
                            timeout_s=m.timeout_s(opts),
                            rss=m.rss,
                            broker_pids=broker_pids(peer.broker),
                        )
                        rec = make_record(wl, m, peer, rep, lr, server, opts, pinned)
                        if rec["ok"] and not server.alive():
                            rec["notes"].append("server exited during the run")
                        records.append(rec)
                        prev[m.key] = rec
                        log(progress_line(tag, rec, time.monotonic() - t0))
                        if not rec["ok"]:
                            failed_measures.add((peer.name, m.key))
                            tail = server.log_tail(5)
                            if tail:
                                log(
                                    f"  server log ({server.log_path.relative_to(REPO_ROOT)}):\n  "
                                    + tail.replace("\n", "\n  ")
                                )
                finally:
                    server.stop()
    meta["elapsed_s"] = round(time.monotonic() - t_all, 1)
    meta["loadavg_end"] = loadavg()
    summary = summarize(records, workloads, peers, baseline, skipped)
    doc = {"meta": meta, "skipped": skipped, "summary": summary, "runs": records}

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    json_path = OUT_DIR / f"results-{stamp}.json"
    meta["json_path"] = str(json_path)
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    (OUT_DIR / "latest.json").write_text(json.dumps(doc, indent=1, default=str))
    log(f"raw results: {json_path.relative_to(REPO_ROOT)}")

    if write and charts and records:
        report.write_charts(workloads, summary, meta)
    blocks = {
        wl.name: report.render_workload(wl, summary, meta, skipped, opts, json_path)
        for wl in workloads
    }
    print("\n\n".join(blocks.values()))
    if write:
        if records:
            report.update_results_md(blocks)
            log(f"updated {RESULTS_MD.relative_to(REPO_ROOT)}")
        else:
            log("no successful run: RESULTS.md left unchanged")
    ok_runs = sum(1 for r in records if r["ok"])
    return 0 if ok_runs else 1
