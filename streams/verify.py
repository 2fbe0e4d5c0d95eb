"""The fairness verifier (DESIGN section 6): library and the `crash-verify` CLI.

It reads only what the project publishes in MySQL -- `fairness_chain` (terminator and salt of
each chain) and the revealed columns of `crash_term` -- and checks, for every revealed term:

* the revealed hash h_k links to the chain's terminator h_0 by k SHA-256 steps (or, in a
  channel run, to the last verified hash h_j of the same chain by k - j steps: same proof,
  one step per term instead of k);
* SHA-256(h_k) equals the commitment `prev_hash` announced when the term was created;
* HMAC-SHA512(salt, hex(h_k)) equals the published `hmac_digest`;
* the crash point recomputed from the digest and the term's config equals `crash_x100`.

Verify a single term by hand (the same checks, a few lines):

    from streams.verify import check_term
    problems = check_term(terminator_hex=..., salt_hex=..., chain_index=17, revealed_hash_hex=...,
                          hmac_digest_hex=..., crash_x100=250, edge_bps=100, max_multiple_x100=100000)
    assert problems == []
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from streams import fairness

__all__ = ["check_term", "verify_channel", "main"]


def _fmt_x100(x100: int) -> str:
    # Integer formatting: a multiple is shown exactly as stored, never through a float.
    return f"{x100 // 100}.{x100 % 100:02d}x"


def _parse_hex(value: str | None, what: str, nbytes: int | None, problems: list[str]) -> bytes | None:
    """Bytes of a lowercase/uppercase hex field, or None with a problem recorded."""
    if value is None or value == "":
        problems.append(f"{what} is missing")
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        problems.append(f"{what} is not hex: {value!r}")
        return None
    if nbytes is not None and len(raw) != nbytes:
        problems.append(f"{what} has {len(raw)} bytes, expected {nbytes}")
        return None
    return raw


@dataclass(frozen=True)
class _Outcome:
    problems: list[str]
    linked_hash: bytes | None   # h_k when it was proven to be on the chain at index k


def _check(*, terminator_hex: str, salt_hex: str, chain_index: int, revealed_hash_hex: str | None,
           hmac_digest_hex: str | None, crash_x100: int | None, edge_bps: int | None,
           max_multiple_x100: int | None, prev_hash_hex: str | None = None,
           linked_hash_hex: str | None = None, linked_index: int | None = None) -> _Outcome:
    problems: list[str] = []
    if (linked_hash_hex is None) != (linked_index is None):
        raise ValueError("linked_hash_hex and linked_index go together")
    if linked_index is not None and not 0 <= linked_index < chain_index:
        raise ValueError(f"linked_index {linked_index} must be in 0..chain_index-1 ({chain_index - 1})")

    h_k = _parse_hex(revealed_hash_hex, "revealed_hash", 32, problems)
    salt = _parse_hex(salt_hex, "salt", None, problems)
    if linked_hash_hex is not None:
        anchor = _parse_hex(linked_hash_hex, "linked hash", 32, problems)
        anchor_name = f"the verified hash of index {linked_index}"
        steps = chain_index - (linked_index or 0)
    else:
        anchor = _parse_hex(terminator_hex, "terminator", 32, problems)
        anchor_name = "the terminator"
        steps = chain_index
    if chain_index < 1:
        # h_0 is the published terminator itself; terms use h_1, h_2, ...
        problems.append(f"chain_index {chain_index} is not a term index (terms start at 1)")
    if h_k is None:
        return _Outcome(problems, None)

    linked = False
    if anchor is not None and chain_index >= 1:
        linked = fairness.links_to(h_k, anchor, steps)
        if not linked:
            problems.append(f"revealed hash does not link to {anchor_name} in {steps} SHA-256 "
                            f"step{'s' if steps != 1 else ''}: it is not h_{chain_index} of this chain")

    if prev_hash_hex is not None:
        prev = _parse_hex(prev_hash_hex, "prev_hash (commitment)", 32, problems)
        if prev is not None:
            committed = fairness.sha256(h_k)
            if not hmac.compare_digest(committed, prev):
                problems.append(f"SHA-256(revealed hash) = {committed.hex()} differs from the commitment "
                                f"prev_hash {prev_hash_hex} announced at the term's creation")

    if salt is not None:
        digest = fairness.hmac_digest(h_k, salt)
        published = _parse_hex(hmac_digest_hex, "hmac_digest", 64, problems)
        if published is not None and not hmac.compare_digest(digest, published):
            problems.append(f"hmac_digest differs from HMAC-SHA512(salt, revealed hash) = {digest.hex()}")
        if edge_bps is None or max_multiple_x100 is None:
            problems.append("the term's config lacks edge_bps or max_multiple_x100: "
                            "the crash point cannot be recomputed")
        else:
            # The crash point comes from the recomputed digest: a wrong published digest is
            # reported above and does not hide (or fake) a wrong crash point.
            expected = fairness.crash_point_from_digest(digest, edge_bps, max_multiple_x100)
            if crash_x100 is None:
                problems.append(f"crash_x100 is missing; the revealed hash gives {_fmt_x100(expected)}")
            elif crash_x100 != expected:
                problems.append(f"crash_x100 is {crash_x100} ({_fmt_x100(crash_x100)}) but the revealed hash "
                                f"gives {expected} ({_fmt_x100(expected)}) with edge_bps={edge_bps}, "
                                f"max_multiple_x100={max_multiple_x100}")
    return _Outcome(problems, h_k if linked else None)


def check_term(*, terminator_hex: str, salt_hex: str, chain_index: int, revealed_hash_hex: str,
               hmac_digest_hex: str, crash_x100: int, edge_bps: int, max_multiple_x100: int,
               prev_hash_hex: str | None = None, linked_hash_hex: str | None = None,
               linked_index: int | None = None) -> list[str]:
    """The problems found with one revealed term; an empty list means it verifies.

    `linked_hash_hex`/`linked_index`: an already verified hash of the same chain at a lower
    index, to link to in chain_index - linked_index steps instead of walking to the terminator.
    """
    return _check(terminator_hex=terminator_hex, salt_hex=salt_hex, chain_index=chain_index,
                  revealed_hash_hex=revealed_hash_hex, hmac_digest_hex=hmac_digest_hex,
                  crash_x100=crash_x100, edge_bps=edge_bps, max_multiple_x100=max_multiple_x100,
                  prev_hash_hex=prev_hash_hex, linked_hash_hex=linked_hash_hex,
                  linked_index=linked_index).problems


def _config(value: Any) -> dict[str, Any]:
    # MariaDB's JSON is LONGTEXT: the driver hands back a string.
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if value else {}
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_TERM_COLUMNS = ("term_id, channel_id, seq, chain_no, chain_index, prev_hash, state, crash_x100,"
                 " revealed_hash, hmac_digest, config, aborted")


async def verify_channel(engine: AsyncEngine, channel_id: str, term_id: str | None = None) -> dict[str, Any]:
    """Verify every revealed term of a channel (or the one term `term_id`) from MySQL.

    Returns a JSON-serializable report: {channel_id, chains, terms_checked, terms_ok,
    terms_pending, problems: [{term_id, problems}], terms: [{term_id, chain_no, chain_index,
    crash_x100, ok}]}. Terms not revealed yet are counted in terms_pending (or, asked for by
    term_id, reported as a problem: there is nothing to verify yet).
    """
    async with engine.connect() as conn:
        chain_rows = (await conn.execute(text(
            "SELECT chain_no, length, terminator, salt, published_at FROM fairness_chain"
            " WHERE channel_id = :c ORDER BY chain_no"), {"c": channel_id})).all()
        if term_id is None:
            term_rows = (await conn.execute(text(
                f"SELECT {_TERM_COLUMNS} FROM crash_term WHERE channel_id = :c"
                " ORDER BY chain_no, chain_index"), {"c": channel_id})).all()
        else:
            term_rows = (await conn.execute(text(
                f"SELECT {_TERM_COLUMNS} FROM crash_term WHERE channel_id = :c AND term_id = :t"),
                {"c": channel_id, "t": term_id})).all()
    # The hash walks are CPU work (up to a chain checkpoint's worth of SHA-256 per term): in a
    # thread, so that the process's event loop goes on serving while a long check runs.
    return await asyncio.to_thread(_report, channel_id, term_id, chain_rows, term_rows)


def _report(channel_id: str, term_id: str | None, chain_rows: list[Any], term_rows: list[Any]) -> dict[str, Any]:
    chains = {row.chain_no: row for row in chain_rows}
    report: dict[str, Any] = {
        "channel_id": channel_id,
        "chains": [{"chain_no": r.chain_no, "length": r.length, "terminator": r.terminator, "salt": r.salt,
                    "published_at": r.published_at} for r in chain_rows],
        "terms_checked": 0, "terms_ok": 0, "terms_pending": 0, "problems": [], "terms": [],
    }
    if term_id is not None and not term_rows:
        report["problems"].append({"term_id": term_id, "problems": [f"no term {term_id} in channel {channel_id}"]})
        return report
    if term_id is None and not term_rows and not chain_rows:
        report["problems"].append({"term_id": None,
                                   "problems": [f"nothing is published for channel {channel_id}"]})
        return report

    # Last hash proven on each chain: (index, h). Rows come sorted by (chain_no, chain_index),
    # so each term links to its predecessor in a step or two instead of walking to h_0.
    anchors: dict[int, tuple[int, bytes]] = {}
    for row in term_rows:
        if row.revealed_hash is None:
            if term_id is not None:
                report["problems"].append({"term_id": row.term_id, "problems": [
                    f"term is not revealed yet (state {row.state}): its hash is published when it crashes"]})
            else:
                report["terms_pending"] += 1
            continue
        report["terms_checked"] += 1
        chain = chains.get(row.chain_no)
        if chain is None:
            problems = [f"fairness chain {row.chain_no} is not published (no fairness_chain row): "
                        "nothing to link the revealed hash to"]
        elif not 1 <= row.chain_index <= chain.length:
            problems = [f"chain_index {row.chain_index} is outside chain {row.chain_no} (1..{chain.length})"]
        else:
            config = _config(row.config)
            anchor = anchors.get(row.chain_no)
            outcome = _check(
                terminator_hex=chain.terminator, salt_hex=chain.salt, chain_index=row.chain_index,
                revealed_hash_hex=row.revealed_hash, hmac_digest_hex=row.hmac_digest,
                crash_x100=_int_or_none(row.crash_x100), edge_bps=_int_or_none(config.get("edge_bps")),
                max_multiple_x100=_int_or_none(config.get("max_multiple_x100")), prev_hash_hex=row.prev_hash,
                linked_hash_hex=anchor[1].hex() if anchor else None, linked_index=anchor[0] if anchor else None)
            problems = outcome.problems
            if outcome.linked_hash is not None:
                # Proven on the chain even if its digest or crash point is wrong: a safe anchor.
                anchors[row.chain_no] = (row.chain_index, outcome.linked_hash)
        ok = not problems
        report["terms_ok"] += ok
        report["terms"].append({"term_id": row.term_id, "chain_no": row.chain_no, "chain_index": row.chain_index,
                                "crash_x100": _int_or_none(row.crash_x100), "ok": ok})
        if problems:
            report["problems"].append({"term_id": row.term_id, "problems": problems})
    return report


def _summary(report: dict[str, Any], term_id: str | None) -> str:
    lines = [f"channel {report['channel_id']}"]
    for chain in report["chains"]:
        lines.append(f"  chain {chain['chain_no']}: length {chain['length']}, "
                     f"terminator {chain['terminator']}, salt {chain['salt']}")
    if term_id is None:
        lines.append(f"  {report['terms_checked']} revealed term(s) checked, {report['terms_ok']} ok, "
                     f"{report['terms_pending']} not revealed yet")
    for term in report["terms"]:
        crash = "-" if term["crash_x100"] is None else _fmt_x100(term["crash_x100"])
        if term_id is not None or not term["ok"]:
            lines.append(f"  term {term['term_id']} (chain {term['chain_no']}, index {term['chain_index']}, "
                         f"crash {crash}): {'verified' if term['ok'] else 'FAILED'}")
    for entry in report["problems"]:
        for problem in entry["problems"]:
            lines.append(f"  PROBLEM {entry['term_id'] or report['channel_id']}: {problem}")
    lines.append("VERIFIED" if not report["problems"] else f"NOT VERIFIED: {len(report['problems'])} problem(s)")
    return "\n".join(lines)


async def _run(db_url: str, channel_id: str, term_id: str | None) -> dict[str, Any]:
    from sql.db import make_engine

    engine = make_engine(db_url, pool_size=1)
    try:
        return await verify_channel(engine, channel_id, term_id)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """`crash-verify --channel ID [--term TERM_ID] [--json] [--db-url URL]`.

    Exit 0: everything verifies; 1: a problem was found; 2: usage error or unreadable database.
    """
    parser = argparse.ArgumentParser(prog="crash-verify",
                                     description="Verify the provably fair crash points of a channel.")
    parser.add_argument("--channel", required=True, help="channel id")
    parser.add_argument("--term", help="verify only this term id")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--db-url", help="SQLAlchemy URL (default: CRASH_DB_URL / settings)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:        # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    db_url = args.db_url
    if db_url is None:
        from streams.settings import get_settings

        db_url = get_settings().db_url
    try:
        report = asyncio.run(_run(db_url, args.channel, args.term))
    except Exception as exc:  # any driver/URL error: nothing could be verified
        print(f"crash-verify: cannot read the database: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else _summary(report, args.term))
    return 1 if report["problems"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
