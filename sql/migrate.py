"""Applies sql/migrations/<database>/NNN_*.sql in order, once each (schema_migrations)."""
from __future__ import annotations

import asyncio
import logging
import time
from importlib import resources

from sqlalchemy import text

from sql.db import make_engine

log = logging.getLogger(__name__)


def migration_files(database: str) -> list[tuple[str, str]]:
    folder = resources.files("sql") / "migrations" / database
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text()) for p in files]


def split_statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


async def migrate(database: str, url: str) -> list[str]:
    """Apply pending migrations of one database; returns the names applied."""
    engine = make_engine(url, pool_size=1)
    applied: list[str] = []
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version VARCHAR(128) NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)"))
            done = {row[0] for row in await conn.execute(text("SELECT version FROM schema_migrations"))}
        for name, script in migration_files(database):
            if name in done:
                continue
            async with engine.begin() as conn:
                for statement in split_statements(script):
                    await conn.execute(text(statement))
                await conn.execute(text("INSERT INTO schema_migrations VALUES (:v, :t)"),
                                   {"v": name, "t": int(time.time() * 1000)})
            applied.append(name)
            log.info("applied %s/%s", database, name)
    finally:
        await engine.dispose()
    return applied


async def migrate_all(urls: dict[str, str]) -> dict[str, list[str]]:
    return {database: await migrate(database, url) for database, url in urls.items()}


def main(argv: list[str] | None = None) -> int:
    """`python -m sql.migrate [crash] [crash_secret] [apisys]` (default: all three; production
    deployments that use the operator's own wallet skip apisys)."""
    import sys

    from streams.settings import get_settings

    s = get_settings()
    urls = {"crash": s.db_url, "crash_secret": s.secret_db_url, "apisys": s.wallet_db_url}
    names = (argv if argv is not None else sys.argv[1:]) or list(urls)
    unknown = [name for name in names if name not in urls]
    if unknown:
        print(f"unknown database(s): {', '.join(unknown)} (choose from {', '.join(urls)})", file=sys.stderr)
        return 2
    applied = asyncio.run(migrate_all({name: urls[name] for name in names}))
    print("migrations applied: " + ", ".join(f"{db}: {len(v)}" for db, v in applied.items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
