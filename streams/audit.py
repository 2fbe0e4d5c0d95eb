"""The audit log (DESIGN section 11): every write, hash-chained, sealed and kept on WORM storage.

Every write that changes the game or money outside a player's own bets (channel config, manual
start, abort, payout retry, jackpot award and rollback, key changes, the reference wallet's admin
switches) appends one row, *before* the write is carried out (no write goes unaudited; an
audit log that cannot be written refuses the write):

    seq  ts  actor  key_id  action  target  request  prev_hash  row_hash
    row_hash = SHA-256 of the JSON array [seq, ts, actor, key_id, action, target, request, prev_hash]

Rows are never updated or deleted (corrections are new rows, as in a ledger). `seq` runs
1, 2, 3... without gaps and each row names the previous row's hash, so `crash-audit verify`
reports a changed row (its hash no longer matches), a removed one (a gap, or a broken link) and a
reordering (links and hashes both break). An attacker who rewrites the whole chain consistently is
caught by the WORM copy: rows are sealed into segments (`audit_segment`) that `crash-audit export`
puts on S3 Object Lock in COMPLIANCE mode (retention CRASH_AUDIT_RETENTION_DAYS, default 5 years),
where nobody, root included, can change or delete them before the date; `verify --s3` compares
the database with them.

The API other code calls::

    from streams import audit
    await audit.append(actor, key_id, action, audit.request_summary(request, body), target=...)

`AuditLog(engine)` is the same on another database (the reference wallet keeps its own chain in
its own database). The WORM copy (S3 Object Lock) is `streams/audit_worm.py`; the `crash-audit`
command, `streams/audit_cli.py`.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

__all__ = ["AuditLog", "AuditRow", "Segment", "append", "chain_breaks", "request_summary", "row_hash", "GENESIS"]

GENESIS = "0" * 64
MAX_FIELD = {"actor": 128, "key_id": 64, "action": 64, "target": 255}
# Deadlock / lock wait timeout: the transaction was rolled back whole and may run again.
_RETRYABLE = frozenset({1205, 1213})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(seq: int, ts: int, actor: str, key_id: str, action: str, target: str, request: str,
             prev_hash: str) -> str:
    return hashlib.sha256(_canonical([seq, ts, actor, key_id, action, target, request, prev_hash]).encode()
                          ).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: int
    actor: str
    key_id: str
    action: str
    target: str
    request: str            # canonical JSON text of the request summary, hashed as stored
    prev_hash: str
    row_hash: str

    def expected_hash(self) -> str:
        return row_hash(self.seq, self.ts, self.actor, self.key_id, self.action, self.target, self.request,
                        self.prev_hash)


@dataclass(frozen=True)
class Segment:
    segment_no: int
    first_seq: int
    last_seq: int
    last_hash: str
    body_sha256: str
    sealed_at: int
    retain_until: int
    object_key: str
    version_id: str | None = None
    exported_at: int | None = None


def request_summary(request: Any = None, body: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What identifies a request in the audit log: method, path, the signature's timestamp,
    nonce and body digest (they tie the row to the exact signed request), the trace id and the
    body's fields (long values cut, secrets never: bodies of audited writes carry none)."""
    summary: dict[str, Any] = {}
    if request is not None:
        headers = getattr(request, "headers", {}) or {}
        summary.update(method=getattr(request, "method", ""), path=getattr(request, "path_qs", ""),
                       signed_at=headers.get("X-Timestamp"), nonce=headers.get("X-Nonce"),
                       body_sha256=headers.get("X-Content-SHA256"), trace_id=headers.get("X-Trace-Id"))
    if body is not None:
        summary["body"] = {k: (v[:200] if isinstance(v, str) else v) for k, v in body.items()
                           if not str(k).startswith("_")}
    summary.update(extra)
    return {k: v for k, v in summary.items() if v is not None}


def _retryable(error: BaseException) -> bool:
    args = getattr(getattr(error, "orig", None), "args", ())
    return isinstance(error, DBAPIError) and bool(args) and args[0] in _RETRYABLE


