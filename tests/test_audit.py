"""The audit log (streams/audit.py, audit_worm.py, audit_cli.py): hash-chained rows, `crash-audit verify`,
sealed segments on S3 Object Lock (COMPLIANCE) through the stack's local S3 server, and the writes that append.

Against the test profile's MariaDB (a database of its own per test module), its local S3 server
(streams/s3_local.py, started by `./stack`) and, for the wiring, real worker and wallet processes.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import text

from harness import Pipeline, migrated_database, wait_for
from sql.db import make_engine
from streams import audit
from streams.audit import AuditLog, record_key_set
from streams.audit_worm import WormStore, export, verify_worm
from streams.settings import Settings, get_settings

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
async def audit_db(base_settings: Settings) -> AsyncIterator[str]:
    async with migrated_database(base_settings, "crash_audit_t") as url:
        yield url


@pytest.fixture
async def log(audit_db: str) -> AsyncIterator[AuditLog]:
    """A fresh, empty chain for each test."""
    engine = make_engine(audit_db, pool_size=5)
    async with engine.begin() as conn:
        for table in ("audit_log", "audit_segment"):
            await conn.execute(text(f"DELETE FROM {table}"))
        await conn.execute(text(f"UPDATE audit_head SET last_seq = 0, last_hash = '{audit.GENESIS}'"))
    yield AuditLog(engine)
    await engine.dispose()


def s3_settings(**overrides) -> Settings:
    return dataclasses.replace(get_settings(), audit_s3_bucket=f"audit-t-{uuid.uuid4().hex[:10]}", **overrides)


async def append_some(log: AuditLog, count: int) -> None:
    for index in range(count):
        await log.append("admin", "admin", "channel.config", {"method": "POST", "path": f"/ops/channels/c{index}"
                                                                 "/config", "body": {"betting_ms": 1000 + index}},
                         target=f"c{index}")


async def sql(log: AuditLog, statement: str, **params) -> None:
    async with log.engine.begin() as conn:
        await conn.execute(text(statement), params)


def crash_audit(db_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "crash-audit"), *args], env={**os.environ, "CRASH_DB_URL": db_url},
                          capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- the chain

async def test_an_intact_chain_verifies_and_concurrent_appends_stay_in_one_line(log: AuditLog, audit_db: str
                                                                                ) -> None:
    await asyncio.gather(*(log.append(f"op-{i}", "admin", "term.abort", {"body": {"reason": "x"}}, target="c")
                           for i in range(20)))
    rows = await log.rows()
    assert [r.seq for r in rows] == list(range(1, 21))
    assert rows[0].prev_hash == audit.GENESIS
    assert all(later.prev_hash == earlier.row_hash for earlier, later in zip(rows, rows[1:], strict=False))
    assert await log.verify() == []
    result = crash_audit(audit_db, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "crash: 20 rows, 0 sealed segments: INTACT" in result.stdout


async def test_verify_reports_a_tampered_row(log: AuditLog, audit_db: str) -> None:
    await append_some(log, 5)
    await sql(log, "UPDATE audit_log SET actor = 'nobody' WHERE seq = 3")
    assert await log.verify() == ["row 3: its hash does not match its content (the row was changed)"]
    result = crash_audit(audit_db, "verify")
    assert result.returncode == 1
    assert "row 3: its hash does not match its content" in result.stdout


async def test_verify_reports_a_removed_row_in_the_middle_and_at_the_end(log: AuditLog) -> None:
    await append_some(log, 6)
    await sql(log, "DELETE FROM audit_log WHERE seq = 4")
    problems = await log.verify()
    assert "row 5 follows row 3: row(s) 4 removed" in problems
    assert any(p.startswith("row 5: its previous hash is not the hash of the row before it") for p in problems)
    await sql(log, "DELETE FROM audit_log WHERE seq = 6")
    assert any("the head names row 6, the log ends at row 5" in p for p in await log.verify())


async def test_verify_reports_reordered_rows(log: AuditLog) -> None:
    await append_some(log, 5)
    # Swap rows 2 and 3 (their numbers): each keeps its content and hashes.
    await sql(log, "UPDATE audit_log SET seq = 100 WHERE seq = 2")
    await sql(log, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
    await sql(log, "UPDATE audit_log SET seq = 3 WHERE seq = 100")
    problems = await log.verify()
    assert "row 2: its hash does not match its content (the row was changed)" in problems
    assert any(p.startswith("row 2: its previous hash is not") for p in problems)
    assert any(p.startswith("row 4: its previous hash is not") for p in problems)


async def test_key_set_changes_are_recorded_once_each(log: AuditLog) -> None:
    keys = {"operator": ("a" * 32, "game"), "admin": ("b" * 32, "admin")}
    first = await record_key_set(log, keys)
    assert first is not None and first.action == "keys.changed"
    assert await record_key_set(log, keys) is None
    rotated = await record_key_set(log, {**keys, "admin": ("c" * 32, "admin"), "reader": ("d" * 32, "reader")})
    request = json.loads(rotated.request)
    assert (request["added"], request["removed"], request["changed"]) == (["reader"], [], ["admin"])
    assert "b" * 32 not in rotated.request and "c" * 32 not in rotated.request      # no secret is written


# ---------------------------------------------------------------- the local S3 server and the export

def test_the_local_s3_server_refuses_deleting_or_overwriting_a_locked_version() -> None:
    """What COMPLIANCE mode must guarantee, checked against the stack's server (README says which
    one and why): no delete of the version, no overwrite, no shorter retention, no other mode."""
    settings = s3_settings()
    store = WormStore(settings)
    store.ensure_bucket(create=True)
    s3, bucket = store.client, settings.audit_s3_bucket
    until = datetime.now(UTC) + timedelta(days=1)
    version = store.put("audit/t/segment-1.jsonl", b"sealed rows\n", int(until.timestamp() * 1000))
    assert store.lock_of("audit/t/segment-1.jsonl", version)[0] == "COMPLIANCE"

    def refused(call, code: str) -> None:
        with pytest.raises(ClientError) as error:
            call()
        assert error.value.response["Error"]["Code"] == code

    key = {"Bucket": bucket, "Key": "audit/t/segment-1.jsonl"}
    refused(lambda: s3.delete_object(**key, VersionId=version), "AccessDenied")
    refused(lambda: s3.delete_object(**key, VersionId=version, BypassGovernanceRetention=True), "AccessDenied")
    bulk = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key["Key"], "VersionId": version}]})
    assert [e["Code"] for e in bulk.get("Errors", [])] == ["AccessDenied"]
    refused(lambda: s3.put_object(**key, Body=b"forged", IfNoneMatch="*"), "PreconditionFailed")
    refused(lambda: s3.put_object_retention(**key, VersionId=version, Retention={
        "Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(seconds=5)}), "AccessDenied")
    refused(lambda: s3.put_object_retention(**key, VersionId=version, Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": until + timedelta(days=1)}), "AccessDenied")
    refused(lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"}),
            "InvalidBucketState")
    # A plain PUT only adds a version on top; the locked one keeps its bytes.
    s3.put_object(**key, Body=b"forged", ChecksumAlgorithm="SHA256")
    s3.delete_object(**key)                                   # a delete marker, nothing destroyed
    assert store.get(key["Key"], version) == (b"sealed rows\n", version)
    # Extending a COMPLIANCE retention is allowed (as on S3).
    s3.put_object_retention(**key, VersionId=version, Retention={"Mode": "COMPLIANCE",
                                                                 "RetainUntilDate": until + timedelta(days=2)})


async def test_export_locks_sealed_segments_and_verify_catches_a_rewritten_chain(log: AuditLog) -> None:
    settings = s3_settings(audit_segment_rows=4, audit_retention_days=1827)
    store = WormStore(settings)
    await asyncio.to_thread(store.ensure_bucket, True)
    await append_some(log, 10)
    assert len(await export(log, store, settings)) == 2                # two full segments of 4 rows
    segments = await log.segments()
    assert [(s.first_seq, s.last_seq) for s in segments] == [(1, 4), (5, 8)]
    assert all(s.exported_at and s.version_id for s in segments)
    await export(log, store, settings, force=True)                     # the 2 open rows, sealed now
    segments = await log.segments()
    assert [(s.first_seq, s.last_seq) for s in segments][-1] == (9, 10)
    mode, until = store.lock_of(segments[0].object_key, segments[0].version_id)
    assert mode == "COMPLIANCE"
    assert until >= datetime.now(UTC) + timedelta(days=1826)          # 5 years
    assert await log.verify() == [] and await verify_worm(log, store) == []

    # An attacker with database access rewrites row 2 and recomputes every hash after it, the
    # head and the sealed segments' digests: the database alone looks whole again...
    rows = await log.rows()
    previous = audit.GENESIS
    for row in rows:
        actor = "someone-else" if row.seq == 2 else row.actor
        digest = audit.row_hash(row.seq, row.ts, actor, row.key_id, row.action, row.target, row.request, previous)
        await sql(log, "UPDATE audit_log SET actor = :a, prev_hash = :p, row_hash = :h WHERE seq = :s",
                  a=actor, p=previous, h=digest, s=row.seq)
        previous = digest
    await sql(log, "UPDATE audit_head SET last_hash = :h", h=previous)
    for segment in await log.segments():
        body = await log.segment_bytes(segment)
        await sql(log, "UPDATE audit_segment SET body_sha256 = :d WHERE segment_no = :n",
                  d=hashlib.sha256(body).hexdigest(), n=segment.segment_no)
    assert await log.verify() == []
    # ...but not against its WORM copies, which nobody could change.
    # (every row after the changed one has another hash now, so every segment differs)
    assert await verify_worm(log, store) == [
        f"segment {n} (rows {a}..{b}): the database differs from its WORM copy"
        for n, a, b in ((1, 1, 4), (2, 5, 8), (3, 9, 10))]


# ---------------------------------------------------------------- the writes that append

async def test_operator_writes_and_the_wallets_admin_writes_are_audited(pipeline_factory) -> None:
    pipe: Pipeline = await pipeline_factory("audit")
    await pipe.start_wallet()
    channel_id = await pipe.create_channel("a")
    status, _ = await pipe.ops("POST", f"/ops/channels/{channel_id}/config", {"betting_ms": 1500})
    assert status == 202
    assert (await pipe.ops("POST", f"/ops/channels/{channel_id}/start"))[0] == 202
    assert (await pipe.ops("POST", f"/ops/channels/{channel_id}/abort", {"reason": "audit test"}))[0] == 202
    assert (await pipe.ops("POST", "/ops/payouts/cashout:none/retry"))[0] == 409
    rows = await pipe.rows("SELECT seq, actor, key_id, action, target, request FROM audit_log ORDER BY seq")
    assert [(r["action"], r["target"]) for r in rows] == [
        ("channel.create", channel_id), ("channel.config", channel_id), ("term.start", channel_id),
        ("term.abort", channel_id), ("payout.retry", "cashout:none")]
    assert {(r["actor"], r["key_id"]) for r in rows} == {("admin", "admin")}
    abort = json.loads(rows[3]["request"])
    assert abort["path"] == f"/ops/channels/{channel_id}/abort" and abort["body"] == {"reason": "audit test"}
    assert len(abort["nonce"]) == 32 and len(abort["body_sha256"]) == 64
    assert await AuditLog(pipe.db).verify() == []

    wallet = pipe.wallet("admin")
    user = f"u-{uuid.uuid4().hex[:10]}"
    await wallet.set_balance(user, "EUR", 250)
    await wallet.set_faults(latency_ms=0)
    await wallet.close()
    engine = make_engine(get_settings().wallet_db_url, pool_size=1)

    async def audited() -> list[dict]:
        async with engine.connect() as conn:
            result = await conn.execute(text(
                "SELECT action, target, request FROM audit_log WHERE action LIKE 'wallet.%' ORDER BY seq DESC"
                " LIMIT 50"))
            return [dict(r._mapping) for r in result if user in r.request or '"latency_ms":0' in r.request]
    found = await wait_for(audited, 10, "the wallet's audit rows")
    assert {r["action"] for r in found} >= {"wallet.set_balance", "wallet.faults"}
    assert any(r["target"] == f"{user}/EUR" for r in found)
    await engine.dispose()
