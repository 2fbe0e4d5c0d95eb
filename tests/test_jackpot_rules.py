"""The pure jackpot rules (streams/jackpots.py) worked out by hand, the commitment against an
independent hashlib computation, and the jackpot API's OpenAPI document against its routes.
No services needed."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from streams import jackpots
from streams.jackpots import MICRO, PoolMoney

REPO = Path(__file__).resolve().parents[1]

BASE = {"jackpot_id": "jp-1", "tier": "mega", "currency": "EUR", "seed": 1_000, "cap": 5_000,
        "trigger": "must_hit_by"}


def test_a_share_of_a_stake_is_exact_in_micro_units():
    # 0.33 % of 7 cents is 0.0231 cents: 23,100 micro units, nothing rounded away.
    assert jackpots.contribution_micro(7, 33) == 23_100
    assert jackpots.contribution_micro(1, 1) == 100
    assert sum(jackpots.contribution_micro(s, 7) for s in (1, 2, 3)) == 4_200
    assert jackpots.whole(999_999) == 0 and jackpots.whole(1_000_000) == 1


def test_must_hit_by_award_is_the_hit_value_and_the_rest_overflows():
    money = PoolMoney(value_micro=1_190 * MICRO + 500)
    assert not jackpots.reached(money, 1_200)
    money.add(25 * MICRO, cap=5_000)                          # the crossing contribution
    assert jackpots.reached(money, 1_200)
    award, overflow = jackpots.lock_in(money, "must_hit_by", 1_200)
    assert (award, overflow) == (1_200, 15 * MICRO + 500)
    nxt = jackpots.start_of_cycle(1_000, overflow, 0, cap=5_000)
    assert nxt.value_micro == 1_015 * MICRO + 500 and nxt.reserve_micro == 0


def test_external_award_is_the_whole_value_and_the_cap_keeps_a_reserve():
    money = PoolMoney(value_micro=4_990 * MICRO)
    money.add(20 * MICRO + 7, cap=5_000)
    assert money.value_micro == 5_000 * MICRO and money.reserve_micro == 10 * MICRO + 7
    award, overflow = jackpots.lock_in(money, "external", None)
    assert (award, overflow) == (5_000, 0)
    # The next cycle: seed + overflow + reserve, the reserve used up.
    nxt = jackpots.start_of_cycle(1_000, overflow, money.reserve_micro, cap=5_000)
    assert nxt.total_micro == 1_010 * MICRO + 7 and nxt.reserve_micro == 0


def test_near_cap_is_a_share_of_the_cap():
    assert not jackpots.near_cap(PoolMoney(3_999 * MICRO + 999_999), 5_000, 8_000)
    assert jackpots.near_cap(PoolMoney(4_000 * MICRO), 5_000, 8_000)


def test_commitment_is_sha256_of_value_colon_nonce():
    nonce = "00ff" * 8
    assert jackpots.commitment(1234, nonce) == hashlib.sha256(f"1234:{nonce}".encode()).hexdigest()
    good = jackpots.commitment(1234, nonce)
    assert jackpots.verify_hit(good, 1234, nonce, 1_000, 5_000, 1234) == []
    assert "not the published commitment" in jackpots.verify_hit(good, 1235, nonce, 1_000, 5_000, 1235)[0]
    assert any("outside" in p for p in jackpots.verify_hit(jackpots.commitment(999, nonce), 999, nonce,
                                                           1_000, 5_000, 999))
    assert any("not the hit value" in p for p in jackpots.verify_hit(good, 1234, nonce, 1_000, 5_000, 1233))


def test_drawn_hit_values_are_uniform_in_the_range():
    draws = [jackpots.draw_hit_value(10, 13) for _ in range(4_000)]
    values = [v for v, _ in draws]
    assert set(values) == {10, 11, 12, 13}
    assert all(600 < values.count(v) < 1_400 for v in range(10, 14))
    assert len({n for _, n in draws}) == len(draws) and all(len(n) == 32 for _, n in draws)


def test_term_jackpot_split_by_hand():
    podium = [{"user_id": u} for u in ("a", "b", "c")]
    trigger = {"user_id": "t"}
    # 10,001 by 50/30/20: 5000.5, 3000.3, 2000.2 rounded down; the remaining 1 to rank 1.
    assert [(r, w["user_id"], s) for r, w, s in jackpots.split_award(10_001, [5000, 3000, 2000], podium, trigger)] \
        == [(1, "a", 5_001), (2, "b", 3_000), (3, "c", 2_000)]
    # Two cashouts for three ranks: rank 3's share goes to rank 1.
    assert [(r, w["user_id"], s) for r, w, s in jackpots.split_award(1_000, [5000, 3000, 2000], podium[:2],
                                                                     trigger)] == [(1, "a", 700), (2, "b", 300)]
    # Nobody cashed out: the triggering bet takes all.
    assert [(r, w["user_id"], s) for r, w, s in jackpots.split_award(1_000, [5000, 3000, 2000], [], trigger)] \
        == [(1, "t", 1_000)]


def test_reconciliation_arithmetic():
    expected = jackpots.expected_pool_micro(seeds=3_000, contributions_micro=1_234_567, awards=1_500,
                                            compensations=200)
    assert expected == (3_000 - 1_500 + 200) * MICRO + 1_234_567
    assert jackpots.difference_bps(0, expected) == 0
    assert jackpots.difference_bps(1, 10_000) == 1          # rounded up: never hides a difference
    assert jackpots.difference_bps(-11, 10_000) == 11


@pytest.mark.parametrize("changes, reason", [
    ({"tier": "galactic"}, "tier"),
    ({"trigger": "sometimes"}, "trigger"),
    ({"currency": "eur"}, "currency"),
    ({"seed": 5_000}, "cap must be above seed"),
    ({"rate_bps": 0}, "rate_bps"),
    ({"rate_bps": 1.5}, "rate_bps"),
    ({"tier": "local"}, "channel_id"),
    ({"tier": "shared", "operator_group": "g", "channel_id": "c"}, "channel_id is only"),
    ({"rank_split_bps": [6000, 3000]}, "term jackpots"),
    ({"tier": "local", "channel_id": "c", "rank_split_bps": [6000, 3000]}, "summing to 10000"),
    ({"jackpot_id": "bad id"}, "jackpot_id"),
    ({"surprise": 1}, "unknown"),
])
def test_bad_definitions_are_refused_with_a_reason(changes, reason):
    with pytest.raises(jackpots.DefinitionError, match=reason):
        jackpots.validate({**BASE, **changes})


def test_a_change_keeps_what_is_fixed():
    definition = jackpots.validate(BASE)
    assert jackpots.validate({"seed": 2_000}, definition)["seed"] == 2_000
    with pytest.raises(jackpots.DefinitionError, match="cannot change"):
        jackpots.validate({"currency": "USD"}, definition)


def test_feeding_follows_the_tier():
    local = jackpots.validate({**BASE, "tier": "local", "channel_id": "ch-1"})
    shared = jackpots.validate({**BASE, "tier": "shared", "operator_group": "g1"})
    mega = jackpots.validate(BASE)
    assert jackpots.feeds(local, "ch-1", "any") and not jackpots.feeds(local, "ch-2", "any")
    assert jackpots.feeds(shared, "x", "g1") and not jackpots.feeds(shared, "x", "g2")
    assert jackpots.feeds(mega, "x", "y")


async def test_openapi_document_matches_the_jackpot_routes():
    from streams.settings import Settings
    from web.gateway import KEY_GATEWAY, make_app
    spec_text = (REPO / "web" / "jackpot.openapi.yaml").read_text()
    spec = yaml.safe_load(spec_text)
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    app = make_app(Settings())
    try:
        served = {(r.method, r.resource.canonical) for r in app.router.routes()
                  if r.resource.canonical.startswith("/jackpot") and r.method != "HEAD"}
    finally:
        gateway = app[KEY_GATEWAY]
        await gateway.db.dispose()
        await gateway.redis.aclose()
    assert documented == served
    assert all(re.fullmatch(r"/jackpot[/{}\w]*", path) for _, path in documented)
