"""The provably fair crash points (DESIGN section 6) and the verifier (streams/verify.py).

1. streams.fairness agrees with vectors computed independently in Node.js
   (tests/vectors/gen_fairness_vectors.js -> fairness_vectors.json) and with plain float math.
2. The crash-point distribution: P(crash >= x) = 0.99 / x for a 1 % edge.
3. The crash-point function uses integer arithmetic only and is exact at the extremes.
4. Chain properties: every h_k links to the terminator; SHA-256(h_k) = h_{k-1}.
5. The verifier against the test MariaDB: a clean channel verifies, tampered rows are named.
"""
from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import json
import math
import random
import shutil
import subprocess
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sql.db import make_engine
from streams import fairness
from streams.settings import get_settings
from streams.verify import check_term, main, verify_channel

VECTORS_DIR = Path(__file__).parent / "vectors"
TWO_52 = 2**52
NO_CAP = 1 << 62            # Bustabit's formula has no maximum multiple


def sha256(data: bytes) -> bytes:
    # The tests' own SHA-256 (hashlib directly), not streams.fairness.sha256.
    return hashlib.sha256(data).digest()


def digest_with_r(r: int) -> bytes:
    """A 64-byte digest whose first 52 bits are r (the rest zero)."""
    return (r << (512 - 52)).to_bytes(64, "big")


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    return json.loads((VECTORS_DIR / "fairness_vectors.json").read_text())


# ---------------------------------------------------------------- 1. independent vectors

