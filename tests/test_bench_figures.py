"""crash-bench's machine-wide CPU figure: what the per-process figures cannot show (the load
generator, the kernel's work for loopback traffic), so that a saturated box is seen as one."""
import asyncio
import json
import os
import subprocess
import sys
import time

from streams.bench.deploy import box_busy, box_cpu, cpu_seconds, tree_cpu
from streams.bench.report import rows_of


def test_the_machine_figure_holds_this_process_busy_loop():
    own0, box0 = cpu_seconds(os.getpid()), box_cpu()
    spin_until = time.process_time() + 0.5
    while time.process_time() < spin_until:
        pass
    own1, box1 = cpu_seconds(os.getpid()), box_cpu()
    busy = box_busy(box0, box1)
    assert own1 - own0 >= 0.4
    # The machine's busy time holds this process's, and whatever else ran meanwhile.
    assert busy["busy_cpu_s"] >= 0.9 * (own1 - own0)
    assert 0 < busy["busy_share"] <= 1


def test_the_table_shows_how_busy_the_machine_was():
    step = {"offered_per_s": 500, "achieved_per_s": 500, "p50_ms": 40.0, "p99_ms": 120.0, "max_ms": 160.0,
            "errors": 0, "box": {"busy_cpu_s": 19.4, "busy_share": 0.97},
            "cpu_s_per_1000_bets": {"worker-1": 0.9, "load generator": 0.3, "box": 3.9}}
    rows = {name: value for name, _unit, value, _ratio in rows_of({"gateway": {"steps": [step]}})}
    assert rows["gateway open-loop 500/s: achieved, p50/p99/max, errors"].endswith("err 0  box 97 %")
    assert rows["  CPU per 1,000 gateway bets: box"] == 3.9
    assert rows["  CPU per 1,000 gateway bets: load generator"] == 0.3
    # A file written before the figure existed still makes a table.
    old = {k: v for k, v in step.items() if k != "box"}
    rows = {name: value for name, _unit, value, _ratio in rows_of({"gateway": {"steps": [old]}})}
    assert rows["gateway open-loop 500/s: achieved, p50/p99/max, errors"].endswith("err 0")


def test_a_process_figure_counts_its_children():
    """The gateway runs CRASH_GATEWAY_PROCESSES - 1 of its processes as children: one figure."""
    spin = "import time\nt = time.process_time() + 0.6\nwhile time.process_time() < t: pass\ninput()"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys\n"
                               f"child = subprocess.Popen([sys.executable, '-c', {spin!r}], stdin=sys.stdin)\n"
                               "child.wait()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            pids, cpu = tree_cpu(parent.pid)
            if len(pids) == 2 and cpu >= 0.6 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(pids) == 2 and pids[0] == parent.pid
        assert cpu - cpu_seconds(parent.pid) >= 0.55     # the child's spin, not the parent's
    finally:
        parent.communicate(b"\n", timeout=20)


def test_a_step_waits_for_a_quiet_machine_but_not_for_ever():
    from streams.bench.watch import quiet_machine

    started = time.monotonic()
    busy = asyncio.run(quiet_machine(share=1.0, timeout_s=30, interval_s=0.2))
    assert 0 <= busy <= 1 and time.monotonic() - started < 5      # quiet enough at once
    started = time.monotonic()
    asyncio.run(quiet_machine(share=-1.0, timeout_s=1.0, interval_s=0.2))     # never quiet enough
    assert 1.0 <= time.monotonic() - started < 10


# ------------------------------------------------------------------ the floor: a bet at the bare price

BASELINE = {"per_s": 15_000, "cpu_us_per_msg": 50.0, "broker_cpu_us_per_msg": 30.0,
            "mysql": {"bets": 20_000, "rows": 40_000, "batch": 1000, "rows_per_s": 12_000,
                      "cpu_us_per_row": 45.0, "server_cpu_us_per_row": 40.0,
                      "tables": {"bet": {"rows": 20_000, "rows_per_s": 30_000, "cpu_us_per_row": 12.0,
                                         "server_cpu_us_per_row": 16.0},
                                 "event_log": {"rows": 20_000, "rows_per_s": 28_000, "cpu_us_per_row": 10.0,
                                               "server_cpu_us_per_row": 24.0}}}}


