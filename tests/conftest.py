"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio

from resultstore import ResultStore

if TYPE_CHECKING:  # imported by pytest_plugins below, after pytest can rewrite its asserts
    from resultstore.testing import RedisServer

# The plugin is opt-in (no pytest11 entry point): this suite turns it on as any project would.
pytest_plugins = ["resultstore.testing"]


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
