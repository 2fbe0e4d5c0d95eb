"""The benchmark's output: one table, a JSON file under var/bench/, the change against the previous one."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from streams.bench.deploy import REPO

__all__ = ["rows_of", "print_table", "save", "previous"]

OUT = REPO / "var" / "bench"


def _get(results: dict[str, Any], path: str) -> Any:
    value: Any = results
    for part in path.split("."):
        if isinstance(value, list):
            value = value[int(part)] if int(part) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        if value is None:
            return None
    return value


def rows_of(results: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(figure, unit, value, ratio to the baseline or target) for the table."""
    base = _get(results, "baseline.per_s") or 0
    out: list[tuple[str, str, Any, Any]] = [("bare aiokafka consume->produce", "msg/s", base, "baseline")]
    b = results.get("baseline") or {}
    if b.get("broker_cpu_us_per_msg") is not None:
        out.append(("  CPU per message: client + broker", "µs",
                    f"{b['cpu_us_per_msg']} + {b['broker_cpu_us_per_msg']}", ""))
    m = b.get("mysql") or {}
    if m.get("rows_per_s"):
        out.append((f"bare aiomysql: a bet's sink rows, {m['batch']} bets a transaction", "rows/s",
                    m["rows_per_s"], ""))
        for table, t in (m.get("tables") or {}).items():
            out.append((f"  {table}: rows/s, CPU per row client + MariaDB", "µs",
                        f"{t['rows_per_s']}/s  {t['cpu_us_per_row']} + {t['server_cpu_us_per_row']}", ""))
    s = results.get("sustained", {})
    if s:
        out += [
            ("pipeline decisions (straight to game.command)", "/s", s.get("decisions_per_s"),
             _ratio(s.get("decisions_per_s"), base)),
            ("  steady (20-90 % of the run)", "/s", s.get("decisions_per_s_steady"),
             _ratio(s.get("decisions_per_s_steady"), base)),
            ("bets into MySQL (in the window)", "/s", s.get("mysql_rows_per_s"),
             _ratio(s.get("mysql_rows_per_s"), base)),
            ("  sink lag at the end / drain", "rows / s",
             f"{s.get('mysql_lag_at_end')} / {s.get('mysql_drain_s')}", ""),
            ("jackpot contributions (3 pools fed)", "/s", s.get("jackpot_contributions_per_s"), ""),
            ("  machine busy (share of all cores)", "", _box(s).strip(), ""),
        ]
        for name, per in sorted((s.get("cpu_s_per_1000_bets") or {}).items()):
            out.append((f"  CPU per 1,000 bets: {name}", "s", per, ""))
        w = s.get("written_per_bet") or {}
        if w:
            out.append(("  written per bet: Kafka messages / MySQL rows", "",
                        f"{w['kafka_messages_total']} / {w['mysql_rows_total']}", ""))
    f = results.get("floor") or {}
    if f:
        out += [("floor: a bet's messages and rows at the bare price", "µs CPU",
                 f"{f['us_per_bet']} (Kafka {f['kafka_us_per_bet']} + MySQL {f['mysql_us_per_bet']})", ""),
                (f"  the floor's ceiling on {results.get('machine', {}).get('cores', '?')} cores", "bets/s",
                 f["ceiling_bets_per_s"], "target 7000"),
                ("  the pipeline's box CPU per bet", "µs CPU", f.get("pipeline_us_per_bet"),
                 f"floor {f['floor_share_of_pipeline']} of it" if f.get("floor_share_of_pipeline") else "")]
    g = results.get("gateway", {})
    for step in g.get("steps", []):
        ok = step["errors"] == 0 and (step["p99_ms"] or 1e9) <= 150
        out.append((f"gateway open-loop {step['offered_per_s']}/s: achieved, p50/p99/max, errors", "ms",
                    f"{step['achieved_per_s']}/s  {_ms(step['p50_ms'])}/{_ms(step['p99_ms'])}/{_ms(step['max_ms'])}"
                    f"  err {step['errors']}{_box(step)}", "ok" if ok else "over"))
    if g:
        out.append(("gateway: highest offered rate with p99 <= 150 ms", "/s", g.get("highest_rate_p99_le_150ms"),
                    "target 2000"))
        cpu = next((st["cpu_s_per_1000_bets"] for st in reversed(g.get("steps", []))
                    if st["errors"] == 0), None)
        for name, per in sorted((cpu or {}).items()):
            out.append((f"  CPU per 1,000 gateway bets: {name}", "s", per, ""))
    c = results.get("cashout", {})
    if c and "p99_ms" in c:
        out.append((f"manual cashout at {c['offered_per_s']}/s (+ {c.get('background_bets_per_s')} bets/s): p50/p99",
                    "ms", f"{_ms(c['p50_ms'])}/{_ms(c['p99_ms'])}  err {c['errors']}", "target p99 100"))
    t = results.get("ticks", {})
    if t and "jitter_p99_ms" in t:
        out.append((f"tick jitter with {t['autos']} autos flying: p50/p99/max", "ms",
                    f"{_ms(t['jitter_p50_ms'])}/{_ms(t['jitter_p99_ms'])}/{_ms(t['jitter_max_ms'])}", "target p99 20"))
    w = results.get("scaling", {})
    if w:
        out.append((f"1 -> 2 workers on {w.get('channels')} channels", "/s",
                    f"{w.get('one_worker_per_s')} -> {w.get('two_workers_per_s')}", f"x{w.get('ratio')}"))
        bare = w.get("without_standby")
        if bare:
            out.append(("  the same without table standbys", "/s",
                        f"{bare.get('one_worker_per_s')} -> {bare.get('two_workers_per_s')}", f"x{bare.get('ratio')}"))
    j = results.get("jackpot_api", {})
    for step in j.get("steps", []):
        api, bare = step["api"], step["bare"]
        out.append((f"jackpot contribute {step['offered_per_s']}/s: api vs bare handler (p50/p99)", "ms",
                    f"{api['achieved_per_s']}/s {_ms(api['p50_ms'])}/{_ms(api['p99_ms'])} err {api['errors']}"
                    f" | bare {bare['achieved_per_s']}/s {_ms(bare['p50_ms'])}/{_ms(bare['p99_ms'])}",
                    _ratio(api["achieved_per_s"], bare["achieved_per_s"])))
    if j:
        out.append(("jackpot API: highest offered rate with p99 <= 50 ms", "/s", j.get("highest_rate_p99_le_50ms"),
                    "target 2000"))
    f = results.get("fanout", {})
    if f:
        out.append((f"WebSocket fan-out {f.get('clients', '')} clients: p50/p99", "ms",
                    f"{f.get('p50_ms')}/{f.get('p99_ms')}" if "p99_ms" in f else f.get("skipped", "no figure"),
                    "target p99 100"))
    return out


