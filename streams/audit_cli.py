"""`crash-audit verify [--s3] [--db crash,apisys]` | `crash-audit export [--every S] [--force]`:
the audit log's command (the chain is streams/audit.py, its WORM copy streams/audit_worm.py).

Separate from both: it only wires them to the settings and to the two databases (crash, apisys).
"""
from __future__ import annotations

import argparse
import asyncio
import logging

from streams.audit import AuditLog, record_key_set
from streams.audit_worm import WormStore, export, verify_worm

__all__ = ["main"]

log = logging.getLogger("crash.audit")      # the audit log's logger, as before the split


def _log_for(settings, database: str) -> AuditLog:
    from sql.db import make_engine
    url = {"crash": settings.db_url, "apisys": settings.wallet_db_url}[database]
    return AuditLog(make_engine(url, pool_size=2), chain=database)


async def _run(args: argparse.Namespace) -> int:
    from streams.settings import get_settings
    settings = get_settings()
    logs = [_log_for(settings, database) for database in args.db.split(",")]
    code = 0
    try:
        if args.command == "verify":
            store = WormStore(settings) if args.s3 else None
            for log_ in logs:
                problems = await log_.verify()
                if store is not None:
                    problems += await verify_worm(log_, store)
                for problem in problems:
                    print(f"{log_.chain}: {problem}")
                print(f"{log_.chain}: {len(await log_.rows())} rows, {len(await log_.segments())} sealed segments: "
                      + ("INTACT" if not problems else f"{len(problems)} PROBLEM(S)"))
                code = code or (1 if problems else 0)
        else:
            store = WormStore(settings)
            await asyncio.to_thread(store.ensure_bucket, args.create_bucket)
            while True:
                for log_ in logs:
                    try:
                        if log_.chain == "crash":
                            await record_key_set(log_, settings.api_keys)
                        done = await export(log_, store, settings, force=args.force)
                        print(f"{log_.chain}: exported {len(done)} segment(s)", flush=True)
                    except Exception as error:
                        if not args.every:
                            raise
                        log.error("%s: export failed, next try in %s s: %s", log_.chain, args.every, error)
                if not args.every:
                    break
                await asyncio.sleep(args.every)
    finally:
        for log_ in logs:
            await log_.engine.dispose()
    return code


def main(argv: list[str] | None = None) -> int:
    """`crash-audit verify [--s3] [--db crash,apisys]` | `crash-audit export [--every S] [--force]`."""
    parser = argparse.ArgumentParser(prog="crash-audit", description="The hash-chained audit log")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="report tampered, removed or reordered rows (exit 1 if any)")
    verify.add_argument("--s3", action="store_true", help="also compare sealed segments with their WORM copies")
    export_ = sub.add_parser("export", help="seal due segments and put them on S3 Object Lock (COMPLIANCE)")
    export_.add_argument("--every", type=float, default=0, help="repeat every N seconds (default: once)")
    export_.add_argument("--force", action="store_true", help="seal the open rows now, however few")
    export_.add_argument("--create-bucket", action="store_true", help="create the bucket (local servers)")
    for p in (verify, export_):
        p.add_argument("--db", default="crash", help="crash, apisys (the reference wallet), or both")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_run(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
