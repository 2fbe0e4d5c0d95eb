"""The connections of a crash-ops process, made on first use (not at import: the CLI and the
unit tests import the views without a database) and shared by the operator views, the jackpot
views and the console."""
from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from sql.db import make_engine
from streams.app import settings
from streams.cache import redis_client

_engine: AsyncEngine | None = None
_redis: Redis | None = None


def db() -> AsyncEngine:
    global _engine
    if _engine is None:
        _engine = make_engine(settings.db_url, pool_size=4)
    return _engine


def redis() -> Redis:
    global _redis
    if _redis is None:
        _redis = redis_client(settings.redis_url)
    return _redis
