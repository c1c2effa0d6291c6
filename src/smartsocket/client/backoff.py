"""Kept for imports of ``smartsocket.client.backoff``: the function lives in
``smartsocket.backoff``, shared with the broker adapters and the outbox consumer."""

from smartsocket.backoff import backoff_delay

__all__ = ["backoff_delay"]
