"""``RedisAdapter``: nodes joined through Redis pub/sub (redis-py's asyncio client).

``pip install smartsocket[redis]``. Two connections: one subscribed to this node's channels
(read by one task), one that publishes (batches go out as one pipeline: one round trip). The
client's own retries are off: the adapter notices a broken link at once, reports the node
degraded, and reconnects with backoff (``BrokerAdapter``).

For a Redis Cluster use ``redis://host:port?cluster=1``: ``RedisClusterAdapter``
(``redis_cluster.py``, sharded pub/sub). This adapter pointed at a cluster node still works
(Redis Cluster forwards classic pub/sub to every node), but every message then loads every
node of the cluster; it logs a warning when it sees that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from smartsocket.cluster.brokers.base import (
    LINK_TIMEOUT,
    BrokerAdapter,
    Outbound,
    honour_cancel,
    safe_url,
)
from smartsocket.cluster.brokers.runs import pack_runs
from smartsocket.cluster.brokers.scripts import SCRIPTS, ScriptCall
from smartsocket.errors import MissingDependency

logger = logging.getLogger("smartsocket.cluster")

# The watchdog's period (``cluster_link_timeout``): every round pings the subscription, and one
# that heard nothing since the last round, not even the answer to its ping, is dead (a
# half-open TCP connection, a paused server: neither would ever say so).
IDLE_TIMEOUT = LINK_TIMEOUT


class RedisAdapter(BrokerAdapter):
    name = "redis"

    def __init__(self, url: str, idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(url, idle_timeout)
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            raise MissingDependency("cluster_url redis://... needs redis-py", "redis") from exc
        self._pub: Any = None
        self._sub: Any = None
        self._pubsub: Any = None
        self._heard = False  # read something since the watchdog's last round
        self.pings = 0  # sent by the watchdog (tests)
        self._checked_mode = False
        self._incarnation = ""

    def _client(self, **options: Any) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return aioredis.Redis.from_url(
            self.url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2.0,
            socket_keepalive=True, **options,
        )

    async def _connect(self) -> None:
        self._pub = self._client()
        await self._bounded(self._pub.ping())  # TCP connects to a paused server, too
        for script in SCRIPTS:
            await self._pub.script_load(script.source)
        self._incarnation = await read_incarnation(self._pub, safe_url(self.url))
        if not self._checked_mode:
            self._checked_mode = True
            await self._warn_if_cluster()
        # RESP2 for the subscription: redis-py (8.1) speaks RESP3 by default, where every
        # message is a push its parser hands to a handler that formats it for a debug log
        # (str() of the whole message, logged or not): a third of a node's CPU per received
        # message, its own back from Redis included. RESP2 messages are plain replies.
        self._sub = self._client(protocol=2)
        self._pubsub = self._sub.pubsub()
        channels = sorted(self._channels)
        if channels:
            await self._pubsub.subscribe(*channels)
            waiting = set(channels)
            while waiting:
                message = await self._pubsub.get_message(timeout=self.idle_timeout)
                if message is None:
                    raise TimeoutError("no subscription confirmation from Redis")
                if message["type"] == "subscribe":
                    waiting.discard(message["channel"].decode())
                self._handle(message)
        else:
            await self._bounded(self._pubsub.ping())

    async def _warn_if_cluster(self) -> None:
        with contextlib.suppress(Exception):  # INFO may be renamed or denied: no matter
            info = await self._pub.info("cluster")
            if info.get("cluster_enabled"):
                logger.warning(
                    "cluster_url %s is a Redis Cluster node: classic pub/sub reaches every "
                    "node of that cluster; add ?cluster=1 for sharded pub/sub", safe_url(self.url),
                )

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            self._receive(message["channel"].decode(), message["data"])
        elif kind == "subscribe":
            channel = message["channel"].decode()
            if channel in self._channels:
                self._subscribed(channel)

    async def _serve(self) -> None:
        """Read messages (blocking reads: a read timeout per message costs more than the
        message); a watchdog round every ``idle_timeout`` pings (see ``silence``)."""
        self._heard = True
        reader = asyncio.ensure_future(self._read())
        try:
            while True:
                done, _ = await asyncio.wait({reader}, timeout=self.idle_timeout)
                if done:
                    reader.result()
                    raise ConnectionError("Redis closed the subscription")
                if not self._heard:
                    raise TimeoutError(silence(self.idle_timeout))
                self._heard = False
                self.pings += 1
                await self._bounded(self._pubsub.ping())
                honour_cancel()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self) -> None:
        pubsub = self._pubsub
        receive = self._receive
        task = asyncio.current_task()
        assert task is not None
        while True:
            message = await pubsub.get_message(timeout=None)
            honour_cancel(task)  # the task looked up once, not per message
            if message is None:
                continue
            self._heard = True
            if message["type"] == "message":  # the hot path
                receive(message["channel"].decode(), message["data"])
            else:
                self._handle(message)

    async def _send(self, batch: list[Outbound]) -> None:
        if len(batch) == 1 and type(batch[0][1]) is bytes:
            await self._pub.publish(*batch[0])
            return
        # Runs of plain messages as PUBLISH_MANY calls (runs.py): redis-py's per-command
        # packing and reply parsing was most of a node's cost per cross-node publish.
        batch = pack_runs(batch)
        pipe = self._pub.pipeline(transaction=False)
        for channel, data in batch:
            if type(data) is bytes:
                pipe.publish(channel, data)
            else:
                assert isinstance(data, ScriptCall)
                data.add_to(pipe, self._incarnation)
        results = await pipe.execute(raise_on_error=False)
        await retry_unknown_scripts(self._pub, batch, results, self._incarnation)

    supports_scripts = True

    def incarnation(self, key: str) -> str:
        return self._incarnation

    async def execute(self, key: str, *command: Any) -> Any:
        if not self.connected or self._pub is None:
            raise ConnectionError("the link to Redis is down")
        return await self._bounded(self._pub.execute_command(*command))

    async def _apply(self, subscribe: bool, channel: str) -> None:
        if subscribe:
            await self._pubsub.subscribe(channel)
        else:
            await self._pubsub.unsubscribe(channel)

    async def _disconnect(self) -> None:
        for closable in (self._pubsub, self._sub, self._pub):
            if closable is None:
                continue
            close = getattr(closable, "aclose", None) or closable.close
            with contextlib.suppress(Exception):
                await close()
        self._pub = self._sub = self._pubsub = None


def silence(period: float, where: str = "") -> str:
    """Why a watchdog round declared a subscription dead. (A round pings; the next one finds
    whether anything, at least the answer, was read in between: a flag the reader sets, not a
    time. As "read within the period", the answer, read 1 ms after the ping, was too old at
    the next round whenever that round's timer ran a few ms late.) So a dead link is found one
    to two periods after it last answered, whatever the timers' lateness."""
    return (f"Redis{' ' + where if where else ''} answered nothing for a whole round of "
            f"{period:g} s, not even a ping")


async def read_incarnation(client: Any, where: str) -> str:
    """``<run_id>:<master_replid>`` of a Redis server: what changes whenever the data it
    holds may have gone back in time (cluster/roomlog.py relies on it).

    ``run_id`` is new on every start of the process (a restart, with or without lost writes,
    or a restore from an older snapshot); ``master_replid`` is new whenever a replica is
    promoted (a failover, also back to a server that ran before, since it synced from the
    other one in between). As long as both stay the same, the server has been a primary all
    along and its data only moved forward by its own writes."""
    try:
        server = await client.info("server")
        replication = await client.info("replication")
    except Exception as exc:  # INFO renamed or denied (some managed services)
        logger.warning(
            "cannot read INFO from Redis %s (%s): a restart or failover of it that loses "
            "writes is not detected, and clients may drop new room messages as seen", where, exc,
        )
        return ""
    return f"{server.get('run_id', '')}:{replication.get('master_replid', '')}"


async def retry_unknown_scripts(
    client: Any, batch: list[Outbound], results: list[Any], incarnation: str
) -> None:
    """Send again with EVAL the script calls the server did not know (NOSCRIPT: restarted, or
    new), in order; raise any other error of the batch."""
    from redis.exceptions import NoScriptError

    for (_, data), result in zip(batch, results, strict=True):
        if isinstance(result, NoScriptError):
            assert isinstance(data, ScriptCall)
            result = await data.run_source(client, incarnation)
        if isinstance(result, Exception):
            raise result
        if isinstance(data, ScriptCall):
            data.done(result)