def _box(figures: dict[str, Any]) -> str:
    """'  box 97 %': how busy the whole machine was during the phase (older files: nothing)."""
    share = (figures.get("box") or {}).get("busy_share")
    return "" if share is None else f"  box {share * 100:.0f} %"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(value: Any, base: Any) -> str:
    if not isinstance(value, (int, float)) or not base:
        return ""
    return f"{value / base:.3f} of baseline"


def print_table(results: dict[str, Any], previous_results: dict[str, Any] | None) -> None:
    rows = rows_of(results)
    before = {name: value for name, _, value, _ in rows_of(previous_results)} if previous_results else {}
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'figure':<{width}}{'value':<44}{'unit':<10}{'vs baseline/target':<22}previous run")
    print("-" * (width + 100))
    for name, unit, value, ratio in rows:
        shown = "-" if value is None else str(value)
        old = before.get(name)
        change = ""
        if old is not None and isinstance(old, (int, float)) and isinstance(value, (int, float)) and old:
            change = f"{old} ({(value - old) / old:+.0%})"
        elif old is not None and old != value:
            change = str(old)
        print(f"{name:<{width}}{shown:<44}{unit:<10}{ratio:<22}{change}")


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """py-spy's raw output (collapsed stacks with counts) -> the share of samples in which each
    function is on the stack (inclusive) and on top (self), the largest first."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";") if f]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 3)) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


def _frame(frame: str) -> str:
    """`function (path/to/module.py:line)` -> `module.function` (lines merged)."""
    name, _, where = frame.partition(" (")
    module = where.rsplit(":", 1)[0].removesuffix(".py")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in module:
            module = module.split(marker, 1)[1]
    return f"{module.replace('/', '.')}.{name}"


def previous(mode: str) -> tuple[Path, dict[str, Any]] | None:
    files = sorted(OUT.glob(f"bench-{mode}-*.json"))
    if not files:
        return None
    return files[-1], json.loads(files[-1].read_text())


def save(results: dict[str, Any], mode: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench-{mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path