def test_vectors_file_is_the_generator_output() -> None:
    """The committed JSON is what the Node script produces (nobody edited it by hand)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot regenerate the vectors")
    out = subprocess.run([node, str(VECTORS_DIR / "gen_fairness_vectors.js"), "--stdout"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out == (VECTORS_DIR / "fairness_vectors.json").read_text()


def test_chain_agrees_with_vectors(vectors: dict[str, Any]) -> None:
    assert len(vectors["terms"]) >= 1000
    seed, salt = bytes.fromhex(vectors["seed"]), bytes.fromhex(vectors["salt"])
    for every in (fairness.DEFAULT_CHECKPOINT_EVERY, 64):
        chain = fairness.generate_chain(vectors["length"], checkpoint_every=every, seed=seed, salt=salt)
        assert chain.terminator.hex() == vectors["terminator"]
        assert chain.hash_at(0).hex() == vectors["terminator"]
        mismatched = [t["k"] for t in vectors["terms"] if chain.hash_at(t["k"]).hex() != t["hash"]]
        assert mismatched == [], f"checkpoint_every={every}: h_k differs for k in {mismatched[:10]}"


def test_digests_and_crash_points_agree_with_vectors(vectors: dict[str, Any]) -> None:
    salt = bytes.fromhex(vectors["salt"])
    edge = vectors["edge_bps"]
    # No vector of this seed lies at a float rounding boundary (see test_r_cases for those):
    # the float and exact columns agree on every one, so all of them are in the equality set.
    assert all(int(t["crash_x100_float"]) == int(t["crash_x100_exact"]) for t in vectors["terms"])
    for t in vectors["terms"]:
        h = bytes.fromhex(t["hash"])
        digest = fairness.hmac_digest(h, salt)
        assert digest.hex() == t["digest"], f"HMAC differs at k={t['k']}"
        expected = int(t["crash_x100_float"])
        assert fairness.crash_point_from_digest(digest, edge, NO_CAP) == expected, f"k={t['k']}"
        assert fairness.crash_point_x100(h, salt, edge, NO_CAP) == expected, f"k={t['k']}"
        # The usual 1000x cap only clamps.
        assert fairness.crash_point_x100(h, salt, edge, 100_000) == min(expected, 100_000)


def _float_rounds_up(r: int, numerator: int, float_x100: int) -> bool:
    """True when the float formula gives float_x100 only because the exact quotient
    numerator / (1 - r/2^52) lies less than half an ulp below that integer."""
    exact = Fraction(numerator * TWO_52, TWO_52 - r)
    return exact < float_x100 and (float_x100 - exact) <= Fraction(float_x100, 2**53)


def test_r_cases_from_vectors(vectors: dict[str, Any]) -> None:
    """Chosen r values (extremes, exact quotients, quotients a hair below an integer).

    Excluded from the float equality set, each with its reason in the vectors' "why":
    r where 99 * 2^52 / (2^52 - r) = n - m / (2^52 - r) with 1 <= m <= 49. The exact value is
    below n by less than half an ulp, so IEEE division rounds it up to exactly n and
    Bustabit's float formula floors to n while the exact floor is n - 1. Example
    r = 0xaf075c6bf62f7: float 313 (3.13x), exact 312 (3.12x). The project follows the exact
    integer rule of DESIGN section 6 (one hundredth lower there, at ~1e-14 probability per term).
    """
    edge = vectors["edge_bps"]
    float_disagreements = []
    for case in vectors["r_cases"]:
        r = int(case["r"], 16)
        got = fairness.crash_point_from_digest(digest_with_r(r), edge, NO_CAP)
        assert got == int(case["crash_x100_exact"]), case
        # Python's float math gives the same as Node's: both are IEEE-754 doubles.
        assert max(100, math.floor(99 / (1 - r / TWO_52))) == int(case["crash_x100_float"]), case
        if got != int(case["crash_x100_float"]):
            float_disagreements.append(case)
            assert int(case["crash_x100_float"]) == got + 1, case
            assert _float_rounds_up(r, 99, int(case["crash_x100_float"])), case
            assert "rounds up" in case["why"]
        else:
            assert "rounds up" not in case["why"], case
    assert len(float_disagreements) >= 1    # the generator did find boundary cases to show


@pytest.mark.parametrize("edge_bps", [0, 100, 500])
def test_python_float_formula_over_random_digests(edge_bps: int) -> None:
    """Plain float math (Bustabit's formula generalized to the edge), not the project's code."""
    numerator = (10000 - edge_bps) // 100       # 100, 99, 95: exact in a float
    rng = random.Random(20240601 + edge_bps)
    rounded_up = 0
    for _ in range(100_000):
        digest = rng.randbytes(64)
        r = int(digest.hex()[:13], 16)
        by_float = max(100, math.floor(numerator / (1 - r / TWO_52)))
        got = fairness.crash_point_from_digest(digest, edge_bps, NO_CAP)
        if got != by_float:
            # Only the float rounding at an integer boundary may differ (see test_r_cases).
            assert by_float == got + 1 and _float_rounds_up(r, numerator, by_float), (digest.hex(), got, by_float)
            rounded_up += 1
    assert rounded_up <= 1


# ---------------------------------------------------------------- 2. distribution

def test_crash_point_distribution() -> None:
    salt = sha256(b"distribution salt")
    n = 100_000
    crashes = [fairness.crash_point_x100(sha256(str(i).encode()), salt, 100, 100_000) for i in range(n)]
    at_least_2x = sum(c >= 200 for c in crashes) / n
    instant = sum(c == 100 for c in crashes) / n
    assert abs(at_least_2x - 0.495) <= 0.005, at_least_2x       # (1 - 1 %) / 2
    assert abs(instant - 0.0198) <= 0.002, instant               # X < 2/101
    # The return to player is 0.99 at any target (5 standard deviations of slack).
    for target in (150, 300, 1000):
        p = 99 / target
        observed = sum(c >= target for c in crashes) / n
        assert abs(observed - p) <= 5 * math.sqrt(p * (1 - p) / n), (target, observed)


# ---------------------------------------------------------------- 3. integer arithmetic

def _float_constructs(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if isinstance(node, ast.Constant) and isinstance(node.value, float | complex):
            found.append(f"float literal {node.value!r} (line {node.lineno})")
        elif isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            found.append(f"true division (line {node.lineno})")
        elif isinstance(node, ast.Name) and node.id in {"float", "math"}:
            found.append(f"{node.id} (line {node.lineno})")
    return found


def test_float_detector_catches_floats() -> None:
    """The inspection below can fail: it flags Bustabit's float formula."""
    bustabit = "def f(r):\n    x = r / 2**52\n    return max(1.0, math.floor(99 / (1 - x)))\n"
    assert len(_float_constructs(bustabit)) >= 4
    assert _float_constructs("def g(r):\n    return float(r) // 2\n") != []


def test_crash_point_function_is_integer_only() -> None:
    for fn in (fairness.crash_point_from_digest, fairness.crash_point_x100):
        assert _float_constructs(inspect.getsource(fn)) == [], fn.__name__
    assert type(fairness.TWO_52) is int and fairness.TWO_52 == TWO_52


def test_crash_point_is_exact_at_the_extremes() -> None:
    zero, top = digest_with_r(0), digest_with_r(TWO_52 - 1)
    # r = 0: 9900 * 2^52 // (2^52 * 100) = 99 (0.99x), clamped to 1.00x.
    assert fairness.crash_point_from_digest(zero, 100, 100_000) == 100
    assert fairness.crash_point_from_digest(zero, 0, 100_000) == 100      # exactly 1.00x with no edge
    # r = 2^52 - 1: 99 * 2^52, far above any cap.
    assert fairness.crash_point_from_digest(top, 100, 100_000) == 100_000
    assert fairness.crash_point_from_digest(top, 100, 123_456) == 123_456
    assert fairness.crash_point_from_digest(top, 100, NO_CAP) == 99 * TWO_52
    # Beyond 2^53 a float cannot hold this: 9999 * 2^52 / 100 = 450314926740775895.04.
    assert fairness.crash_point_from_digest(top, 1, NO_CAP) == 450314926740775895
    assert float(450314926740775895) != 450314926740775895
    # Only the first 52 bits count: bit 53 on changes nothing, bit 52 is r's lowest bit.
    r = 0xAF075C6BF62F7                  # an r where the crash point steps (312 -> 313 at r + 1)
    assert fairness.crash_point_from_digest(digest_with_r(r), 100, NO_CAP) == 312
    assert fairness.crash_point_from_digest(digest_with_r(r + 1), 100, NO_CAP) == 313
    assert fairness.crash_point_from_digest(
        (int.from_bytes(digest_with_r(r), "big") | 1 << (511 - 52)).to_bytes(64, "big"), 100, NO_CAP) == 312
    for digest in (zero, top, sha256(b"a") * 2):
        for edge in (0, 100, 5000):
            assert type(fairness.crash_point_from_digest(digest, edge, 100_000)) is int


# ---------------------------------------------------------------- 4. chain properties

@pytest.fixture(scope="module")
def chain_5000() -> fairness.Chain:
    return fairness.generate_chain(5000, checkpoint_every=64, seed=sha256(b"chain 5000 seed"),
                                   salt=sha256(b"chain 5000 salt"))


def _walk(h: bytes, steps: int) -> bytes:
    for _ in range(steps):
        h = sha256(h)
    return h


def test_hash_at_links_to_terminator_around_checkpoints(chain_5000: fairness.Chain) -> None:
    ks = {0, 1, 2, 4998, 4999, 5000}
    ks |= {m * 64 + d for m in (1, 2, 3, 40, 77, 78) for d in (-1, 0, 1)}   # 78 * 64 = 4992
    for k in sorted(ks):
        h = chain_5000.hash_at(k)
        assert len(h) == 32
        assert _walk(h, k) == chain_5000.terminator, f"h_{k} does not reach h_0 in {k} steps"
        assert _walk(h, k + 1) != chain_5000.terminator
    assert chain_5000.hash_at(5000) == chain_5000.seed
    with pytest.raises(IndexError):
        chain_5000.hash_at(5001)
    with pytest.raises(IndexError):
        chain_5000.hash_at(-1)


def test_consecutive_hashes_link(chain_5000: fairness.Chain) -> None:
    # The whole chain, computed independently from the seed.
    expected = [b""] * 5001
    expected[5000] = chain_5000.seed
    for k in range(5000, 0, -1):
        expected[k - 1] = sha256(expected[k])
    got = [chain_5000.hash_at(k) for k in range(5001)]
    assert got == expected
    assert all(sha256(got[k]) == got[k - 1] for k in range(1, 5001))
    assert len(set(got)) == 5001


@pytest.mark.parametrize(("length", "every"), [(4096, 64), (100, 1), (100, 1024), (1, 1024)])
def test_hash_at_for_other_layouts(length: int, every: int) -> None:
    chain = fairness.generate_chain(length, checkpoint_every=every, seed=sha256(b"layout"), salt=b"s" * 32)
    h = chain.seed
    for k in range(length, -1, -1):
        assert chain.hash_at(k) == h, (length, every, k)
        h = sha256(h)


# ---------------------------------------------------------------- the verifier's check_term

def test_check_term_on_vectors(vectors: dict[str, Any]) -> None:
    by_k = {t["k"]: t for t in vectors["terms"]}
    common = {"terminator_hex": vectors["terminator"], "salt_hex": vectors["salt"], "edge_bps": 100,
              "max_multiple_x100": NO_CAP}

    def args(k: int, **over: Any) -> dict[str, Any]:
        t = by_k[k]
        base = {"chain_index": k, "revealed_hash_hex": t["hash"], "hmac_digest_hex": t["digest"],
                "crash_x100": int(t["crash_x100_exact"]), "prev_hash_hex": by_k[k - 1]["hash"] if k > 1
                else vectors["terminator"]}
        return {**common, **base, **over}

    assert check_term(**args(1)) == []
    assert check_term(**args(1000)) == []
    assert check_term(**args(1000, linked_hash_hex=by_k[998]["hash"], linked_index=998)) == []
    [problem] = check_term(**args(1000, chain_index=999, prev_hash_hex=None))
    assert "does not link to the terminator in 999" in problem
    [problem] = check_term(**args(500, linked_hash_hex=by_k[400]["hash"], linked_index=401))
    assert "verified hash of index 401" in problem
    [problem] = check_term(**args(7, prev_hash_hex=by_k[5]["hash"]))
    assert "commitment" in problem
    [problem] = check_term(**args(7, crash_x100=int(by_k[7]["crash_x100_exact"]) + 1))
    assert "crash_x100 is" in problem
    [problem] = check_term(**args(7, hmac_digest_hex=by_k[8]["digest"]))
    assert "hmac_digest differs" in problem
    assert any("not hex" in p for p in check_term(**args(7, revealed_hash_hex="zz" * 32)))
    with pytest.raises(ValueError):
        check_term(**args(7, linked_hash_hex=by_k[7]["hash"], linked_index=7))


# ---------------------------------------------------------------- 5. the verifier on MariaDB

EDGE_CONFIG = {"edge_bps": 100, "max_multiple_x100": 100_000}
OTHER_CONFIG = {"edge_bps": 300, "max_multiple_x100": 2_000}     # a later config snapshot


@dataclass
class Published:
    channel_id: str
    chains: dict[int, fairness.Chain]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def term(self, chain_no: int, k: int) -> dict[str, Any]:
        return next(r for r in self.rows if r["chain_no"] == chain_no and r["chain_index"] == k)


def _term_row(channel_id: str, seq: int, chain_no: int, chain: fairness.Chain, k: int,
              config: dict[str, int], *, revealed: bool = True, aborted: bool = False) -> dict[str, Any]:
    proof = fairness.prove(chain, k, config["edge_bps"], config["max_multiple_x100"])
    t0 = 1_700_000_000_000 + seq * 20_000
    return {
        "term_id": f"{channel_id}-{seq}", "channel_id": channel_id, "seq": seq, "chain_no": chain_no,
        "chain_index": k, "prev_hash": chain.hash_at(k - 1).hex(),
        "state": "closed" if revealed else "flying", "state_version": 5 if revealed else 3,
        "created_at": t0, "bets_close_at": t0 + 8000, "flying_at": t0 + 10_000,
        "crash_at": t0 + 12_000 if revealed else None, "ended_at": t0 + 12_000 if revealed else None,
        "closed_at": t0 + 13_000 if revealed else None,
        "crash_x100": proof.crash_x100 if revealed else None,
        "revealed_hash": proof.hash_hex if revealed else None,
        "hmac_digest": proof.digest_hex if revealed else None,
        "aborted": int(aborted), "abort_reason": "operator test" if aborted else None, "recovered": 0,
        "config": json.dumps(config), "updated_at": t0 + 13_000,
    }


_INSERT_TERM = text(
    "INSERT INTO crash_term (term_id, channel_id, seq, chain_no, chain_index, prev_hash, state, state_version,"
    " created_at, bets_close_at, flying_at, crash_at, ended_at, closed_at, crash_x100, revealed_hash, hmac_digest,"
    " aborted, abort_reason, recovered, config, updated_at) VALUES (:term_id, :channel_id, :seq, :chain_no,"
    " :chain_index, :prev_hash, :state, :state_version, :created_at, :bets_close_at, :flying_at, :crash_at,"
    " :ended_at, :closed_at, :crash_x100, :revealed_hash, :hmac_digest, :aborted, :abort_reason, :recovered,"
    " :config, :updated_at)")


async def _publish(engine: AsyncEngine, channel_id: str, layout: list[tuple[int, int, int]],
                   pending: int = 0) -> Published:
    """layout: (chain_no, chain length, terms revealed on it); `pending` unrevealed terms follow."""
    published = Published(channel_id, {})
    seq = 0
    for chain_no, length, used in layout:
        chain = fairness.generate_chain(length, checkpoint_every=64,
                                        seed=sha256(f"{channel_id}/{chain_no}".encode()))
        published.chains[chain_no] = chain
        for k in range(1, used + 1):
            seq += 1
            config = OTHER_CONFIG if chain_no == 2 and k > 25 else EDGE_CONFIG
            published.rows.append(_term_row(channel_id, seq, chain_no, chain, k, config,
                                            aborted=chain_no == 2 and k == 30))
    last_no, _, last_used = layout[-1]
    for k in range(last_used + 1, last_used + 1 + pending):
        seq += 1
        published.rows.append(_term_row(channel_id, seq, last_no, published.chains[last_no], k, EDGE_CONFIG,
                                        revealed=False))
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO fairness_chain (channel_id, chain_no, length, terminator, salt, published_at)"
            " VALUES (:c, :n, :l, :t, :s, :p)"),
            [{"c": channel_id, "n": no, "l": ch.length, "t": ch.terminator.hex(), "s": ch.salt.hex(),
              "p": 1_700_000_000_000 + no} for no, ch in published.chains.items()])
        for start in range(0, len(published.rows), 1000):
            await conn.execute(_INSERT_TERM, published.rows[start:start + 1000])
    return published


