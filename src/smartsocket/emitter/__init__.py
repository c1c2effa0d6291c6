"""Publish to a running cluster from any process, without running a server: ``Emitter``
(synchronous: Django, Flask, Celery, scripts) and ``AsyncEmitter`` (asyncio apps).

The emitter speaks the cluster's own protocol on its broker (``cluster/messages.py``, format v2,
the channels of ``cluster/node.py``), so the nodes cannot tell its messages from another
node's: a room message reaches the members on every node; with recovery on, Redis logs it and
gives it its position with the same script the nodes use (``cluster/roomlog.LOG``), so clients
resume across it; a direct message to a dropped session waits for its resume like any other.

One encoding core, two transports:

``EmitterCore``     the channel and the bytes of each operation (no I/O, no event loop;
                    ``emitter/core.py``, with ``Operations`` and ``Batch``)
``Operations``      the six methods, written once over ``_emit`` (what a front-end does with
                    the core's output): ``AsyncEmitter`` awaits it, ``Emitter`` blocks on it,
                    ``Batch`` collects it
``AsyncEmitter``    (``emitter/emitters.py``) the cluster's own broker adapter
                    (``cluster/brokers``: reconnects with backoff, Redis Cluster slots and
                    redirections, scripts, pipelines) fed by one writer task: what concurrent
                    callers emit goes out in one pipeline
``Emitter``         an ``AsyncEmitter`` on a private event loop thread (nats-py has no
                    synchronous client, and one transport means one behaviour); made on first
                    use, and again in a forked child (gunicorn ``--preload``, Celery prefork)

A call returns once the broker took the message (Redis answered the pipeline; NATS answered
a PING sent after it), and raises ``EmitterError`` when the broker cannot
be reached within ``timeout``. Delivery to sockets is not confirmed: the channel is one-way.
"""

from smartsocket.emitter.core import Batch, EmitterCore, Operations
from smartsocket.emitter.emitters import AsyncEmitter, Emitter
from smartsocket.errors import EmitterError

__all__ = ["AsyncEmitter", "Batch", "Emitter", "EmitterCore", "EmitterError", "Operations"]