class AuditLog:
    """The hash-chained log in one database (tables of migration crash/006, apisys/002)."""

    def __init__(self, engine: AsyncEngine, chain: str = "crash") -> None:
        self.engine = engine
        self.chain = chain      # names the chain in its WORM objects' keys

    # ---------------------------------------------------------------- writing

    async def append(self, actor: str, key_id: str, action: str, request_summary: Mapping[str, Any],
                     target: str = "") -> AuditRow:
        """Append one row (after the previous one, whoever wrote it) and return it."""
        for name, value in (("actor", actor), ("key_id", key_id), ("action", action), ("target", target)):
            if not isinstance(value, str) or len(value) > MAX_FIELD[name]:
                raise ValueError(f"audit {name} must be a string of at most {MAX_FIELD[name]} characters")
        request = _canonical(dict(request_summary))
        async for attempt in AsyncRetrying(retry=retry_if_exception(_retryable), stop=stop_after_attempt(5),
                                           wait=wait_random_exponential(multiplier=0.01, max=0.2), reraise=True):
            with attempt:
                return await self._append_once(actor, key_id, action, target, request)
        raise AssertionError("unreachable")

    async def _append_once(self, actor: str, key_id: str, action: str, target: str, request: str) -> AuditRow:
        async with self.engine.begin() as conn:
            # The head row serialises appenders: each sees the previous row committed.
            head = (await conn.execute(text(
                "SELECT last_seq, last_hash FROM audit_head WHERE id = 1 FOR UPDATE"))).one()
            seq, ts = head.last_seq + 1, _now_ms()
            digest = row_hash(seq, ts, actor, key_id, action, target, request, head.last_hash)
            await conn.execute(text(
                "INSERT INTO audit_log (seq, ts, actor, key_id, action, target, request, prev_hash, row_hash)"
                " VALUES (:seq, :ts, :actor, :key_id, :action, :target, :request, :prev, :hash)"),
                {"seq": seq, "ts": ts, "actor": actor, "key_id": key_id, "action": action, "target": target,
                 "request": request, "prev": head.last_hash, "hash": digest})
            await conn.execute(text("UPDATE audit_head SET last_seq = :seq, last_hash = :hash WHERE id = 1"),
                               {"seq": seq, "hash": digest})
        return AuditRow(seq, ts, actor, key_id, action, target, request, head.last_hash, digest)

    # ---------------------------------------------------------------- reading and verifying

    async def rows(self, first_seq: int = 1, last_seq: int | None = None) -> list[AuditRow]:
        async with self.engine.connect() as conn:
            result = await conn.execute(text(
                "SELECT seq, ts, actor, key_id, action, target, request, prev_hash, row_hash FROM audit_log"
                " WHERE seq >= :a AND (:b IS NULL OR seq <= :b) ORDER BY seq"), {"a": first_seq, "b": last_seq})
            return [AuditRow(**row._mapping) for row in result]

    async def verify(self) -> list[str]:
        """Every break in the chain, in words (empty: the chain is whole)."""
        rows = await self.rows()
        async with self.engine.connect() as conn:
            head = (await conn.execute(text("SELECT last_seq, last_hash FROM audit_head WHERE id = 1"))).one()
        breaks = chain_breaks(rows, head=(head.last_seq, head.last_hash))
        problems = [problem for found in breaks.values() for problem in found]
        for segment in await self.segments():
            body = segment_body(self.chain, segment.segment_no,
                                [r for r in rows if segment.first_seq <= r.seq <= segment.last_seq])
            if hashlib.sha256(body).hexdigest() != segment.body_sha256:
                problems.append(f"segment {segment.segment_no} (rows {segment.first_seq}..{segment.last_seq}):"
                                " the rows differ from the ones sealed")
        return problems

    # ---------------------------------------------------------------- sealing and export

    async def segments(self, unexported_only: bool = False) -> list[Segment]:
        async with self.engine.connect() as conn:
            result = await conn.execute(text(
                "SELECT * FROM audit_segment" + (" WHERE exported_at IS NULL" if unexported_only else "")
                + " ORDER BY segment_no"))
            return [Segment(**row._mapping) for row in result]

    async def seal(self, max_rows: int, seal_after_ms: int, retention_days: int, force: bool = False
                   ) -> list[Segment]:
        """Seal the rows not yet in a segment: full segments of `max_rows`, and the rest if its
        oldest row is older than `seal_after_ms` (or `force`)."""
        sealed: list[Segment] = []
        async with self.engine.begin() as conn:
            await conn.execute(text("SELECT last_seq FROM audit_head WHERE id = 1 FOR UPDATE"))  # one sealer
            while True:
                segment = await self._seal_one(conn, max_rows, seal_after_ms, retention_days, force)
                if segment is None:
                    break
                sealed.append(segment)
        return sealed

    async def _seal_one(self, conn: AsyncConnection, max_rows: int, seal_after_ms: int, retention_days: int,
                        force: bool) -> Segment | None:
        last = (await conn.execute(text(
            "SELECT COALESCE(MAX(segment_no), 0) AS n, COALESCE(MAX(last_seq), 0) AS s FROM audit_segment"))).one()
        result = await conn.execute(text(
            "SELECT seq, ts, actor, key_id, action, target, request, prev_hash, row_hash FROM audit_log"
            " WHERE seq > :s ORDER BY seq LIMIT :n"), {"s": last.s, "n": max_rows})
        rows = [AuditRow(**row._mapping) for row in result]
        now = _now_ms()
        if not rows or (len(rows) < max_rows and not force and now - rows[0].ts < seal_after_ms):
            return None
        number = last.n + 1
        body = segment_body(self.chain, number, rows)
        retain_until = int((datetime.fromtimestamp(now / 1000, UTC) + timedelta(days=retention_days)).timestamp()
                           * 1000)
        segment = Segment(number, rows[0].seq, rows[-1].seq, rows[-1].row_hash, hashlib.sha256(body).hexdigest(),
                          now, retain_until, f"audit/{self.chain}/segment-{number:012d}.jsonl")
        await conn.execute(text(
            "INSERT INTO audit_segment (segment_no, first_seq, last_seq, last_hash, body_sha256, sealed_at,"
            " retain_until, object_key) VALUES (:segment_no, :first_seq, :last_seq, :last_hash, :body_sha256,"
            " :sealed_at, :retain_until, :object_key)"), {k: v for k, v in asdict(segment).items()
                                                            if k not in ("version_id", "exported_at")})
        return segment

    async def mark_exported(self, segment: Segment, version_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text(
                "UPDATE audit_segment SET version_id = :v, exported_at = :t WHERE segment_no = :n"),
                {"v": version_id, "t": _now_ms(), "n": segment.segment_no})

    async def segment_bytes(self, segment: Segment) -> bytes:
        return segment_body(self.chain, segment.segment_no, await self.rows(segment.first_seq, segment.last_seq))


