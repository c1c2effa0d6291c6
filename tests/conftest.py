from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from smartsocket import SmartSocket
from smartsocket.demo import create_app
from smartsocket.testing import running


@pytest.fixture
async def demo() -> AsyncIterator[SmartSocket]:
    """The demo app (echo/join/leave/chat) on a free port."""
    async with running(create_app()) as server:
        yield server
