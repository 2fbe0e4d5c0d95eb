"""The audit log's WORM copy: sealed segments put once on S3 with Object Lock in COMPLIANCE mode,
and the check of the database against them (`crash-audit export`, `crash-audit verify --s3`).

Separate from the chain (streams/audit.py): S3 and its Object Lock rules are a concern of their
own, and only `crash-audit` (streams/audit_cli.py) uses them; the processes that append do not.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime

from streams.audit import AuditLog, Segment

__all__ = ["WormStore", "export", "verify_worm"]

log = logging.getLogger("crash.audit")      # the audit log's logger, as before the split


class WormStore:
    """An S3 bucket with Object Lock; every segment is written once, locked in COMPLIANCE mode."""

    def __init__(self, settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.audit_s3_bucket
        credentials = {}
        if settings.audit_s3_access_key_id:
            credentials = {"aws_access_key_id": settings.audit_s3_access_key_id,
                           "aws_secret_access_key": settings.audit_s3_secret_access_key}
        self.client = boto3.client("s3", endpoint_url=settings.audit_s3_endpoint or None,
                                   region_name=settings.audit_s3_region,
                                   config=Config(retries={"mode": "standard", "max_attempts": 5},
                                                 connect_timeout=5, read_timeout=30), **credentials)

    def ensure_bucket(self, create: bool = False) -> None:
        """Refuse a bucket without Object Lock (a WORM export to it would be a lie); create one
        (local servers only: production buckets are provisioned with their policy)."""
        from botocore.exceptions import ClientError
        try:
            config = self.client.get_object_lock_configuration(Bucket=self.bucket)["ObjectLockConfiguration"]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if not create or code not in ("NoSuchBucket", "404"):
                raise RuntimeError(f"bucket {self.bucket}: no Object Lock configuration ({code})") from error
            self.client.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
            config = self.client.get_object_lock_configuration(Bucket=self.bucket)["ObjectLockConfiguration"]
        if config.get("ObjectLockEnabled") != "Enabled":
            raise RuntimeError(f"bucket {self.bucket} does not have Object Lock enabled")

    def put(self, key: str, body: bytes, retain_until_ms: int) -> str:
        """Write a segment once (If-None-Match: * refuses a second version under its key)."""
        from botocore.exceptions import ClientError
        until = datetime.fromtimestamp(retain_until_ms / 1000, UTC)
        try:
            answer = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson", IfNoneMatch="*",
                ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until, ChecksumAlgorithm="SHA256")
            return answer.get("VersionId") or ""
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "PreconditionFailed":
                raise
        # Already there (an export whose bookkeeping was lost): it must be the same bytes.
        existing = self.get(key)
        if existing is None or existing[0] != body:
            raise RuntimeError(f"{key} already exists on WORM storage with other content")
        return existing[1]

    def get(self, key: str, version_id: str | None = None) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError
        try:
            args = {"Bucket": self.bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
            answer = self.client.get_object(**args)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchVersion", "404"):
                return None
            raise
        return answer["Body"].read(), answer.get("VersionId") or ""

    def lock_of(self, key: str, version_id: str) -> tuple[str | None, datetime | None]:
        head = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        return head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")


async def export(log_: AuditLog, store: WormStore, settings, force: bool = False) -> list[Segment]:
    """Seal what is due and put every unexported segment on WORM storage; returns those exported."""
    await log_.seal(settings.audit_segment_rows, settings.audit_seal_after_s * 1000, settings.audit_retention_days,
                    force=force)
    done: list[Segment] = []
    for segment in await log_.segments(unexported_only=True):
        body = await log_.segment_bytes(segment)
        if hashlib.sha256(body).hexdigest() != segment.body_sha256:
            raise RuntimeError(f"segment {segment.segment_no}: rows changed since it was sealed; not exported")
        version = await asyncio.to_thread(store.put, segment.object_key, body, segment.retain_until)
        await log_.mark_exported(segment, version)
        done.append(segment)
        log.info("exported audit segment %d (rows %d..%d) to %s", segment.segment_no, segment.first_seq,
                 segment.last_seq, segment.object_key)
    return done


async def verify_worm(log_: AuditLog, store: WormStore) -> list[str]:
    """Compare the database's sealed segments with their WORM copies."""
    problems: list[str] = []
    for segment in await log_.segments():
        if segment.exported_at is None:
            continue
        stored = await asyncio.to_thread(store.get, segment.object_key, segment.version_id)
        if stored is None:
            problems.append(f"segment {segment.segment_no}: missing from the WORM bucket ({segment.object_key})")
            continue
        if stored[0] != await log_.segment_bytes(segment):
            problems.append(f"segment {segment.segment_no} (rows {segment.first_seq}..{segment.last_seq}): the"
                            " database differs from its WORM copy")
        mode, _until = await asyncio.to_thread(store.lock_of, segment.object_key, stored[1])
        if mode != "COMPLIANCE":
            problems.append(f"segment {segment.segment_no}: its WORM copy is not locked in COMPLIANCE mode")
    return problems
