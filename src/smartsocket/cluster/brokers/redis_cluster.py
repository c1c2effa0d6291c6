"""``RedisClusterAdapter``: nodes joined through a Redis Cluster's sharded pub/sub (Redis 7+).

``cluster_url="redis://host:port?cluster=1"`` (``rediss://`` for TLS; several seed nodes as
``redis://h1:7000,h2:7000?cluster=1``; user, password and other query options as for a plain
``redis://`` URL; ``cluster`` also takes ``true``/``yes``). The option says it: without it a
URL keeps the classic pub/sub of ``RedisAdapter`` even when it names a cluster node (which
works, since Redis Cluster forwards a classic ``PUBLISH`` over its bus to every node, but then
every message loads every node; ``RedisAdapter`` logs a warning when it sees that).

Every channel uses sharded pub/sub (``SSUBSCRIBE`` / ``SPUBLISH``): a channel lives on the
shard that owns its hash slot, and its messages never leave that shard. For room channels that
is the point (a room's traffic loads one shard, and only the nodes with members of the room
hear it). ``<prefix>.all`` and the ``<prefix>.node.<id>`` inboxes are sharded too: each is one
channel, so one shard carries it, whereas a classic ``PUBLISH`` on a Redis Cluster goes over
the cluster bus to every node; the inboxes spread over the shards like the rooms. Messages of
one channel keep their order (one shard, one connection); nothing in the cluster protocol
relies on the order between channels (presence carries sequence numbers for that).

How: the slot map comes from ``CLUSTER SHARDS`` (asked of the seed nodes, then of the known
primaries); the slot of a channel is redis-py's ``key_slot``. Per primary there is one client: a
publishing connection (a batch is grouped by shard and goes out as one pipeline per shard, the
shards concurrently) and, while this node has channels there, one subscribed connection read
by its own task (blocking reads, no polling).

Topology changes: when a slot moves, Redis unsubscribes its channels' subscribers (a
``sunsubscribe`` we did not ask for): the adapter re-reads the slot map and subscribes on the
new owner, without dropping the link. An ``SSUBSCRIBE`` answered ``MOVED`` goes to the node
named in the answer; an ``SPUBLISH`` answered ``MOVED`` makes the adapter re-read the slot map
and send it again, once. A primary that cannot be reached takes the whole link down: the node
reports itself degraded and ``BrokerAdapter`` reconnects with backoff (re-reading the slot map,
so a failed-over shard is found again) and resubscribes; a cluster with uncovered slots counts
as unreachable.

Why not redis-py's ``RedisCluster.pubsub()`` (``ClusterPubSub``): since redis-py 8 it
resubscribes after a reconnect and follows slot moves, which this module does itself; but its
reader, ``get_sharded_message``, still polls the per-node subscriptions in turn with a timeout
each, so a reader either spins or waits on idle shards. Measured on the 3-primary test cluster
(``python -m bench.tools.cluster_pubsub_probe``, redis-py 8.1, one channel per shard, a message
at a time on a random shard; busy 2-core machine): this adapter's blocking reader per shard
p50 0.5 ms and no CPU while idle; ``get_sharded_message`` with timeout 0 p50 1.5 ms and 25 % of
a core while idle, with 10 ms p50 10 ms, with 100 ms p50 99 ms. Its own retries would also hide
the broken link the node must report. So this module keeps what the library lacks for us: one
blocking reader per shard, pipelined publishing per shard with the scripts and the incarnation
of each shard, and the link taken down (and reported) as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode

from smartsocket.cluster.brokers.base import BrokerAdapter, Outbound, honour_cancel
from smartsocket.cluster.brokers.redis import IDLE_TIMEOUT, read_incarnation, silence
from smartsocket.cluster.brokers.scripts import SCRIPTS, ScriptCall
from smartsocket.errors import MissingDependency

logger = logging.getLogger("smartsocket.cluster")

SLOTS = 16384
_TRUE = ("1", "true", "yes", "on")


def is_cluster_url(url: str) -> bool:
    """A ``redis://`` or ``rediss://`` URL with ``cluster=1``."""
    scheme, _, rest = url.partition("://")
    query = parse_qs(rest.partition("?")[2])
    return scheme.lower() in ("redis", "rediss") and any(
        value.lower() in _TRUE for value in query.get("cluster", ())
    )