def test_the_floor_prices_a_bets_messages_and_rows_at_the_bare_baselines():
    from streams.bench.stats import floor
    from streams.bench.watch import per_bet

    before = {"kafka_messages": {"game.command": 100, "orders-changelog": 0},
              "mysql_rows": {"bet": 10, "event_log": 10, "channel": 1}}
    after = {"kafka_messages": {"game.command": 1100, "orders-changelog": 1000, "game.reply": 1000},
             "mysql_rows": {"bet": 1010, "event_log": 2010, "channel": 1}}
    written = per_bet(before, after, 1000)
    assert written["kafka_messages"] == {"game.command": 1.0, "orders-changelog": 1.0, "game.reply": 1.0}
    assert written["mysql_rows"] == {"event_log": 2.0, "bet": 1.0}         # the largest first; no "channel"
    assert written["kafka_messages_total"] == 3.0 and written["mysql_rows_total"] == 3.0

    f = floor(written, BASELINE, BASELINE["mysql"], cores=2, box_ms_per_bet=0.51)
    # Each table's rows at its own price: two event-log rows at 34 µs, a bet row at 28 µs.
    assert f["kafka_us_per_bet"] == 3 * 80 and f["mysql_us_per_bet"] == 2 * 34 + 28 and f["us_per_bet"] == 336
    assert f["ceiling_bets_per_s"] == round(2e6 / 336)            # two cores' worth of 336 µs bets
    assert f["pipeline_us_per_bet"] == 510 and f["floor_share_of_pipeline"] == round(336 / 510, 3)
    # A table the bare writer did not write is priced at its mean row.
    written["mysql_rows"]["jackpot_award"] = 1.0
    assert floor(written, BASELINE, BASELINE["mysql"], 2, None)["mysql_us_per_bet"] == 2 * 34 + 28 + 85
    del written["mysql_rows"]["jackpot_award"]
    # A run without the MySQL baseline (or the broker's CPU) has no floor rather than a wrong one.
    assert floor(written, BASELINE, {}, cores=2, box_ms_per_bet=0.51) is None
    assert floor(written, {**BASELINE, "broker_cpu_us_per_msg": None}, BASELINE["mysql"], 2, 0.51) is None


def test_the_table_shows_the_floor_and_an_older_file_still_prints():
    from streams.bench.cli import floor_of

    results = {"machine": {"cores": 2}, "baseline": BASELINE, "sustained": {
        "decisions_per_s": 2000, "cpu_s_per_1000_bets": {"box": 0.9},
        "written_per_bet": {"kafka_messages": {}, "mysql_rows": {"bet": 1.0, "event_log": 1.0, "other": 2.0},
                            "kafka_messages_total": 8.0, "mysql_rows_total": 4.0}}}
    results["floor"] = floor_of(results)
    rows = {name: value for name, _unit, value, _ratio in rows_of(results)}
    assert rows["  CPU per message: client + broker"] == "50.0 + 30.0"
    assert rows["bare aiomysql: a bet's sink rows, 1000 bets a transaction"] == 12_000
    assert rows["  bet: rows/s, CPU per row client + MariaDB"] == "30000/s  12.0 + 16.0"
    assert rows["  written per bet: Kafka messages / MySQL rows"] == "8.0 / 4.0"
    assert rows["floor: a bet's messages and rows at the bare price"] == "872 (Kafka 640 + MySQL 232)"
    assert rows["  the floor's ceiling on 2 cores"] == round(2e6 / 872)
    assert rows["  the pipeline's box CPU per bet"] == 900
    # A file from before the floor existed: the same table without those lines.
    old = {"baseline": {"per_s": 15_000, "cpu_us_per_msg": 50.0}, "sustained": {"decisions_per_s": 2000}}
    names = [name for name, *_ in rows_of(old)]
    assert names[0] == "bare aiokafka consume->produce" and not [n for n in names if "floor" in n or "aiomysql" in n]


def test_the_bare_mysql_writer_writes_a_bets_sink_rows_and_leaves_nothing(base_settings, tmp_path):
    from sqlalchemy import text

    from sql.db import make_engine

    out = tmp_path / "mysql.json"
    subprocess.run([sys.executable, "-W", "ignore", "-m", "streams.bench.bare", "mysql", "--n", "1500",
                    "--batch", "1000", "--db-url", base_settings.db_url, "--out", str(out)], check=True, timeout=120)
    tables = json.loads(out.read_text())["tables"]
    rows = {table: figures["rows"] for table, figures in tables.items()}
    # A bet's rows: its event-log row (and the three contribution batches'), its row, its first
    # status, its contribution to each of three pools.
    assert rows == {"event_log": 1500 + 3 * 2, "bet": 1500, "bet_status_history": 1500,
                    "jackpot_contributions": 3 * 1500}
    for figures in tables.values():
        assert figures["cpu_s"] >= 0 and figures["server_cpu_s"] is not None and figures["elapsed_s"] > 0

    async def leftovers() -> list[str]:
        engine = make_engine(base_settings.db_url)
        async with engine.connect() as conn:
            names = [r[0] for r in await conn.execute(text("SHOW TABLES LIKE 'bare\\\\_%'"))]
        await engine.dispose()
        return names
    assert asyncio.run(leftovers()) == []
