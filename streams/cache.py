"""The Redis client every process uses (nonces, view cache).

Settings chosen for outages, not only for the good days:

- a blocking pool: under a burst, a request waits (up to 5 s) for a free connection instead of
  failing with "Too many connections" as the default pool does;
- retries on connection errors and timeouts, with jittered exponential backoff: after a Redis
  restart every pooled connection is stale, and without a retry each of them failed exactly
  one request (stray 500s minutes after the restart, issue 9 finding 7). A pool made by hand
  does not inherit redis-py's client-level default retry, so it is set here, on the pool;
- a health check (PING) on a connection idle for more than 10 s, so that a connection cut while
  idle is replaced before it carries a command;
- socket timeouts, so that a Redis that stopped answering (not closed) fails a request in
  seconds instead of hanging it; TCP keepalive for connections dropped by the network.

A retried SET NX whose first answer was lost answers "exists": for a nonce that refuses one
honest request (the client signs a new one), never accepts a replay.
"""
from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["redis_client", "REDIS_ERRORS"]

# What a caller catches to answer "Redis unavailable" (503) instead of failing.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError)

RETRIES = 3
HEALTH_CHECK_INTERVAL_S = 10
SOCKET_TIMEOUT_S = 2.0


def redis_client(url: str, max_connections: int = 64) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5,
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.5), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError],
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S, socket_keepalive=True)
    return redis.Redis(connection_pool=pool)
