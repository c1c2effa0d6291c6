"""Runs of plain messages as one Redis script call (``PUBLISH_MANY``), for the plain Redis
adapter's writer (``RedisAdapter._send``: a node's outgoing queue, and the emitter's batches
through ``send_now``).

redis-py packs, sends and reads each command of a pipeline in Python: ~14 us per ``PUBLISH``
measured here (packing, then one parsed reply, with its own timeout, per command), which bounded
a node's cross-node publishes at ~30,000/s of its CPU. One ``EVALSHA`` carrying a run of
messages as one MessagePack argument costs a fraction of that per message. Redis ``PUBLISH``es
each message of the run as it is, in order: subscribers see the same messages on the same
channels (the cluster's wire format does not change).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smartsocket.cluster.brokers.scripts import Script, ScriptCall

if TYPE_CHECKING:
    from smartsocket.cluster.brokers.base import Outbound

RUN = 256  # messages per PUBLISH_MANY call
# Bytes of messages per call (a run ends once it holds this many): one call is one Redis
# argument (at most proto-max-bulk-len, 512 MB by default) and Redis runs it at once.
RUN_BYTES = 1 << 20

# ARGV: MessagePack [channel, message, channel, message, ...], the incarnation (ignored).
PUBLISH_MANY = Script("""
local run = cmsgpack.unpack(ARGV[1])
for i = 1, #run, 2 do
  redis.call('PUBLISH', run[i], run[i + 1])
end
return 1
""")


def pack_runs(
    batch: list[Outbound], messages: int = RUN, size: int = RUN_BYTES
) -> list[Outbound]:
    """Runs of plain messages (up to ``messages`` of them, ending once they hold ``size``
    bytes) as PUBLISH_MANY calls, in the same order; script calls (logged room messages) stay
    where they are. A run of one stays plain."""
    if len(batch) < 2:
        return batch
    out: list[Outbound] = []
    run: list[Any] = []
    held = 0
    for channel, data in batch:
        if type(data) is bytes:
            run += (channel, data)
            held += len(data)
            if len(run) < 2 * messages and held < size:
                continue
        if run:
            out.append(_publish_many(run))
            run = []
            held = 0
        if type(data) is not bytes:
            out.append((channel, data))
    if run:
        out.append(_publish_many(run))
    return out


def _publish_many(run: list[Any]) -> Outbound:
    if len(run) == 2:
        return run[0], run[1]
    return run[0], ScriptCall(PUBLISH_MANY, [], [_strings(run)])


def _strings(items: list[Any]) -> bytes:
    """A MessagePack array of raw strings (Redis' cmsgpack decodes no bin type; a Lua string
    holds any bytes)."""
    out = [_header(len(items), 0x90, b"\xdc", b"\xdd", 16)]
    for item in items:
        data = item if type(item) is bytes else item.encode()
        out.append(_header(len(data), 0xa0, b"\xda", b"\xdb", 32))
        out.append(data)
    return b"".join(out)


def _header(n: int, fix: int, two: bytes, four: bytes, fix_limit: int) -> bytes:
    if n < fix_limit:
        return bytes((fix | n,))
    if fix == 0xa0 and n < 256:
        return b"\xd9" + bytes((n,))
    if n < 65536:
        return two + n.to_bytes(2, "big")
    return four + n.to_bytes(4, "big")
