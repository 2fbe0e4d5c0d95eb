"""Async SQLAlchemy engines for the project's databases (MariaDB/MySQL through aiomysql)."""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Strict on every connection, whatever the server's default: a value too long for its column
# or out of its range is an error, never a silently truncated row.
SQL_MODE = "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"


def make_engine(url: str, pool_size: int = 5, no_backslash_escapes: bool = False) -> AsyncEngine:
    """`no_backslash_escapes`: a quote is then the only special character of a string literal,
    and aiomysql escapes a bound string with one `str.replace` instead of pymysql's
    per-character `str.translate` (16 % of the sink's samples, crash-bench --profile: every
    event's JSON payload is a bound string). Only for an engine that never binds bytes:
    aiomysql escapes bytes for the default mode whatever the server's mode is."""
    mode = SQL_MODE + (",NO_BACKSLASH_ESCAPES" if no_backslash_escapes else "")
    # pool_pre_ping and pool_recycle: survive a database restart without failing the
    # first statement on every stale connection.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=True, pool_recycle=300, isolation_level="READ COMMITTED",
                               connect_args={"init_command": f"SET SESSION sql_mode = '{mode}'"})
