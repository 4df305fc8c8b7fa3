"""How aistream talks to Redis (``redis_url``): the clients the generator's log writer and the
bridge's resumes use, with timeouts chosen for a stream that must not wait on Redis.

redis-py's own defaults (8.x: a 5 s socket timeout, retried ten times with backoff) take about
a minute to report a server that went away, and would time out a blocking read after 5 s; here a
command client gives up after about a second (two quick retries), and a client that waits on the
server (pub/sub, ``XREAD BLOCK``) has no read timeout at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

__all__ = ["REDIS_ERRORS", "Entry", "client", "entries", "retry_delays"]

REDIS_ERRORS = (aioredis.RedisError, OSError)
"""What a Redis call raises when the server is away (or answers nonsense)."""

_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0)


def client(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A Redis client; ``blocking``: one connection of its own with no read timeout, for reads
    that wait on the server."""
    return aioredis.Redis.from_url(
        url,
        single_connection_client=blocking,
        socket_connect_timeout=1.0,
        socket_timeout=None if blocking else 2.0,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2),
        health_check_interval=30,
    )


def retry_delays() -> Iterator[float]:
    """The waits between tries while Redis does not answer: growing, then every second."""
    yield from _BACKOFF
    while True:
        yield _BACKOFF[-1]


Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as the client returns it: its id and its fields."""


async def entries(
    redis: aioredis.Redis, name: str, low: str, high: str = "+", count: int | None = None
) -> list[Entry]:
    """``XRANGE name low high [COUNT count]`` (``(id``: exclusive), typed."""
    found = await redis.xrange(name, min=low, max=high, count=count)
    return cast(list[Entry], found or [])
