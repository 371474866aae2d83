"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from resultstore.testing import RedisServer


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A separate connection, writing the way a Celery worker does (SET, then PUBLISH)."""
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    async with client:
        yield client
