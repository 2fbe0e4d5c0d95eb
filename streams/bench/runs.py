"""The benchmark's measurements. Each returns a dict of figures; `Run` holds what they share: the
deployments, the load processes they start, the accepted bets to find in MySQL at the end. What a
phase follows and waits for is in watch.py, the arithmetic over its figures in stats.py."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.bench.deploy import (
    REPO,
    Deployment,
    Proc,
    box_busy,
    box_cpu,
    free_port,
    infra_pids,
    tree_cpu,
    wait_for,
)
from streams.bench.stats import latency_figures, per_1000, quantile, search_rates, steady_rate
from streams.bench.watch import (
    JackpotCounter,
    TickFollower,
    at_least,
    in_state,
    jackpot_live,
    newer_term,
    per_bet,
    pre_start,
    quiet_machine,
    traffic,
)

__all__ = ["Run", "CHANNEL_CONFIG"]


def _us(cpu_s: float | None, n: int) -> float | None:
    """CPU microseconds per item (None: the process's CPU could not be read)."""
    return None if cpu_s is None or not n else round(cpu_s / n * 1e6, 1)

# Long betting windows (10 minutes, the most a config allows: every phase gets a fresh channel) so
# that the throughput phases never run into a closed window; a term that must fly is started by
# hand (the operator's manual start). Limits far above what the load places.
CHANNEL_CONFIG: dict[str, Any] = {
    "betting_ms": 600_000, "starting_ms": 500, "cooldown_ms": 300, "grace_ms": 150,
    "growth_per_ms": "0.00004", "max_multiple_x100": 100_000, "chain_length": 1000,
    "operator_group": "bench",
    "currencies": {"EUR": {"min_bet": 10, "max_bet": 100_000, "max_bets_per_user": 1000, "max_win": 10**12,
                           "max_payout_per_term": 10**15}},
}


@dataclass
class Run:
    args: Any
    base: Any                                   # Settings of the test profile
    main: Deployment | None = None
    accepted: dict[str, set[tuple[str, str]]] = field(default_factory=dict)   # database -> {(channel, order)}
    errors: list[str] = field(default_factory=list)
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="crash-bench-")))

    # ---------------------------------------------------------- helpers

    def _load_args(self, dep: Deployment, mode: str, out: Path, **options: Any) -> list[str]:
        args = [sys.executable, "-m", "streams.bench.load", mode, "--out", str(out)]
        for name, value in options.items():
            if value is None or value is False:
                continue
            args += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
        return args

    async def load(self, dep: Deployment, mode: str, procs: int = 1, timeout: float = 600,
                   **options: Any) -> dict[str, Any]:
        """Run `procs` load processes with the same options (rates split among them); merged result."""
        outs, started = [], []
        for i in range(procs):
            out = self.work / f"load-{uuid.uuid4().hex[:8]}.json"
            opts = dict(options)
            if "rate" in opts and procs > 1:
                opts["rate"] = opts["rate"] / procs
            if procs > 1:
                opts["tag"] = f"{opts.get('tag', 'bench')}{i}"
            proc = dep.start(f"load-{mode}-{uuid.uuid4().hex[:4]}", self._load_args(dep, mode, out, **opts))
            outs.append(out)
            started.append(proc)
        for proc in started:
            code = await proc.wait(timeout)
            if code:
                raise RuntimeError(f"{proc.name} failed ({code}):\n{proc.tail()}")
        results = [json.loads(out.read_text()) for out in outs]
        merged: dict[str, Any] = {"outcomes": {}, "latencies_ms": [], "accepted": []}
        for r in results:
            for k, v in r["outcomes"].items():
                merged["outcomes"][k] = merged["outcomes"].get(k, 0) + v
            merged["latencies_ms"] += r["latencies_ms"]
            merged["accepted"] += r["accepted"]
            for k in ("sent", "answered", "unanswered", "cpu_s"):
                merged[k] = merged.get(k, 0) + r.get(k, 0)
            merged["elapsed_s"] = max(merged.get("elapsed_s", 0), r.get("elapsed_s", 0))
            merged["send_s"] = max(merged.get("send_s", 0), r.get("send_s", 0))
            if "timeline" in r:
                merged["timeline"] = r["timeline"]
        for proc in started:
            dep.procs.pop(proc.name, None)
        if options.get("kind", "bet") == "bet":      # cashouts and contributions are not new bets
            self.remember(dep, merged["accepted"])
        return merged

    def remember(self, dep: Deployment, accepted: list[list[str]]) -> None:
        self.accepted.setdefault(dep.database, set()).update((a[0], a[1]) for a in accepted)

    @staticmethod
    def cpu(dep: Deployment) -> dict[str, tuple[tuple[int, ...], float]]:
        """{process: (pids, CPU seconds so far)} of the pipeline's and the servers' processes, each
        with its children (the gateway's CRASH_GATEWAY_PROCESSES are one figure)."""
        pids = {name: proc.pid for name, proc in dep.procs.items() if not name.startswith("load-") and proc.alive}
        pids.update(infra_pids())
        return {name: tree for name, pid in pids.items() if (tree := tree_cpu(pid)) is not None}

    @staticmethod
    def cpu_delta(before: dict[str, tuple[tuple[int, ...], float]],
                  after: dict[str, tuple[tuple[int, ...], float]]) -> dict[str, float]:
        # A process restarted in between (other pids: a test stopping the shared Redis, say)
        # has no figure rather than a meaningless difference.
        return {k: round(after[k][1] - before[k][1], 2) for k in after if k in before and before[k][0] == after[k][0]}

    async def new_channel(self, dep: Deployment, name: str, **overrides: Any) -> str:
        return await dep.create_channel(f"{dep.name}-{name}", {**CHANNEL_CONFIG, **overrides})

    def profile(self, dep: Deployment, seconds: float, phase: str) -> list[tuple[str, Path, Any]]:
        """With --profile: py-spy samples the pipeline's processes for `seconds` (raw stacks)."""
        if not self.args.profile:
            return []
        started = []
        for name, proc in dep.procs.items():
            if name.startswith(("worker", "gateway", "sink")) and proc.alive:
                out = REPO / "var" / "bench" / "profiles" / f"{phase}-{name}-{time.strftime('%H%M%S')}.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(proc.pid),
                                        "-d", str(int(seconds)), "-r", "97", "--format", "raw", "-o", str(out),
                                        "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started.append((name, out, spy))
        return started

    async def profile_summaries(self, profiles: list[tuple[str, Path, Any]]) -> dict[str, Any]:
        from streams.bench.report import summarize_profile
        out = {}
        for name, path, spy in profiles:
            while spy.poll() is None:
                await asyncio.sleep(0.5)
            out[name] = {"file": str(path), **summarize_profile(path)}
        return out

    # ---------------------------------------------------------- 1. the bare baseline

    async def kafka_baseline(self) -> dict[str, Any]:
        assert self.main is not None
        out = self.work / "baseline.json"
        proc = self.main.start("bare-kafka", [sys.executable, "-m", "streams.bench.bare", "kafka",
                                              "--n", str(self.args.baseline_messages), "--out", str(out)])
        if await proc.wait(600):
            raise RuntimeError(f"bare Kafka loop failed:\n{proc.tail()}")
        self.main.procs.pop(proc.name)
        result = json.loads(out.read_text())
        n, produced = result["messages"], result["produce_only"]
        return {"messages": n, "per_s": round(result["per_s"]),
                "cpu_us_per_msg": _us(result["cpu_s"], n), "broker_cpu_us_per_msg": _us(result["broker_cpu_s"], n),
                "produce_only": {"cpu_us_per_msg": _us(produced["cpu_s"], n),
                                 "broker_cpu_us_per_msg": _us(produced["broker_cpu_s"], n)},
                "mysql": await self.mysql_baseline()}

    async def mysql_baseline(self) -> dict[str, Any]:
        """The sink's rows of a bet through bare aiomysql, in copies of the tables in the main database."""
        assert self.main is not None
        out = self.work / "baseline-mysql.json"
        proc = self.main.start("bare-mysql", [sys.executable, "-W", "ignore", "-m", "streams.bench.bare", "mysql",
                                              "--n", str(self.args.baseline_bets), "--db-url", self.main.db_url,
                                              "--out", str(out)])
        if await proc.wait(600):
            raise RuntimeError(f"bare MySQL writer failed:\n{proc.tail()}")
        self.main.procs.pop(proc.name)
        result = json.loads(out.read_text())
        tables = {table: {"rows": t["rows"], "rows_per_s": round(t["rows"] / t["elapsed_s"]),
                          "cpu_us_per_row": _us(t["cpu_s"], t["rows"]),
                          "server_cpu_us_per_row": _us(t["server_cpu_s"], t["rows"])}
                  for table, t in result["tables"].items()}
        rows = sum(t["rows"] for t in result["tables"].values())
        elapsed = sum(t["elapsed_s"] for t in result["tables"].values())
        server = [t["server_cpu_s"] for t in result["tables"].values()]
        return {"bets": result["bets"], "batch": result["batch"], "rows": rows, "rows_per_s": round(rows / elapsed),
                "cpu_us_per_row": _us(sum(t["cpu_s"] for t in result["tables"].values()), rows),
                "server_cpu_us_per_row": None if None in server else _us(sum(server), rows), "tables": tables}

    # ---------------------------------------------------------- 2. sustained decisions, MySQL, jackpots

    async def sustained(self, dep: Deployment, channels: list[str], seconds: float, window: int,
                        count_jackpot: bool = False) -> dict[str, Any]:
        placeholders = ",".join(f":c{i}" for i in range(len(channels)))
        params = {f"c{i}": c for i, c in enumerate(channels)}
        rows_sql = f"SELECT COUNT(*) AS n FROM bet WHERE channel_id IN ({placeholders})"
        rows0 = await dep.count(rows_sql, **params)
        samples: list[tuple[float, int]] = []
        contributions = JackpotCounter(dep) if count_jackpot else None
        if contributions is not None:
            await contributions.start()
        stop = asyncio.Event()

        async def sample_mysql() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter(), await dep.count(rows_sql, **params) - rows0))
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

        written0 = await traffic(dep)
        cpu0, box0 = self.cpu(dep), box_cpu()
        sampler = asyncio.create_task(sample_mysql())
        profiles = self.profile(dep, seconds, "sustained")
        t0 = time.perf_counter()
        load = asyncio.create_task(self.load(dep, "kafka", channel=",".join(channels), seconds=seconds,
                                             window=window, users=50_000, tag="p", drain_s=300))
        await asyncio.sleep(seconds)
        cpu1, box1 = self.cpu(dep), box_cpu()
        contributed = contributions.items if contributions is not None else 0
        result = await load
        t1 = time.perf_counter()
        stop.set()
        await sampler
        accepted = len(result["accepted"])
        refused = {k: v for k, v in result["outcomes"].items() if not k.startswith("accepted")}
        timeline = result.get("timeline", [])
        steady = steady_rate(timeline, seconds)
        in_time = max((n for t, n in timeline if t <= seconds), default=0)
        in_window = [n for t, n in samples if t <= t0 + seconds + 1]
        mysql_in_window = in_window[-1] if in_window else 0
        drained = await self.drain(dep, rows_sql, params, rows0 + accepted + sum(refused.values()))
        figures: dict[str, Any] = {
            "seconds": seconds, "window": window, "channels": len(channels), "sent": result["sent"],
            "accepted": accepted, "refused": refused, "unanswered": result["unanswered"],
            "decisions_per_s": round(in_time / seconds), "drain_after_s": round(t1 - t0 - seconds, 1),
            "decisions_per_s_steady": steady,
            "mysql_rows_per_s": round(mysql_in_window / seconds),
            "mysql_lag_at_end": result["answered"] - mysql_in_window,
            "mysql_drain_s": drained,
            "decision_latency_ms": latency_figures(result["latencies_ms"]),
            "cpu_s": self.cpu_delta(cpu0, cpu1), "load_cpu_s": round(result["cpu_s"], 2), "box": box_busy(box0, box1),
        }
        figures["cpu_s_per_1000_bets"] = per_1000(figures, in_time)
        if contributions is not None:
            figures["jackpot_contributions_in_window"] = contributed
            figures["jackpot_contributions_per_s"] = round(contributed / seconds)
            figures["jackpot_contributions_total"] = await contributions.stop()
        # After the drain (and the contributions' linger): every decision's messages and rows written.
        figures["written_per_bet"] = per_bet(written0, await traffic(dep), result["answered"])
        if profiles:
            figures["profiles"] = await self.profile_summaries(profiles)
        if result["unanswered"]:
            self.errors.append(f"sustained: {result['unanswered']} commands unanswered")
        return figures

    async def drain(self, dep: Deployment, rows_sql: str, params: dict[str, Any], expected: int,
                    timeout: float = 300) -> float | None:
        """Seconds until MySQL holds `expected` rows (None: it never did within the timeout)."""
        started = time.perf_counter()
        try:
            await wait_for(lambda: at_least(dep, rows_sql, params, expected), timeout, "the sink to drain", 0.5)
        except TimeoutError:
            return None
        return round(time.perf_counter() - started, 1)

    # ---------------------------------------------------------- 3. the gateway, open loop

    async def gateway_steps(self, dep: Deployment, rates: list[int], seconds: float) -> dict[str, Any]:
        """Open-loop steps at the offered `rates`, then up to REFINE_STEPS more between the
        highest rate whose p99 was within 150 ms and the lowest that was not."""
        steps, highest = await search_rates(
            rates, lambda rate: self.gateway_step(dep, rate, seconds),
            meets=lambda step: step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] <= 150,
            far_over=lambda step: step["errors"] > 0.2 * step["sent"] or (step["p99_ms"] or 0) > 5000)
        return {"steps": steps, "highest_rate_p99_le_150ms": highest}

    async def gateway_step(self, dep: Deployment, rate: int, seconds: float) -> dict[str, Any]:
        channel = await self.new_channel(dep, f"g{rate}")
        busy_before = await quiet_machine()
        cpu0, box0 = self.cpu(dep), box_cpu()
        profiles = self.profile(dep, seconds, f"gateway{rate}")
        result = await self.load(dep, "http", procs=2 if rate >= 2000 else 1, kind="bet", port=dep.gateway_port,
                                 channel=channel, rate=rate, seconds=seconds, tag=f"g{rate}", users=50_000,
                                 uvloop=True)
        cpu1, box1 = self.cpu(dep), box_cpu()
        accepted = len(result["accepted"])
        step = {"offered_per_s": rate, "sent": result["sent"],
                "achieved_per_s": round(accepted / max(1e-9, result["send_s"])),
                **latency_figures(result["latencies_ms"]), "errors": result["sent"] - accepted,
                "outcomes": {k: v for k, v in result["outcomes"].items() if not k.startswith("200")},
                "cpu_s": self.cpu_delta(cpu0, cpu1), "load_cpu_s": round(result["cpu_s"], 2),
                "box": {**box_busy(box0, box1), "busy_share_before": busy_before}}
        step["cpu_s_per_1000_bets"] = per_1000(step, accepted)
        if profiles:
            step["profiles"] = await self.profile_summaries(profiles)
        await asyncio.sleep(2)
        return step

    # ---------------------------------------------------------- 4./5. a flying term: cashouts, ticks

    async def flying_term(self, dep: Deployment, channel: str, min_flight_s: float, bets: int,
                          auto_targets: bool) -> dict[str, Any]:
        """Find a term of `channel` whose committed crash point leaves at least `min_flight_s` of flight
        (voiding the others), put `bets` bets in it, start it by hand; returns the term and its bets."""
        from streams import fairness, money
        from tables.chain_store import ChainStore
        store = ChainStore(self.base.secret_db_url)
        chain = await store.get(channel, 1)
        await store.close()
        growth = float(CHANNEL_CONFIG["growth_per_ms"])
        while True:
            term = await wait_for(lambda: pre_start(dep, channel), 60, f"a term of {channel} taking bets", 0.2)
            crash = fairness.crash_point_x100(chain.hash_at(term["chain_index"]), chain.salt, 100,
                                              CHANNEL_CONFIG["max_multiple_x100"])
            flight_s = money.ms_to_reach(crash, growth) / 1000
            if flight_s >= min_flight_s:
                break
            status, body = await dep.ops("POST", f"/ops/channels/{channel}/abort", {"reason": "bench: too short"})
            seq = term["seq"]
            await wait_for(lambda s=seq: newer_term(dep, channel, s), 60, "the next term", 0.2)
        placed = await self.load(dep, "kafka", channel=channel, count=bets, seconds=600, window=2000, users=bets,
                                 tag="f", auto=(crash - 1) if auto_targets else None, spread=auto_targets)
        if len(placed["accepted"]) != bets:
            raise RuntimeError(f"only {len(placed['accepted'])} of {bets} bets accepted: {placed['outcomes']}")
        # The flight is what is measured, not the sink still writing the bets just placed (or an
        # earlier phase's): in a whole quick run the ticks phase's term took off while the box was
        # still busy with both.
        busy_before = await quiet_machine()
        status, body = await dep.ops("POST", f"/ops/channels/{channel}/start", {})
        flying = await wait_for(lambda: in_state(dep, term["term_id"], "flying"), 60, "the term to fly", 0.05)
        return {"term": flying, "crash_x100": crash, "flight_s": flight_s, "bets": placed["accepted"],
                "busy_share_before": busy_before}

    async def cashouts(self, dep: Deployment, channel: str, background_channel: str, rate: int, seconds: float,
                       background_rate: int) -> dict[str, Any]:
        count = int(rate * seconds)
        term = await self.flying_term(dep, channel, seconds + 8, count, auto_targets=False)
        orders = self.work / "orders.json"
        orders.write_text(json.dumps([[order, user] for _, order, user in term["bets"]]))
        background = asyncio.create_task(self.load(
            dep, "http", kind="bet", port=dep.gateway_port, channel=background_channel, rate=background_rate,
            seconds=seconds + 2, tag="cb", users=50_000, uvloop=True))
        await asyncio.sleep(1)
        result = await self.load(dep, "http", kind="cashout", port=dep.gateway_port, channel=channel, rate=rate,
                                 seconds=seconds, orders=str(orders), uvloop=True)
        bg = await background
        paid = sum(v for k, v in result["outcomes"].items() if k.startswith("200"))
        return {"offered_per_s": rate, "answered": result["answered"], "accepted": paid,
                **latency_figures(result["latencies_ms"]),
                "errors": result["sent"] - result["answered"] + sum(
                    v for k, v in result["outcomes"].items() if not k.startswith(("200", "409"))),
                "outcomes": result["outcomes"],
                "background_bets_per_s": round(len(bg["accepted"]) / max(1e-9, bg["send_s"])),
                "background_p99_ms": quantile(bg["latencies_ms"], 0.99),
                "box": {"busy_share_before": term["busy_share_before"]}}

    async def ticks(self, dep: Deployment, channel: str, autos: int, seconds: float) -> dict[str, Any]:
        follower = TickFollower(dep, channel)
        await follower.start()
        term = await self.flying_term(dep, channel, seconds, autos, auto_targets=True)
        profiles = self.profile(dep, seconds, "ticks")
        await asyncio.sleep(seconds)
        ticks = await follower.stop(term["term"]["term_id"])
        gaps = [b[0] - a[0] for a, b in zip(ticks, ticks[1:], strict=False)]
        nominal = 100.0
        jitter = [abs(g - nominal) for g in gaps]
        lateness = [recv - ts for recv, ts in ticks]
        cashed = await dep.count("SELECT COUNT(*) AS n FROM bet WHERE term_id = :t AND status = 'cashed_out'",
                                 t=term["term"]["term_id"])
        return {"autos": autos, "ticks": len(ticks), "jitter_p50_ms": quantile(jitter, 0.5),
                "jitter_p99_ms": quantile(jitter, 0.99), "jitter_max_ms": max(jitter) if jitter else None,
                "late_p99_ms": quantile(lateness, 0.99), "cashed_out_in_mysql_so_far": cashed,
                "box": {"busy_share_before": term["busy_share_before"]},
                **({"profiles": await self.profile_summaries(profiles)} if profiles else {})}

    # ---------------------------------------------------------- 6. 1 worker vs 2

    async def scaling(self, seconds: float) -> dict[str, Any]:
        """As deployed (each worker keeps a standby copy of the other's tables), and without
        standbys: on two shared cores a standby's changelog replay is a large share of the work."""
        figures = await self.scaling_with(seconds, "scale", {})
        figures["without_standby"] = await self.scaling_with(seconds, "scale-nostandby",
                                                             {"CRASH_STANDBY_REPLICAS": "0"})
        return figures

    async def scaling_with(self, seconds: float, name: str, env: dict[str, str]) -> dict[str, Any]:
        from aiokafka.partitioner import DefaultPartitioner
        dep = Deployment(name, self.base, self.work / name, extra_env=env)
        try:
            await dep.open()
            await dep.start_worker(1)
            dep.start_sink()
            await dep.start_ops()
            partitions = list(range(self.base.partitions))
            names: dict[int, str] = {}
            i = 0
            while len(names) < len(partitions):
                cid = f"{dep.name}-w{i}"
                names.setdefault(DefaultPartitioner()(cid.encode(), partitions, partitions), cid)
                i += 1
            channels = [await dep.create_channel(cid, CHANNEL_CONFIG) for cid in names.values()]
            one = await self.sustained(dep, channels, seconds, window=4000)
            await dep.start_worker(2)
            await self.settle_rebalance(dep, channels, workers=2)
            two = await self.sustained(dep, channels, seconds, window=4000)
            return {"channels": len(channels), "one_worker_per_s": one["decisions_per_s"],
                    "two_workers_per_s": two["decisions_per_s"],
                    "ratio": round(two["decisions_per_s"] / max(1, one["decisions_per_s"]), 2),
                    "one_mysql_rows_per_s": one["mysql_rows_per_s"], "two_mysql_rows_per_s": two["mysql_rows_per_s"],
                    "cpu_one": one["cpu_s"], "cpu_two": two["cpu_s"]}
        finally:
            await self.check_mysql(dep)
            await dep.close()

    async def settle_rebalance(self, dep: Deployment, channels: list[str], workers: int) -> None:
        """Until the group is stable with `workers` members and every channel answers a bet again
        (the new worker's partitions are recovered). Without the first wait, the probe was answered
        by the first worker before the second had even joined, and the two-worker window measured
        the second one's start and the rebalance."""
        async def joined() -> bool:
            return await dep.worker_group() == ("Stable", workers)
        await wait_for(joined, 120, f"{workers} workers in a stable group", every=0.5)

        async def all_answer() -> bool:
            result = await self.load(dep, "kafka", channel=",".join(channels), count=len(channels) * 5,
                                     seconds=30, window=100, tag="probe", drain_s=5)
            return result["answered"] == len(channels) * 5
        await wait_for(all_answer, 240, "both workers to own their channels", every=2)

    # ---------------------------------------------------------- 7. jackpots

    async def create_jackpots(self, dep: Deployment, channel: str) -> list[str]:
        ids = [f"{dep.name}-local", f"{dep.name}-shared", f"{dep.name}-mega"]
        definitions = [
            {"jackpot_id": ids[0], "tier": "local", "channel_id": channel},
            {"jackpot_id": ids[1], "tier": "shared", "operator_group": CHANNEL_CONFIG["operator_group"]},
            {"jackpot_id": ids[2], "tier": "mega"},
        ]
        for definition in definitions:
            status, body = await dep.ops("POST", "/ops/jackpots", {"definition": {
                **definition, "currency": "EUR", "rate_bps": 100, "seed": 1000, "cap": 10**13, "trigger": "external"}})
            if status != 202:
                raise RuntimeError(f"jackpot not created: {status} {body}")
        for jackpot_id in ids:
            await wait_for(lambda j=jackpot_id: jackpot_live(dep, j), 60, f"jackpot {jackpot_id}", 0.2)
        # The channel's config lists them from its next term: void the current one.
        term = await dep.live_term(channel)
        await dep.ops("POST", f"/ops/channels/{channel}/abort", {"reason": "bench: feed the jackpots"})
        await wait_for(lambda: newer_term(dep, channel, term["seq"]), 60, "the next term", 0.2)
        return ids

    async def contribute_api(self, dep: Deployment, jackpot_id: str, rates: list[int], seconds: float
                             ) -> dict[str, Any]:
        port = free_port()
        bare = dep.start("bare-http", [sys.executable, "-m", "streams.bench.bare", "http", "--port", str(port)])
        await dep.wait_http(f"http://127.0.0.1:{port}/v1/health", bare)
        try:
            steps, highest = await search_rates(
                rates, lambda rate: self.contribute_step(dep, jackpot_id, port, rate, seconds),
                meets=lambda step: step["api"]["errors"] == 0 and (step["api"]["p99_ms"] or 1e9) <= 50,
                far_over=lambda step: step["api"]["errors"] > 0.2 * step["offered_per_s"] * seconds)
        finally:
            bare.stop()
            dep.procs.pop("bare-http", None)
        return {"steps": steps, "highest_rate_p99_le_50ms": highest}

    async def contribute_step(self, dep: Deployment, jackpot_id: str, bare_port: int, rate: int,
                              seconds: float) -> dict[str, Any]:
        """The same offered rate against the bare handler, then against the jackpot API."""
        step: dict[str, Any] = {"offered_per_s": rate}
        for name, target_port in (("bare", bare_port), ("api", dep.gateway_port)):
            busy_before = await quiet_machine()
            result = await self.load(dep, "http", kind="contribute", port=target_port, jackpot=jackpot_id,
                                     rate=rate, seconds=seconds, tag=f"j{name}{rate}", uvloop=True, channel="")
            ok = sum(v for k, v in result["outcomes"].items() if k.startswith("200"))
            step[name] = {"achieved_per_s": round(ok / max(1e-9, result["send_s"])),
                          **latency_figures(result["latencies_ms"]), "errors": result["sent"] - ok,
                          "box": {"busy_share_before": busy_before}}
            await asyncio.sleep(1)
        return step

    # ---------------------------------------------------------- 8. WebSocket fan-out (the push gateway's own script)

    async def fanout(self, clients: int, seconds: float) -> dict[str, Any]:
        script = REPO / "tests" / "bench_push.py"
        if not script.exists() or not (REPO / "web" / "push.py").exists():
            return {"skipped": "no push gateway benchmark (tests/bench_push.py) in this tree"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), "--clients", str(clients), "--seconds", str(seconds),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(REPO))
        output, _ = await asyncio.wait_for(proc.communicate(), seconds + 300)
        text = output.decode(errors="replace")
        figures: dict[str, Any] = {"clients": clients, "seconds": seconds, "exit": proc.returncode}
        for line in text.splitlines():
            if line.startswith("push latency") and "oldest" in line:
                import re
                match = re.search(r"p50 (\d+) ms, p99 (\d+) ms", line)
                if match:
                    figures.update(p50_ms=int(match[1]), p99_ms=int(match[2]))
            if line.startswith("clients:"):
                figures["clients_line"] = line
        if "p99_ms" not in figures:
            figures["output_tail"] = text[-1500:]
        return figures

    # ---------------------------------------------------------- the final check

    async def check_mysql(self, dep: Deployment) -> None:
        """Every accepted bet of the deployment is in MySQL (waits for the sink first)."""
        wanted = self.accepted.get(dep.database, set())
        if not wanted:
            return

        async def stored() -> set[tuple[str, str]]:
            rows = await dep.rows("SELECT channel_id, api_order_no FROM bet WHERE status <> 'rejected'")
            return wanted - {(r["channel_id"], r["api_order_no"]) for r in rows}
        missing = await stored()
        deadline = time.monotonic() + 300
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(1)
            missing = await stored()
        if missing:
            self.errors.append(f"{len(missing)} accepted bets are not in MySQL ({dep.name}),"
                               f" e.g. {sorted(missing)[:3]}")


__all__ += ["Proc"]
