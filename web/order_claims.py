"""Claims of api_order_no in MariaDB, many requests per statement (a group commit).

Every bet claims its number before anything else happens to it (`Gateway.claim_order`). Here
the first claim starts a statement at once; the claims that arrive while it runs go together
in the next one: one multi-row INSERT that returns each number's owner. Nothing waits
for a timer, so a lone request costs what it did. Measured (`crash-bench --quick --only
baseline,gateway`, 500 bets/s offered, two alternating runs each way): CPU per 1,000 bets,
MariaDB 0.42-0.44 s -> 0.21-0.22 s, the gateway 0.89-1.04 s -> 0.74-0.75 s; the achieved rate
did not change (409-427/s either way: the workers and Kafka are the limit at that rate).

Who owns a number is read back from the row itself: a claim is the first iff the row holds its
own channel, mode, user and receive time. (Two requests with the same number in one batch,
received in the same millisecond from the same user on the same channel and mode, are both
"first"; the pipeline answers the second with the first's decision, as it does any repeat.)
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from web.group_commit import GroupCommit

MAX_CLAIMS = 200          # per transaction; the statements stay small and quick


@dataclass(frozen=True)
class Claim:
    group: str
    number: str
    channel_id: str
    mode: str
    user_id: str
    ts: int


@dataclass(frozen=True)
class Owner:
    channel_id: str
    mode: str
    user_id: str
    claimed_at: int

    def is_claim(self, claim: Claim) -> bool:
        return (self.channel_id, self.mode, self.user_id, self.claimed_at) == (
            claim.channel_id, claim.mode, claim.user_id, claim.ts)


class OrderClaims:
    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        self._group: GroupCommit[Claim, Owner] = GroupCommit(self._write_batch, MAX_CLAIMS)
        # One connection in autocommit, kept: a batch is one statement, so it is one round trip.
        # Checking a pooled connection out per batch cost four more (the pool's ping, COMMIT, the
        # rollback on return): 21 % of a gateway's samples were socket writes (crash-bench --profile).
        self._conn: AsyncConnection | None = None

    async def claim(self, claim: Claim) -> Owner:
        """The number's owner once this claim is committed (this claim itself, if it was first)."""
        return await self._group.submit(claim)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _write_batch(self, claims: list[Claim]) -> list[Owner | Exception]:
        try:
            return list(await self._write(claims))
        except Exception:
            await self._discard()
            if len(claims) == 1:
                raise
        results: list[Owner | Exception] = []
        for claim in claims:                  # one claim refused must not fail the others
            try:
                results.append((await self._write([claim]))[0])
            except Exception as error:        # each request answers it (a 503, or a 500 for a bug)
                await self._discard()
                results.append(error)
        return results

    async def _discard(self) -> None:
        """Drops the connection after a failure: the next batch starts on a fresh one (a
        connection the server closed, e.g. after its wait_timeout, fails one batch, whose claims
        are then written one by one, and no request)."""
        try:
            await self.close()
        except Exception:
            pass

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            conn = await self.db.connect()
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return self._conn

    async def _write(self, claims: list[Claim]) -> list[Owner]:
        """Inserts the claims (a duplicate key keeps the row there) and reads each one's owner
        back in the same statement: MariaDB's RETURNING gives the stored row of a duplicate."""
        # In key order, so that two gateways' statements lock their common rows in the same order.
        # Positional SQL straight to the driver, not SQLAlchemy's text(): that caches a compiled
        # statement with its bind parameters for every batch size seen (up to MAX_CLAIMS of them,
        # 8 binds a claim), which grew a gateway's heap to ~300,000 objects, mostly that cache,
        # and each full garbage collection then stopped its loop for 0.4-0.7 s (every few seconds
        # at 1,000-2,000 bets/s: the steps' p99).
        ordered = sorted(claims, key=lambda claim: (claim.group, claim.number))
        values = [v for c in ordered for v in (c.group, c.number, c.channel_id, c.mode, c.user_id, c.ts)]
        conn = await self._connection()
        rows = (await conn.exec_driver_sql(
            "INSERT INTO api_order (operator_group, api_order_no, channel_id, mode, user_id, claimed_at)"
            f" VALUES {', '.join(['(%s, %s, %s, %s, %s, %s)'] * len(claims))}"
            " ON DUPLICATE KEY UPDATE api_order_no = api_order_no"
            " RETURNING operator_group, api_order_no, channel_id, mode, user_id, claimed_at", tuple(values))).all()
        found = {(r.operator_group, r.api_order_no): Owner(r.channel_id, r.mode, r.user_id, int(r.claimed_at))
                 for r in rows}
        owners = []
        for claim in claims:
            owner = found.get((claim.group, claim.number))
            if owner is None:
                # The stored number differs from this one in what the column's collation ignores
                # (case, trailing spaces: not with the project's utf8mb4_bin): MariaDB matches it.
                row = (await conn.execute(text(
                    "SELECT channel_id, mode, user_id, claimed_at FROM api_order"
                    " WHERE operator_group = :g AND api_order_no = :o"),
                    {"g": claim.group, "o": claim.number})).one()
                owner = Owner(row.channel_id, row.mode, row.user_id, int(row.claimed_at))
            owners.append(owner)
        return owners