async def _unpublish(engine: AsyncEngine, channel_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM crash_term WHERE channel_id = :c"), {"c": channel_id})
        await conn.execute(text("DELETE FROM fairness_chain WHERE channel_id = :c"), {"c": channel_id})


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    eng = make_engine(get_settings().db_url, pool_size=2)
    yield eng
    await eng.dispose()


@pytest.fixture
async def channel(engine: AsyncEngine) -> AsyncIterator[Published]:
    """A fresh channel: chain 1 (length 40) used up, chain 2 (length 200) with 60 revealed terms
    (an aborted one at index 30, a different config from index 26) and one term still flying."""
    channel_id = f"verify-{uuid.uuid4().hex[:16]}"
    try:
        yield await _publish(engine, channel_id, [(1, 40, 40), (2, 200, 60)], pending=1)
    finally:
        await _unpublish(engine, channel_id)


async def _run_cli(argv: list[str]) -> int:
    # main() runs its own event loop (asyncio.run): give it a thread of its own.
    return await asyncio.to_thread(main, argv)


def _problems_by_term(report: dict[str, Any]) -> dict[str | None, list[str]]:
    return {entry["term_id"]: entry["problems"] for entry in report["problems"]}


async def test_clean_channel_verifies(engine: AsyncEngine, channel: Published,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    report = await verify_channel(engine, channel.channel_id)
    json.dumps(report)                                    # JSON-serializable as promised
    assert report["problems"] == []
    assert report["terms_checked"] == report["terms_ok"] == 100
    assert report["terms_pending"] == 1
    assert [c["chain_no"] for c in report["chains"]] == [1, 2]
    assert report["chains"][1]["terminator"] == channel.chains[2].terminator.hex()
    assert [(t["chain_no"], t["chain_index"]) for t in report["terms"]] == \
        [(1, k) for k in range(1, 41)] + [(2, k) for k in range(1, 61)]
    assert all(t["ok"] for t in report["terms"])
    assert {t["term_id"]: t["crash_x100"] for t in report["terms"]} == \
        {r["term_id"]: r["crash_x100"] for r in channel.rows if r["revealed_hash"]}

    db_url = get_settings().db_url
    assert await _run_cli(["--channel", channel.channel_id, "--db-url", db_url]) == 0
    assert "VERIFIED" in capsys.readouterr().out
    assert await _run_cli(["--channel", channel.channel_id, "--json"]) == 0    # default URL: settings
    assert json.loads(capsys.readouterr().out) == report


async def test_tampered_rows_are_named(engine: AsyncEngine, channel: Published,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    wrong_crash = channel.term(2, 10)
    forged = channel.term(2, 20)
    wrong_hmac = channel.term(1, 5)
    # A careful forger: another chain's h_20 with its own (consistent) commitment, digest and
    # crash point. Only the link to the published terminator can catch it.
    other = fairness.generate_chain(200, seed=sha256(b"another chain"), salt=channel.chains[2].salt)
    foreign = fairness.prove(other, 20, EDGE_CONFIG["edge_bps"], EDGE_CONFIG["max_multiple_x100"])
    bad_digest = ("0" if wrong_hmac["hmac_digest"][0] != "0" else "1") + wrong_hmac["hmac_digest"][1:]
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE crash_term SET crash_x100 = :x WHERE term_id = :t"),
                           {"x": wrong_crash["crash_x100"] + 1, "t": wrong_crash["term_id"]})
        await conn.execute(text(
            "UPDATE crash_term SET revealed_hash = :h, prev_hash = :p, hmac_digest = :d, crash_x100 = :x"
            " WHERE term_id = :t"),
            {"h": foreign.hash_hex, "p": other.hash_at(19).hex(), "d": foreign.digest_hex,
             "x": foreign.crash_x100, "t": forged["term_id"]})
        await conn.execute(text("UPDATE crash_term SET hmac_digest = :d WHERE term_id = :t"),
                           {"d": bad_digest, "t": wrong_hmac["term_id"]})

    report = await verify_channel(engine, channel.channel_id)
    problems = _problems_by_term(report)
    assert set(problems) == {wrong_crash["term_id"], forged["term_id"], wrong_hmac["term_id"]}
    [crash_problem] = problems[wrong_crash["term_id"]]
    assert f"crash_x100 is {wrong_crash['crash_x100'] + 1}" in crash_problem
    assert f"gives {wrong_crash['crash_x100']}" in crash_problem
    [link_problem] = problems[forged["term_id"]]
    assert "does not link" in link_problem and "h_20" in link_problem
    [hmac_problem] = problems[wrong_hmac["term_id"]]
    assert "hmac_digest differs" in hmac_problem
    assert report["terms_checked"] == 100 and report["terms_ok"] == 97
    ok = {t["term_id"]: t["ok"] for t in report["terms"]}
    assert [tid for tid, good in ok.items() if not good] == \
        [wrong_hmac["term_id"], wrong_crash["term_id"], forged["term_id"]]
    # The term after the forged one still links (to h_19, in two steps).
    assert ok[channel.term(2, 21)["term_id"]] is True

    assert await _run_cli(["--channel", channel.channel_id, "--db-url", get_settings().db_url]) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out
    for term in (wrong_crash, forged, wrong_hmac):
        assert term["term_id"] in out

    # One term at a time: the forged one alone fails, its neighbour alone verifies.
    single = await verify_channel(engine, channel.channel_id, forged["term_id"])
    assert single["terms_checked"] == 1 and single["terms_ok"] == 0
    assert any("does not link to the terminator in 20" in p for p in _problems_by_term(single)[forged["term_id"]])
    assert await _run_cli(["--channel", channel.channel_id, "--term", channel.term(2, 21)["term_id"]]) == 0


async def test_single_term(engine: AsyncEngine, channel: Published) -> None:
    aborted = channel.term(2, 30)
    report = await verify_channel(engine, channel.channel_id, aborted["term_id"])
    assert report["problems"] == []
    assert report["terms"] == [{"term_id": aborted["term_id"], "chain_no": 2, "chain_index": 30,
                                "crash_x100": aborted["crash_x100"], "ok": True}]
    flying = channel.term(2, 61)
    report = await verify_channel(engine, channel.channel_id, flying["term_id"])
    assert "not revealed yet" in _problems_by_term(report)[flying["term_id"]][0]
    report = await verify_channel(engine, channel.channel_id, "no-such-term")
    assert "no term no-such-term" in _problems_by_term(report)["no-such-term"][0]


async def test_missing_chain_row_is_a_problem(engine: AsyncEngine, channel: Published) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM fairness_chain WHERE channel_id = :c AND chain_no = 1"),
                           {"c": channel.channel_id})
    report = await verify_channel(engine, channel.channel_id)
    problems = _problems_by_term(report)
    assert set(problems) == {channel.term(1, k)["term_id"] for k in range(1, 41)}
    assert all("fairness chain 1 is not published" in p[0] for p in problems.values())
    assert report["terms_ok"] == 60


async def test_unknown_channel_and_usage_errors(engine: AsyncEngine) -> None:
    missing = f"verify-missing-{uuid.uuid4().hex[:8]}"
    report = await verify_channel(engine, missing)
    assert report["terms_checked"] == 0 and "nothing is published" in report["problems"][0]["problems"][0]
    assert await _run_cli(["--channel", missing]) == 1
    assert await _run_cli([]) == 2
    assert await _run_cli(["--channel", "x", "--bogus"]) == 2
    assert await _run_cli(["--channel", "x", "--db-url", "mysql+aiomysql://nobody:none@127.0.0.1:1/none"]) == 2


async def test_thousands_of_terms_verify_fast(engine: AsyncEngine) -> None:
    # Linking each term to the terminator would cost 12.5 million SHA-256 here (seconds);
    # linking to the previous verified term costs one per term.
    channel_id = f"verify-{uuid.uuid4().hex[:16]}"
    try:
        await _publish(engine, channel_id, [(1, 5000, 5000)])
        started = time.perf_counter()
        report = await verify_channel(engine, channel_id)
        elapsed = time.perf_counter() - started
    finally:
        await _unpublish(engine, channel_id)
    assert report["problems"] == [] and report["terms_ok"] == 5000
    assert elapsed < 2.5, f"{elapsed:.2f} s for 5000 terms"


async def test_a_long_verification_leaves_the_event_loop_free(engine: AsyncEngine, channel: Published,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash walks run in a thread: the process (the operator views) keeps serving meanwhile.
    Here the walk is made to take a second; a task that ticks every 10 ms goes on ticking."""
    import time

    from streams import verify

    real = verify._report

    def slow_report(*args: Any) -> dict[str, Any]:
        time.sleep(1.0)                 # as a long walk would hold a thread (not the loop)
        return real(*args)
    monkeypatch.setattr(verify, "_report", slow_report)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
    task = asyncio.create_task(ticker())
    try:
        report = await verify_channel(engine, channel.channel_id)
    finally:
        task.cancel()
    assert report["terms_ok"] == 100
    assert ticks >= 20, f"the event loop was blocked: {ticks} ticks of 10 ms during a 1 s verification"
