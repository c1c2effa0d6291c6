"""Reconnect delays: exponential backoff with jitter, so peers that lost the same server do not
all come back in the same instant. One function for every reconnecting part: the Python client,
the broker adapters (``cluster/brokers/base.Backoff``) and the outbox consumer."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int,
    *,
    base: float,
    maximum: float,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> float:
    """Delay before reconnect ``attempt`` (1-based): ``base * 2**(attempt-1)``, capped at
    ``maximum``, then spread by +/- ``jitter`` (a fraction) uniformly."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    delay = min(maximum, base * 2 ** min(attempt - 1, 62))
    if jitter:
        spread: float = (rng or random).uniform(-jitter, jitter)
        delay = min(maximum, delay * (1 + spread))
    return float(max(0.0, delay))
