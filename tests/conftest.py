"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from resultstore import ResultStore
from resultstore.testing import RedisServer


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A separate connection, writing the way a Celery worker does (SET, then PUBLISH)."""
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    async with client:
        yield client


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A sync admin client that returns raw bytes."""
    with redis_server.client(decode_responses=False) as client:
        yield client


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[ResultStore]:
    """A store on the test's server (modules with other needs define their own)."""
    async with ResultStore.from_url(redis_server.url) as opened:
        yield opened