def chain_breaks(rows: list[AuditRow], previous: AuditRow | None = None,
                 head: tuple[int, str] | None = None) -> dict[int, list[str]]:
    """The breaks in a window of consecutive audit rows (oldest first), by row, in words: each
    row's hash over its content, its link to the row before it (`previous`, the row just before
    the window; without one the window must start the log, at row 1 after the genesis hash), no
    gap; and, given the head (a window that reaches the end of the log), that the head names the
    last row (its problems under 0). `AuditLog.verify` walks the whole log with it (and checks the
    sealed segments); the operator view walks the window a page shows."""
    found: dict[int, list[str]] = {}
    expected_seq, link = (previous.seq + 1, previous.row_hash) if previous else (1, GENESIS)
    for row in rows:
        problems = found.setdefault(row.seq, [])
        if row.seq != expected_seq:
            gap = f"{expected_seq}" if row.seq == expected_seq + 1 else f"{expected_seq}..{row.seq - 1}"
            problems.append(f"row {row.seq} follows row {expected_seq - 1}: row(s) {gap} removed")
        if row.prev_hash != link:
            problems.append(f"row {row.seq}: its previous hash is not the hash of the row before it"
                            " (a row was removed, inserted or reordered)")
        if row.expected_hash() != row.row_hash:
            problems.append(f"row {row.seq}: its hash does not match its content (the row was changed)")
        expected_seq, link = row.seq + 1, row.row_hash
    if head is not None and (head[0] != expected_seq - 1 or head[1] != link):
        found.setdefault(0, []).append(f"the head names row {head[0]}, the log ends at row {expected_seq - 1}:"
                                       " rows at the end were removed or added around the log")
    return {seq: problems for seq, problems in found.items() if problems}


def segment_body(chain: str, number: int, rows: list[AuditRow]) -> bytes:
    """A sealed segment as stored on WORM storage: a header line, then one JSON line per row."""
    header = {"chain": chain, "segment": number, "first_seq": rows[0].seq if rows else None,
              "last_seq": rows[-1].seq if rows else None, "prev_hash": rows[0].prev_hash if rows else None,
              "last_hash": rows[-1].row_hash if rows else None, "rows": len(rows)}
    lines = [_canonical(header)] + [_canonical(asdict(row)) for row in rows]
    return ("\n".join(lines) + "\n").encode()


# -------------------------------------------------------------------- key changes

def key_fingerprints(api_keys: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """{key_id: role + SHA-256 of the secret}: enough to see a change, nothing to sign with."""
    return {key_id: f"{role}:{hashlib.sha256(secret.encode()).hexdigest()[:16]}"
            for key_id, (secret, role) in sorted(api_keys.items())}


async def record_key_set(log_: AuditLog, api_keys: Mapping[str, tuple[str, str]], actor: str = "deployment"
                         ) -> AuditRow | None:
    """Append `keys.changed` when the deployed key set differs from the last one recorded."""
    current = key_fingerprints(api_keys)
    async with log_.engine.connect() as conn:
        last = (await conn.execute(text(
            "SELECT request FROM audit_log WHERE action = 'keys.changed' ORDER BY seq DESC LIMIT 1"))).first()
    previous = json.loads(last.request).get("keys", {}) if last else {}
    if previous == current:
        return None
    changes = {"added": sorted(set(current) - set(previous)), "removed": sorted(set(previous) - set(current)),
               "changed": sorted(k for k in set(current) & set(previous) if current[k] != previous[k])}
    return await log_.append(actor, "", "keys.changed", {"keys": current, **changes}, target="api_keys")


# -------------------------------------------------------------------- the default log

_default: AuditLog | None = None


def default_log() -> AuditLog:
    """The audit log in this process's crash database (CRASH_DB_URL)."""
    global _default
    if _default is None:
        from sql.db import make_engine
        from streams.settings import get_settings
        _default = AuditLog(make_engine(get_settings().db_url, pool_size=2))
    return _default


async def append(actor: str, key_id: str, action: str, request_summary: Mapping[str, Any],
                 target: str = "") -> AuditRow:
    """Append to this process's audit log (see the module docstring); raises if it cannot."""
    return await default_log().append(actor, key_id, action, request_summary, target=target)
