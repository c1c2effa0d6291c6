"""Command line: ``python -m bench {run,compare,setup,build,report,readme,list}``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench.common import log
from bench.servers import BASELINE, PEERS, Peer, PeerUnavailable
from bench.workloads import WORKLOADS, Options, Workload


def _pick(spec: str, registry: dict, what: str) -> list:  # type: ignore[type-arg]
    names = (
        list(registry)
        if spec.strip() in ("all", "")
        else [s.strip() for s in spec.split(",") if s.strip()]
    )
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(registry)})")
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return [registry[n] for n in seen]


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def conv(s: str) -> float:
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return v

    return conv


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="SmartSocket benchmarks: a C epoll load generator against several "
        "WebSocket servers (127.0.0.1 only).",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run workloads against peers and update bench/RESULTS.md")
    r.add_argument("workloads", help=f"comma-separated workloads or 'all' ({', '.join(WORKLOADS)})")
    r.add_argument(
        "--peers", default="all", help=f"comma-separated peers or 'all' ({', '.join(PEERS)})"
    )
    r.add_argument(
        "--duration",
        type=_positive(float),
        help="measured window of throughput runs, s (default 10)",
    )
    r.add_argument(
        "--latency-duration",
        type=_positive(float),
        help="measured window of latency runs, s (default 3)",
    )
    r.add_argument(
        "--warmup", type=float, help="unmeasured warm-up before each window, s (default 1)"
    )
    r.add_argument(
        "--repeat", type=_positive(int), help="repetitions; the table shows the median (default 3)"
    )
    r.add_argument(
        "--quick", action="store_true", help="2 s windows, 1 repeat (explicit options still win)"
    )
    r.add_argument("--clients", type=_positive(int), help="ack: connections (default 50)")
    r.add_argument(
        "--inflight",
        type=_positive(int),
        help="ack: requests in flight per connection (default 16)",
    )
    r.add_argument(
        "--members",
        type=_positive(int),
        help="fanout: room members incl. the publisher (default 1000)",
    )
    r.add_argument(
        "--window",
        type=_positive(int),
        help="fanout: messages not yet fully delivered (default 32)",
    )
    r.add_argument("--payload-size", type=_positive(int), help="payload bytes (default 64)")
    r.add_argument(
        "--half-load",
        type=_positive(float),
        help="ack/half-load: fraction of the peer's measured ack rate (default 0.5)",
    )
    r.add_argument(
        "--deflate-payload",
        type=_positive(int),
        help="fanout-deflate: chat text bytes, made of words (default 1024)",
    )
    r.add_argument(
        "--deflate-window",
        type=_positive(int),
        help="fanout-deflate: messages not yet fully delivered (default 16)",
    )
    r.add_argument(
        "--idle-connections",
        type=_positive(int),
        help="idle: connections to open (default 10000; the generator needs as many fds)",
    )
    r.add_argument(
        "--idle-settle",
        type=_positive(float),
        help="idle: wait after the last handshake before reading RSS, s (default 2)",
    )
    r.add_argument(
        "--idle-hold", type=_positive(float), help="idle: hold time after that, s (default 2)"
    )
    r.add_argument("--rooms", type=_positive(int), help="rooms: number of rooms (default 1000)")
    r.add_argument(
        "--room-members", type=_positive(int), help="rooms: members per room (default 10)"
    )
    r.add_argument(
        "--room-window",
        type=_positive(int),
        help="rooms: messages per room not yet fully delivered (default 2)",
    )
    r.add_argument("--no-charts", action="store_true", help="do not write bench/charts/*.png")
    r.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"peer the ratios are computed against (default {BASELINE})",
    )
    r.add_argument("--no-pin", action="store_true", help="do not pin server/generator to cores 0/1")
    r.add_argument(
        "--no-write",
        action="store_true",
        help="do not touch bench/RESULTS.md (JSON is still written)",
    )
    r.add_argument(
        "--smartsocket-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `python -m smartsocket serve` "
        "(repeatable, e.g. --smartsocket-arg=--no-metrics)",
    )
    r.add_argument(
        "--smartsocket-path",
        default=None,
        help="WebSocket path of the smartsocket peer (default /)",
    )

    c = sub.add_parser(
        "compare",
        help="the same workloads against this checkout and BASE_REV, interleaved in one run",
        description="Export BASE_REV (cached with its own venv), run every workload for this "
        "checkout's SmartSocket peers and their @base twins, interleaved, and print medians "
        "and new/base ratios (>= 0.97: within noise). bench/RESULTS.md's results are not "
        "touched (see --section).",
    )
    c.add_argument("base", metavar="BASE_REV", help="commit, tag or branch to compare against")
    c.add_argument(
        "--new", metavar="REV", help="compare REV (exported like BASE_REV) instead of this checkout"
    )
    c.add_argument("--workloads", default="ack,fanout,rooms,fanout-deflate,cluster-fanout")
    c.add_argument(
        "--peers",
        default="smartsocket,ss-2nodes-redis,ss-2nodes-redis-cluster",
        help="SmartSocket peers to run in both versions (each where its workloads apply)",
    )
    c.add_argument("--repeats", type=_positive(int), default=3, help="default 3 (median)")
    c.add_argument("--duration", type=_positive(float), help="throughput windows, s (default 10)")
    c.add_argument("--quick", action="store_true", help="2 s windows (--repeats still applies)")
    c.add_argument("--no-pin", action="store_true", help="do not pin server/generator to cores")
    c.add_argument(
        "--section", metavar="TITLE",
        help="also write the table as the section '## TITLE' of bench/RESULTS.md",
    )

    s = sub.add_parser(
        "setup", help="build the load generator and install the Node peer's packages"
    )
    s.add_argument("--peers", default="all")
    sub.add_parser("build", help="(re)build the load generator")
    rp = sub.add_parser("report", help="re-render bench/RESULTS.md from a raw results JSON file")
    rp.add_argument("json", nargs="?", default=None, help="default: bench/out/latest.json")
    rp.add_argument("--no-charts", action="store_true", help="do not rewrite bench/charts/*.png")
    rd = sub.add_parser(
        "readme", help="rewrite README.md's headline and Performance table from bench/RESULTS.md"
    )
    rd.add_argument("--check", action="store_true", help="only check; exit 1 if they differ")
    sub.add_parser("list", help="list workloads and peers")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "list":
        print("workloads:")
        for w in WORKLOADS.values():
            print(f"  {w.name:<15} {w.description}")
            for m in w.measures:
                print(f"  {'':<15}   - {m.key}: {m.title} [{m.unit}]")
        print("peers:")
        for p in PEERS.values():
            print(f"  {p.name:<22} ({p.proto}) {p.description}")
        return 0

    if args.cmd == "readme":
        from bench import readme

        return readme.main(check=args.check)

    if args.cmd == "report":
        from bench import report

        return report.rerender(args.json, charts=not args.no_charts)

    if args.cmd == "compare":
        from bench import compare

        opts = Options()
        if args.quick:
            opts.apply_quick()
        opts.repeat = args.repeats
        if args.duration is not None:
            opts.duration = args.duration
        try:
            return compare.compare(
                args.base,
                args.new,
                compare.pick_workloads(args.workloads),
                [n.strip() for n in args.peers.split(",") if n.strip()],
                opts,
                pin=not args.no_pin,
                section=args.section,
            )
        except KeyboardInterrupt:
            log("interrupted")
            return 130

    from bench import loadgen

    if args.cmd == "build":
        try:
            print(loadgen.ensure_built(force=True))
            print(loadgen.ensure_cref_built(force=True))
        except loadgen.BuildError as e:
            log(f"error: {e}")
            return 2
        return 0

    if args.cmd == "setup":
        if not loadgen.zlib_header_present():
            log(f"error: {loadgen.ZLIB_HINT}")
            return 2
        try:
            print(loadgen.ensure_built())
        except loadgen.BuildError as e:
            log(f"error: {e}")
            return 2
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log("note: matplotlib is missing, so no charts: pip install -e '.[bench]'")
        rc = 0
        for p in _pick(args.peers, PEERS, "peer"):
            try:
                p.prepare()
                log(f"{p.name}: ready")
            except PeerUnavailable as e:
                log(f"{p.name}: unavailable: {e}")
                rc = 1
        return rc

    # run
    workloads: list[Workload] = _pick(args.workloads, WORKLOADS, "workload")
    peers: list[Peer] = _pick(args.peers, PEERS, "peer")
    opts = Options()
    if args.quick:
        opts.apply_quick()
    for name in (
        "duration",
        "latency_duration",
        "warmup",
        "repeat",
        "clients",
        "inflight",
        "members",
        "window",
        "payload_size",
        "half_load",
        "deflate_payload",
        "deflate_window",
        "idle_connections",
        "idle_settle",
        "idle_hold",
        "rooms",
        "room_members",
        "room_window",
    ):
        v = getattr(args, name)
        if v is not None:
            setattr(opts, name, v)
    if opts.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    for name in ("smartsocket", "smartsocket-nodeflate", "smartsocket-history"):
        sm = PEERS[name]
        sm.extra_args = list(args.smartsocket_arg)
        if args.smartsocket_path:
            sm.ws_path = args.smartsocket_path

    from bench import runner

    try:
        return runner.run(
            workloads,
            peers,
            opts,
            pin=not args.no_pin,
            baseline=args.baseline,
            write=not args.no_write,
            charts=not args.no_charts,
        )
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
