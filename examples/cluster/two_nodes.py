"""Two SmartSocket nodes joined through Redis: a chat that crosses nodes.

    python examples/cluster/two_nodes.py [--cluster-url redis://127.0.0.1:6379]

Starts two `smartsocket serve` processes (the demo app) on free ports, sharing the broker;
connects Ann to node A and Ben to node B, puts both in the room "lobby", and has them chat.
The same works with `nats://127.0.0.1:4222`. Needs `pip install 'smartsocket[redis]'` (or
`[nats]`) and a running broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys

from smartsocket import Client
from smartsocket.testing import Recorder


async def start_node(cluster_url: str, prefix: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0",
        "--cluster-url", cluster_url, "--cluster-prefix", prefix, "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
    if "listening on" not in line:
        raise SystemExit(f"node did not start: {line!r}")
    return proc, line.split()[-1]


async def main(cluster_url: str) -> None:
    prefix = "example-" + secrets.token_hex(4)  # a private namespace on a shared broker
    nodes = [await start_node(cluster_url, prefix) for _ in range(2)]
    try:
        (_, url_a), (_, url_b) = nodes
        ann = await Client(url_a, reconnect=False).connect()
        ben = await Client(url_b, reconnect=False).connect()
        heard_by_ben = Recorder(ben, "chat")
        heard_by_ann = Recorder(ann, "chat")
        await ann.call("join", {"room": "lobby", "name": "Ann"})
        await ben.call("join", {"room": "lobby", "name": "Ben"})
        print(f"Ann is on {url_a}, Ben is on {url_b}")
        await ann.call("chat", {"room": "lobby", "text": "hello from node A"})
        message = await heard_by_ben.next("chat")
        print(f"Ben got {message['text']!r} from {message['name']}")
        await ben.call("chat", {"room": "lobby", "text": "hi Ann, this is node B"})
        message = await heard_by_ann.next("chat")
        print(f"Ann got {message['text']!r} from {message['name']}")
        await ann.close()
        await ben.close()
    finally:
        for proc, _ in nodes:
            proc.terminate()
            await proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster-url", default="redis://127.0.0.1:6379")
    asyncio.run(main(parser.parse_args().cluster_url))
