"""Does redis-py's ``ClusterPubSub`` read sharded pub/sub well enough to replace
``cluster/brokers/redis_cluster.py``'s reader? (issue 15)

One reader subscribes one channel on every shard of the throwaway Redis Cluster
(scripts/redis-cluster, 127.0.0.1:7101), then one message at a time is published on the
channel of one shard and timed until the reader has it. Two readers:

- ``clusterpubsub``: ``RedisCluster.pubsub()`` + ``get_sharded_message(timeout=T)`` in a loop,
  the way the library is meant to be read (it polls the per-node subscriptions in turn);
- ``adapter``: SmartSocket's ``RedisClusterAdapter`` (one blocking reader task per shard).

Also the reader's CPU while idle (process CPU over a quiet second).

    .venv/bin/python -m bench.tools.cluster_pubsub_probe [--messages 200] [--timeout 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

URL = "redis://127.0.0.1:7101"


def channels_on_every_shard(prefix: str, slots_of: Callable[[str], int],
                            owner: Callable[[int], str]) -> list[str]:
    seen: dict[str, str] = {}
    i = 0
    while len(seen) < 3 and i < 10_000:
        name = f"{prefix}.{i}"
        seen.setdefault(owner(slots_of(name)), name)
        i += 1
    return list(seen.values())


async def timed(publish: Callable[[str, bytes], Awaitable[Any]], inbox: asyncio.Queue[bytes],
                channels: list[str], messages: int) -> list[float]:
    lat = []
    pick = random.Random(15)  # the same shard sequence for every reader; not the reader's order
    for i in range(messages):
        channel = pick.choice(channels)
        t0 = time.perf_counter()
        await publish(channel, b"%d" % i)
        while (await inbox.get()) != b"%d" % i:
            pass
        lat.append((time.perf_counter() - t0) * 1e6)
        await asyncio.sleep(0.002)  # a quiet moment between messages, as under light load
    return lat


async def idle_cpu(seconds: float = 1.0) -> float:
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return (time.process_time() - c0) / (time.perf_counter() - t0)


async def probe_clusterpubsub(messages: int, timeout: float) -> dict[str, float]:
    from redis.asyncio.cluster import RedisCluster
    from redis.crc import key_slot

    rc = RedisCluster.from_url(URL)
    await rc.initialize()
    owner = lambda slot: rc.nodes_manager.get_node_from_slot(slot).name  # noqa: E731
    channels = channels_on_every_shard(f"probe{uuid.uuid4().hex[:6]}",
                                       lambda c: key_slot(c.encode()), owner)
    ps = rc.pubsub()
    await ps.ssubscribe(*channels)
    inbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def read() -> None:
        while True:
            m = await ps.get_sharded_message(ignore_subscribe_messages=True, timeout=timeout)
            if m is not None and m["type"] == "smessage":
                inbox.put_nowait(m["data"])
            elif timeout == 0:
                await asyncio.sleep(0)  # let the loop breathe, or nothing else runs

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.3)
    cpu = await idle_cpu()
    lat = await timed(lambda c, d: rc.spublish(c, d), inbox, channels, messages)
    reader.cancel()
    await ps.aclose()
    await rc.aclose()
    return summary(lat, cpu)


async def probe_adapter(messages: int) -> dict[str, float]:
    from redis.asyncio.cluster import RedisCluster
    from redis.crc import key_slot

    from smartsocket.cluster.brokers.redis_cluster import RedisClusterAdapter

    rc = RedisCluster.from_url(URL)
    await rc.initialize()
    owner = lambda slot: rc.nodes_manager.get_node_from_slot(slot).name  # noqa: E731
    channels = channels_on_every_shard(f"probe{uuid.uuid4().hex[:6]}",
                                       lambda c: key_slot(c.encode()), owner)
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    adapter = RedisClusterAdapter(URL + "?cluster=1")
    await adapter.start(lambda channel, data: inbox.put_nowait(data), lambda up: None)
    await asyncio.gather(*(adapter.subscribe(c) for c in channels))
    await asyncio.sleep(0.3)
    cpu = await idle_cpu()
    lat = await timed(lambda c, d: rc.spublish(c, d), inbox, channels, messages)
    await adapter.close()
    await rc.aclose()
    return summary(lat, cpu)


def summary(lat: list[float], cpu: float) -> dict[str, float]:
    lat.sort()
    return {"p50_us": statistics.median(lat), "p99_us": lat[int(len(lat) * 0.99) - 1],
            "idle_cpu": cpu}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--timeout", type=float, action="append",
                    help="get_sharded_message timeouts to try (default 0, 0.01, 0.1)")
    args = ap.parse_args()
    import redis

    print(f"redis-py {redis.__version__}; one channel per shard, {args.messages} messages, "
          "each on a shard picked at random")
    rows = [("adapter (blocking reader per shard)", await probe_adapter(args.messages))]
    for t in args.timeout or [0.0, 0.01, 0.1]:
        rows.append((f"ClusterPubSub get_sharded_message(timeout={t:g})",
                     await probe_clusterpubsub(args.messages, t)))
    print(f"{'reader':<52} {'p50':>9} {'p99':>9} {'idle CPU':>9}")
    for name, r in rows:
        print(f"{name:<52} {r['p50_us']:>7.0f}us {r['p99_us']:>7.0f}us {r['idle_cpu']:>8.0%}")


if __name__ == "__main__":
    asyncio.run(main())
