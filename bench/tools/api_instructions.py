"""Server instructions per publish on the HTTP API's ``batch`` path (issue 18), under
valgrind's callgrind: a measure a loaded machine does not move.

    .venv/bin/python -m bench.tools.api_instructions [--batches 20] [--batch 1000]
        [--members 2] [--base REV] [--keep callgrind.api.out]

``smartsocket serve`` as bench/api.py runs it (``--api-secret``, no heartbeat inside the
window), under callgrind; ``--members`` members (bench/api_members.py) joined through the API;
two warm-up batches; then the counters are zeroed, ``--batches`` batch requests of ``--batch``
publishes are POSTed one after the other on one keep-alive connection (the bench's body, every
publish checked accepted), the window ends once every member has every publish, and the
server's instructions in it are divided by the publishes. ``--base REV``: the same for that
revision (exported by ``bench compare``). ``--keep``: the window's dump, for
``callgrind_annotate``.

``--nodes 2``: the node under callgrind (node A: every batch is POSTed to it) and a second
node (node B, not measured) joined by Redis (``--redis``, a ``--cluster-prefix`` of their own),
the members split over them (each joined through its own node); a warm-up publish until every
member has one (both nodes subscribed), then the warm-up batches and the window as above: node
A's instructions per publish with the cross-node publish (its broker queue, the Redis writer,
its own messages back from Redis) included, as in ``bench.api --nodes 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.api import ROOM, SECRET, Outcome, RawHttp, batch_body
from bench.api_members import RawMember, connect
from bench.common import HOST, free_port, port_open
from bench.tools.callgrind import checkouts


async def _post(host: str, op: str, body: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    address, port = host.rsplit(":", 1)
    transport, client = await loop.create_connection(RawHttp, address, int(port))
    try:
        return await client.post(host, op, body)
    finally:
        transport.close()


async def _control(option: str, pid: int) -> None:
    """``callgrind_control`` zeroing (-z) or dumping (-d) the server's counters."""
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", option, str(pid),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    assert await proc.wait() == 0, f"callgrind_control {option} failed"


async def _run_batches(client: RawHttp, host: str, batches: int, batch: int,
                       group: list[RawMember]) -> None:
    head, tail = batch_body(batch)
    outcome = Outcome()
    expected = [m.count + batches * batch for m in group]
    for _ in range(batches):
        stamp = b'{"at": %r}' % time.perf_counter()
        outcome.count(await client.post(host, "batch", head + stamp + tail), batch)
    assert outcome.accepted == batches * batch, outcome.refused
    deadline = time.monotonic() + 600
    while any(m.count < n for m, n in zip(group, expected, strict=True)):
        assert time.monotonic() < deadline, [m.count for m in group]
        await asyncio.sleep(0.05)


async def _warm_up(host: str, group: list[RawMember]) -> None:
    """Publish ``w`` through ``host`` until every member got one (every node subscribed),
    then until the counts stay put (none still on its way)."""
    deadline = time.monotonic() + 300
    while not all(m.warm for m in group):
        assert time.monotonic() < deadline, "a node never got the room's publishes"
        answer = await _post(host, "publish", b'{"room": "%s", "event": "w", "data": null}'
                             % ROOM.encode())
        assert answer.startswith(b"200 "), answer
        await asyncio.sleep(0.2)
    counts: list[int] = []
    while counts != [m.count for m in group]:
        counts = [m.count for m in group]
        await asyncio.sleep(1.0)


async def _drive(pid: int, hosts: list[str], args: argparse.Namespace) -> int:
    """Member i on ``hosts[i % len(hosts)]``; every batch POSTed to ``hosts[0]`` (``pid``)."""
    host = hosts[0]
    group = [await connect(hosts[i % len(hosts)]) for i in range(args.members)]
    for i, m in enumerate(group):
        answer = await _post(hosts[i % len(hosts)], "join", b'{"sid": "%s", "room": "%s"}'
                             % (m.sid.encode(), ROOM.encode()))
        assert answer.startswith(b"200 "), answer
    if len(hosts) > 1:
        await _warm_up(host, group)
    loop = asyncio.get_running_loop()
    address, port = host.rsplit(":", 1)
    transport, client = await loop.create_connection(RawHttp, address, int(port))
    try:
        await _run_batches(client, host, 2, args.batch, group)  # warm-up
        await _control("-z", pid)
        await _run_batches(client, host, args.batches, args.batch, group)
        await _control("-d", pid)
    finally:
        transport.close()
        await asyncio.gather(*(m.close() for m in group))
    return int(args.batches) * int(args.batch)


def measure(tree: Path, python: str, args: argparse.Namespace) -> float:
    """Server instructions per publish in the measured window of one checkout."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="callgrind-api-") as tmp:
        out = Path(tmp) / "callgrind.out"
        serve = [
            "-m", "smartsocket", "serve", "--host", HOST,
            "--api-secret", SECRET, "--max-write-buffer", str(512 << 20),
            "--rate-limit-messages", "0", "--log-level", "WARNING", "--ping-interval", "3600",
        ]
        if args.nodes > 1:
            serve += ["--cluster-url", args.redis,
                      "--cluster-prefix", f"benchapicg{uuid.uuid4().hex[:8]}"]
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, *serve,
             "--port", str(port)],
            cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        others: list[subprocess.Popen[bytes]] = []
        try:
            hosts = [f"{HOST}:{port}"]
            for _ in range(args.nodes - 1):
                other = free_port()
                others.append(subprocess.Popen(
                    [python, *serve, "--port", str(other)], cwd=tree,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
                hosts.append(f"{HOST}:{other}")
            deadline = time.monotonic() + 300  # valgrind starts slowly on a loaded machine
            while not all(port_open(int(h.rsplit(":", 1)[1])) for h in hosts):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server under valgrind did not start ({tree})")
                time.sleep(0.5)
            publishes = asyncio.run(_drive(server.pid, hosts, args))
        finally:
            for proc in [server, *others]:
                proc.terminate()
            for proc in [server, *others]:
                proc.wait(timeout=60)
        dumps = sorted(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise SystemExit("callgrind wrote no dump for the measured window")
        if args.keep:
            Path(args.keep).write_bytes(dumps[-1].read_bytes())
        for line in dumps[-1].read_text().splitlines():
            if line.startswith("summary:"):
                return float(line.split()[1]) / publishes
        raise SystemExit(f"no totals in {dumps[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 2),
                        help="2: node A under callgrind, node B beside it, joined by Redis")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--base", help="also measure this revision")
    parser.add_argument("--keep", help="copy the window's callgrind dump here")
    args = parser.parse_args()
    for name, tree, python in checkouts(args.base):
        per = measure(tree, python, args)
        print(f"{name}: {per:,.0f} server instructions per publish "
              f"({args.batches} batches of {args.batch}, {args.members} members on "
              f"{args.nodes} node(s))")


if __name__ == "__main__":
    main()
