"""The Lua scripts a Redis broker runs: ``Script`` (registered in ``SCRIPTS``, loaded on every
(re)connect) and ``ScriptCall`` (one queued call, published in order with a node's messages).

The scripts themselves live with what they keep (``cluster/roomlog.py``, ``cluster/catchup.py``,
``recovery/redis.py``); every script gets the incarnation of the Redis server it runs on as its
last argument (``brokers.redis.read_incarnation``), so state kept by a restarted server is never
mistaken for the state before the restart.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("smartsocket.cluster")


class Script:
    """A Lua script run by the broker (Redis): ``EVALSHA``, falling back to ``EVAL`` where
    the broker does not have it cached yet (a restart, a new shard)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        SCRIPTS.append(self)  # loaded on every (re)connect


SCRIPTS: list[Script] = []


class ScriptCall:
    """A queued script call: published in order with this node's other messages;
    ``on_result`` gets what the script returned."""

    __slots__ = ("args", "keys", "on_result", "script")

    def __init__(
        self, script: Script, keys: list[str], args: list[Any],
        on_result: Callable[[Any], None] | None = None,
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.on_result = on_result

    def add_to(self, pipe: Any, incarnation: str) -> None:
        """Queue the call on a redis-py pipeline (by digest: the script is loaded). Every
        script gets the incarnation of the server it runs on as its last argument."""
        pipe.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args, incarnation)

    async def run_source(self, client: Any, incarnation: str) -> Any:
        """Run it with its source (after NOSCRIPT: a restarted or new server)."""
        return await client.eval(
            self.script.source, len(self.keys), *self.keys, *self.args, incarnation
        )

    def done(self, result: Any) -> None:
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                logger.exception("handling the result of a broker script failed")
