"""Group-committed api_order claims (web/order_claims.py) on the real MariaDB: concurrent
requests in one transaction get the owner a request at a time would have got."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from harness import migrated_database
from sql.db import make_engine
from streams.settings import Settings
from web.order_claims import Claim, OrderClaims


@pytest.fixture(scope="module")
async def claims_db(base_settings: Settings) -> AsyncIterator[str]:
    async with migrated_database(base_settings, "crash_claims_t") as url:
        yield url


@pytest.fixture
async def engine(claims_db: str):
    engine = make_engine(claims_db, pool_size=4)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM api_order"))
    yield engine
    await engine.dispose()


@pytest.fixture
async def new_claims(engine):
    """A maker of claimers (one per gateway process), each closed at the end."""
    made: list[OrderClaims] = []

    def make() -> OrderClaims:
        made.append(OrderClaims(engine))
        return made[-1]
    yield make
    for claims in made:
        await claims.close()


def claim(number: str, channel: str = "ch-1", mode: str = "transfer", user: str = "u1", ts: int = 1000,
          group: str = "op") -> Claim:
    return Claim(group, number, channel, mode, user, ts)


async def test_concurrent_claims_each_get_their_owner_in_few_statements(engine, new_claims):
    claims = new_claims()
    firsts = [claim(f"o{i}", ts=1000 + i) for i in range(300)]
    # The same numbers again, as repeats on the same channel, on another channel, in the other mode.
    repeats = [claim("o1", ts=5000), claim("o2", channel="ch-2", ts=5001), claim("o3", mode="seamless", ts=5002)]
    other_group = claim("o1", group="op-2", channel="ch-9", ts=6000)   # numbers are unique per group only
    owners = await asyncio.gather(*(claims.claim(c) for c in [*firsts, *repeats, other_group]))

    assert all(owner.is_claim(c) for owner, c in zip(owners[:300], firsts, strict=True))
    repeat_owners = owners[300:303]
    assert [o.is_claim(c) for o, c in zip(repeat_owners, repeats, strict=True)] == [False, False, False]
    assert [(o.channel_id, o.mode, o.claimed_at) for o in repeat_owners] == [
        ("ch-1", "transfer", 1001), ("ch-1", "transfer", 1002), ("ch-1", "transfer", 1003)]
    assert owners[303].is_claim(other_group)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT COUNT(*) FROM api_order"))).scalar_one()
    assert rows == 301


async def test_two_gateways_racing_for_the_same_numbers_agree_on_one_owner(engine, new_claims):
    # Two gateway processes (two claimers, two connection pools' worth of transactions) claim the
    # same 100 numbers for different channels at once, in opposite orders.
    one, two = new_claims(), new_claims()
    numbers = [f"race-{i}" for i in range(100)]
    first = [one.claim(claim(n, channel="ch-a", ts=1)) for n in numbers]
    second = [two.claim(claim(n, channel="ch-b", ts=2)) for n in reversed(numbers)]
    owners = await asyncio.gather(*first, *second)
    by_number: dict[str, set[str]] = {}
    for number, owner in zip([*numbers, *reversed(numbers)], owners, strict=True):
        by_number.setdefault(number, set()).add(owner.channel_id)
    assert all(len(channels) == 1 for channels in by_number.values()), "both sides must see the same owner"
    async with engine.connect() as conn:
        stored = dict((await conn.execute(text(
            "SELECT api_order_no, channel_id FROM api_order WHERE api_order_no LIKE 'race-%'"))).all())
    assert {n: next(iter(c)) for n, c in by_number.items()} == stored


async def test_claims_go_on_when_the_database_drops_the_connection(engine, new_claims):
    # MariaDB closes an idle connection after its wait_timeout, and a restart closes them all:
    # the batch on the dead connection is written again on a fresh one, and no request fails.
    claims = new_claims()
    assert (await claims.claim(claim("before"))).is_claim(claim("before"))
    async with engine.connect() as conn:
        killed = (await conn.execute(text(
            "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            " AND command = 'Sleep'"))).scalars().all()
        for connection_id in killed:
            await conn.execute(text(f"KILL CONNECTION {int(connection_id)}"))
    assert killed, "the claims' connection stays open between batches"
    after = [claim(f"after-{i}", ts=2000 + i) for i in range(5)]
    owners = await asyncio.gather(*(claims.claim(c) for c in after))
    assert all(owner.is_claim(c) for owner, c in zip(owners, after, strict=True))


async def test_a_claim_the_database_refuses_fails_alone(engine, new_claims):
    claims = new_claims()
    too_long = claim("x" * 65)                     # api_order_no is VARCHAR(64): strict mode refuses it
    together = [claim("fine-0"), too_long, claim("fine-1")]
    results = await asyncio.gather(*(claims.claim(c) for c in together), return_exceptions=True)
    assert isinstance(results[1], Exception)
    assert results[0].is_claim(together[0]) and results[2].is_claim(together[2])
    async with engine.connect() as conn:
        numbers = (await conn.execute(text("SELECT api_order_no FROM api_order ORDER BY api_order_no"))).scalars()
        assert list(numbers) == ["fine-0", "fine-1"]
