"""crash-bench's machine-wide CPU figure: what the per-process figures cannot show (the load
generator, the kernel's work for loopback traffic), so that a saturated box is seen as one."""
import asyncio
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