@functools.lru_cache(maxsize=65536)
def channel_slot(channel: str) -> int:
    """The hash slot of a channel (the same as a key's: CRC16, ``{tag}`` aware)."""
    from redis.crc import key_slot

    return int(key_slot(channel.encode()))


def parse_url(url: str) -> tuple[list[str], str, str, str]:
    """``redis://[user:pass@]h1:p1[,h2:p2][/0]?cluster=1[&options]`` as (seed addresses,
    scheme, userinfo with its '@', the other options with their '?') for per-node URLs."""
    if not is_cluster_url(url):
        raise ValueError(f"not a Redis Cluster URL: {url!r} (redis://host:port?cluster=1)")
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    options = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "cluster"]
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has database 0 only, not {path!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    seeds = [_with_port(h.strip()) for h in hosts.split(",") if h.strip()]
    if not seeds:
        raise ValueError(f"no host in {url!r}")
    rest_query = "?" + urlencode(options) if options else ""
    return seeds, scheme.lower(), userinfo + at, rest_query


def _with_port(host: str) -> str:
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        return host if "]:" in host else f"{host}:6379"
    return host if ":" in host else f"{host}:6379"


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(entry: Any) -> dict[str, Any]:
    """A ``CLUSTER SHARDS`` map, parsed by redis-py (a dict) or raw (a flat list)."""
    items = entry.items() if isinstance(entry, dict) else zip(entry[::2], entry[1::2], strict=True)
    return {_text(key): value for key, value in items}


def slot_owners(reply: Any, tls: bool, asked: str) -> list[str]:
    """Slot -> address of its primary, from a ``CLUSTER SHARDS`` reply ('' where no healthy
    primary serves the slot)."""
    owners = [""] * SLOTS
    for raw in reply:
        shard = _fields(raw)
        slots = [int(s) for s in shard.get("slots", [])]
        for raw_node in shard.get("nodes", []):
            node = _fields(raw_node)
            if _text(node.get("role", "")) != "master":
                continue
            if _text(node.get("health", "online")) != "online":
                continue
            host = _text(node.get("endpoint", ""))
            if host in ("", "?"):
                host = _text(node.get("ip", ""))
            if not host:  # a node that never met another one does not know its address
                host = asked.rsplit(":", 1)[0].strip("[]")
            ports = ("tls-port", "port") if tls else ("port", "tls-port")
            port = next((node[key] for key in ports if node.get(key)), None)
            if port is None:
                continue
            address = _addr(host, int(port))
            for start, end in zip(slots[::2], slots[1::2], strict=True):
                owners[start : end + 1] = [address] * (end - start + 1)
            break
    return owners


class _Shard:
    """One primary: its client (publishing) and, while this node has channels there, a
    subscribed connection with the task reading it."""

    __slots__ = ("addr", "channels", "client", "heard", "incarnation", "leaving", "pubsub",
                 "reader")

    def __init__(self, addr: str, client: Any) -> None:
        self.addr = addr
        self.client = client
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.channels: set[str] = set()  # subscribed here (or on the way)
        self.leaving: dict[str, int] = {}  # SUNSUBSCRIBEs we sent, not yet confirmed
        self.heard = False  # read something since the watchdog's last round
        self.incarnation: str | None = None  # read_incarnation, once connected


class RedisClusterAdapter(BrokerAdapter):
    name = "redis-cluster"

    def __init__(self, url: str, idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(url, idle_timeout)  # idle_timeout: the watchdog's period (_watch)
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            raise MissingDependency("cluster_url redis://...?cluster=1 needs redis-py",
                                    "redis") from exc
        self._seeds, self._scheme, self._userinfo, self._query = parse_url(url)
        self._owners: list[str] = []  # slot -> primary address
        self._shards: dict[str, _Shard] = {}
        self._where: dict[str, str] = {}  # channel -> address it is subscribed on
        self._stale: str | None = None  # a slot moved away from this address: re-read
        self._broken: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self.pings: dict[str, int] = {}  # sent by the watchdog, by primary (tests)

    # topology

    def _client(self, addr: str) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return aioredis.Redis.from_url(
            f"{self._scheme}://{self._userinfo}{addr}{self._query}",
            retry=Retry(NoBackoff(), 0), socket_connect_timeout=2.0, socket_keepalive=True,
        )

    def _shard(self, addr: str) -> _Shard:
        shard = self._shards.get(addr)
        if shard is None:
            shard = self._shards[addr] = _Shard(addr, self._client(addr))
        return shard

    def _owner(self, channel: str) -> str:
        return self._owners[channel_slot(channel)]

    async def _read_topology(self, first: Iterable[str] = ()) -> None:
        """The slot map, from the first node that answers with one covering every slot."""
        errors: list[str] = []
        # the seeds, then the primaries known last (the seeds may be the ones that failed)
        candidates = list(dict.fromkeys([*first, *self._seeds, *self._shards, *self._owners]))
        for addr in candidates:
            shard = self._shards.get(addr)
            client = shard.client if shard is not None else self._client(addr)
            try:  # bounded: a paused seed must not keep us from asking the next one
                reply = await self._bounded(client.execute_command("CLUSTER", "SHARDS"))
            except Exception as exc:
                errors.append(f"{addr}: {type(exc).__name__}: {exc}")
                continue
            finally:
                if shard is None:
                    with contextlib.suppress(Exception):
                        await client.aclose()
            owners = slot_owners(reply, self._scheme == "rediss", addr)
            if "" in owners:
                errors.append(f"{addr}: {owners.count('')} slots have no healthy primary")
                continue
            self._owners = owners
            self._stale = None
            return
        raise ConnectionError("no usable Redis Cluster slot map: " + "; ".join(errors))

    # the link

    async def _connect(self) -> None:
        self._broken = asyncio.Event()
        self._failure = None
        self._where.clear()
        await self._read_topology()
        primaries = sorted(set(self._owners))
        # bounded: TCP connects to a paused primary too (then a failover may replace it)
        await asyncio.gather(
            *(self._bounded(self._shard(addr).client.ping()) for addr in primaries)
        )
        for addr in primaries:
            shard = self._shard(addr)
            for script in SCRIPTS:
                await shard.client.script_load(script.source)
            shard.incarnation = await read_incarnation(shard.client, addr)
        # Subscribe to what is wanted, again for channels wanted while this ran.
        done: set[str] = set()
        while wanted := sorted(self._channels - done):
            by_shard: dict[str, list[str]] = {}
            for channel in wanted:
                by_shard.setdefault(self._owner(channel), []).append(channel)
            for addr, channels in by_shard.items():
                await self._subscribe_and_confirm(self._shard(addr), channels)
            done.update(wanted)
        for channel in done - self._channels:  # no longer wanted
            await self._apply(False, channel)
        loop = asyncio.get_running_loop()
        for shard in self._shards.values():
            if shard.pubsub is not None and shard.reader is None:
                self._start_reader(shard, loop)

    async def _subscribe_and_confirm(self, shard: _Shard, channels: list[str]) -> None:
        if shard.pubsub is None:
            shard.pubsub = shard.client.pubsub()
        by_slot: dict[int, list[str]] = {}
        for channel in channels:
            by_slot.setdefault(channel_slot(channel), []).append(channel)
            shard.channels.add(channel)
            self._where[channel] = shard.addr
        for group in by_slot.values():  # one SSUBSCRIBE may not span slots (CROSSSLOT)
            await shard.pubsub.ssubscribe(*group)
        waiting = set(channels)
        while waiting:
            message = await shard.pubsub.get_message(timeout=self.idle_timeout)
            if message is None:
                raise TimeoutError(f"no subscription confirmation from Redis {shard.addr}")
            if message["type"] == "ssubscribe":
                waiting.discard(message["channel"].decode())
            self._handle(shard, message)

    def _start_reader(self, shard: _Shard, loop: asyncio.AbstractEventLoop) -> None:
        shard.heard = True
        shard.reader = loop.create_task(self._read(shard))
        shard.reader.add_done_callback(self._reader_done)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if self._broken is not None and not self._broken.is_set():
            self._failure = task.exception() or ConnectionError("a shard subscription ended")
            self._broken.set()

    async def _read(self, shard: _Shard) -> None:
        """Read one shard's subscription (blocking reads; the watchdog in ``_serve`` pings)."""
        from redis.exceptions import MovedError

        pubsub = shard.pubsub
        receive = self._receive
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except MovedError as exc:  # an SSUBSCRIBE sent to a former owner of the slot
                self._redirected(shard, exc.slot_id, _addr(exc.host, int(exc.port)))
                continue
            honour_cancel()
            if message is None:
                continue
            shard.heard = True
            if message["type"] == "smessage":  # the hot path
                receive(message["channel"].decode(), message["data"])
            else:
                self._handle(shard, message)

    def _handle(self, shard: _Shard, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "smessage":
            self._receive(message["channel"].decode(), message["data"])
            return
        if kind not in ("ssubscribe", "sunsubscribe"):
            return
        channel = message["channel"].decode()
        here = self._where.get(channel) == shard.addr
        if kind == "ssubscribe":
            if here and channel in self._channels:
                self._subscribed(channel)
            return
        if shard.leaving.get(channel):  # the confirmation of our SUNSUBSCRIBE
            shard.leaving[channel] -= 1
            if not shard.leaving[channel]:
                del shard.leaving[channel]
            return
        # Redis dropped it: the slot moved to another shard. Subscribe there.
        shard.channels.discard(channel)
        if here:
            del self._where[channel]
        if channel in self._channels:
            logger.info("redis-cluster: %s moved away from %s; resubscribing", channel,
                        shard.addr)
            self._stale = shard.addr  # it knows the new owner: ask it first
            self._resubscribe(channel)

    def _redirected(self, shard: _Shard, slot: int, addr: str) -> None:
        """Our SSUBSCRIBE got MOVED: the slot is ``addr``'s now; subscribe there."""
        if self._owners:
            self._owners[slot] = addr
        for channel in [c for c in shard.channels if channel_slot(c) == slot]:
            shard.channels.discard(channel)
            shard.leaving.pop(channel, None)
            if self._where.get(channel) == shard.addr:
                del self._where[channel]
            if channel in self._channels:
                self._resubscribe(channel)

    def _resubscribe(self, channel: str) -> None:
        # Through the control queue, so it is serialized with subscribe/unsubscribe.
        self._queue_control(True, channel)

    async def _serve(self) -> None:
        """Wait for a reader to fail; meanwhile, every ``idle_timeout``, a watchdog round."""
        assert self._broken is not None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._broken.wait(), self.idle_timeout)
            if self._broken.is_set():
                raise self._failure or ConnectionError("a shard subscription ended")
            await self._watch()

    async def _watch(self) -> None:
        """One watchdog round: raise if a subscription heard nothing since the last round,
        not even the answer to its ping (``redis.silence``); ping each; close the ones left
        without channels."""
        primaries = set(self._owners)
        for shard in list(self._shards.values()):
            if not shard.channels:
                await self._close_subscription(shard)
                if not shard.channels and shard.addr not in primaries:
                    del self._shards[shard.addr]
                    with contextlib.suppress(Exception):
                        await shard.client.aclose()
                continue
            if shard.pubsub is None or shard.reader is None:
                continue
            if not shard.heard:
                raise TimeoutError(silence(self.idle_timeout, shard.addr))
            shard.heard = False
            self.pings[shard.addr] = self.pings.get(shard.addr, 0) + 1
            await self._bounded(shard.pubsub.ping())
            honour_cancel()

    async def _close_subscription(self, shard: _Shard) -> None:
        pubsub, shard.pubsub = shard.pubsub, None
        reader, shard.reader = shard.reader, None
        shard.leaving.clear()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _apply(self, subscribe: bool, channel: str) -> None:
        if not subscribe:
            addr = self._where.pop(channel, None)
            shard = self._shards.get(addr) if addr is not None else None
            if shard is None:
                return
            shard.channels.discard(channel)
            if shard.pubsub is None:
                return
            shard.leaving[channel] = shard.leaving.get(channel, 0) + 1
            await shard.pubsub.sunsubscribe(channel)
            return
        if channel not in self._channels or channel in self._where:
            return  # no longer wanted, or subscribed already (its waiters resolve then)
        if self._stale is not None:
            await self._read_topology(first=[self._stale])
        shard = self._shard(self._owner(channel))
        shard.channels.add(channel)
        self._where[channel] = shard.addr
        if shard.pubsub is None:
            shard.pubsub = shard.client.pubsub()
            await shard.pubsub.ssubscribe(channel)  # connects
            self._start_reader(shard, asyncio.get_running_loop())
        else:
            await shard.pubsub.ssubscribe(channel)

    supports_scripts = True

    async def execute(self, key: str, *command: Any) -> Any:
        if not self.connected or not self._owners:
            raise ConnectionError("the link to the Redis Cluster is down")
        client = self._shard(self._owners[channel_slot(key)]).client
        return await self._bounded(client.execute_command(*command))

    def incarnation(self, key: str) -> str:
        shard = self._shards.get(self._owners[channel_slot(key)]) if self._owners else None
        if shard is None or shard.incarnation is None:
            return ""
        return shard.incarnation

    async def _send(self, batch: list[Outbound]) -> None:
        moved = await self._send_by_shard(batch)
        if moved:  # slots moved: read the new map and send those once more
            await self._read_topology()
            if await self._send_by_shard(moved):
                raise ConnectionError("SPUBLISH still redirected after re-reading the slot map")

    async def _send_by_shard(
        self, batch: list[Outbound]
    ) -> list[Outbound]:
        """Publish, one pipeline per shard, concurrently; returns what was answered MOVED."""
        groups: dict[str, list[Outbound]] = {}
        owners = self._owners
        for item in batch:
            groups.setdefault(owners[channel_slot(item[0])], []).append(item)
        if len(groups) == 1:
            ((addr, items),) = groups.items()
            return await self._publish_to(self._shard(addr), items)
        results = await asyncio.gather(
            *(self._publish_to(self._shard(addr), items) for addr, items in groups.items()),
            return_exceptions=True,
        )
        moved: list[Outbound] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            moved.extend(result)
        return moved

    async def _publish_to(
        self, shard: _Shard, items: list[Outbound]
    ) -> list[Outbound]:
        from redis.exceptions import MovedError, NoScriptError

        if len(items) == 1 and type(items[0][1]) is bytes:
            try:
                await shard.client.spublish(*items[0])
            except MovedError:
                return items
            return []
        if shard.incarnation is None:  # a primary met after a slot moved
            shard.incarnation = await read_incarnation(shard.client, shard.addr)
        incarnation = shard.incarnation
        pipe = shard.client.pipeline(transaction=False)
        for channel, data in items:
            if type(data) is bytes:
                pipe.spublish(channel, data)
            else:
                assert isinstance(data, ScriptCall)
                data.add_to(pipe, incarnation)
        results = await pipe.execute(raise_on_error=False)
        moved: list[Outbound] = []
        for (channel, data), result in zip(items, results, strict=True):
            if isinstance(result, MovedError):
                moved.append((channel, data))
            elif isinstance(result, NoScriptError) and isinstance(data, ScriptCall):
                data.done(await data.run_source(shard.client, incarnation))
            elif isinstance(result, Exception):
                raise result
            elif isinstance(data, ScriptCall):
                data.done(result)
        return moved

    async def _disconnect(self) -> None:
        shards = list(self._shards.values())
        self._shards.clear()
        self._where.clear()
        for shard in shards:
            await self._close_subscription(shard)
            with contextlib.suppress(Exception):
                await shard.client.aclose()

    # introspection (tests, stats)

    def subscriptions(self) -> dict[str, set[str]]:
        """Channels by the address of the primary they are subscribed on."""
        return {s.addr: set(s.channels) for s in self._shards.values() if s.channels}
