"""The Redis client every process uses (nonces, order-number claims)."""
from __future__ import annotations

import redis.asyncio as redis


def redis_client(url: str, max_connections: int = 64) -> redis.Redis:
    # A blocking pool: under a burst, a request waits (up to 5 s) for a free connection instead of
    # failing with "Too many connections" as the default pool does.
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5)
    return redis.Redis(connection_pool=pool)
