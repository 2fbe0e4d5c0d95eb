"""crash-bench's search for the highest offered rate that meets a latency bound."""
import asyncio

from streams.bench.stats import next_rate, search_rates


def search(capacity: int, ladder: list[int], overload: int | None = None) -> tuple[int | None, list[int]]:
    """Run the bench's search against a system that meets the bound up to `capacity` (and is far
    over capacity from `overload` on); the highest rate found and the rates tried after the ladder."""
    tried: list[int] = []

    async def step(rate: int) -> dict:
        tried.append(rate)
        return {"offered_per_s": rate}

    steps, best = asyncio.run(search_rates(
        ladder, step, meets=lambda step: step["offered_per_s"] <= capacity,
        far_over=lambda step: overload is not None and step["offered_per_s"] >= overload))
    assert [step["offered_per_s"] for step in steps] == sorted(tried)
    ladder_tried = [rate for rate in tried if rate in ladder]
    return best, tried[len(ladder_tried):]


def test_every_rate_failing_searches_below_the_ladder():
    best, tried = search(capacity=300, ladder=[500, 1000, 2000])
    assert tried == [250, 375, 300]
    assert best == 300


def test_a_gap_in_the_ladder_is_narrowed():
    best, tried = search(capacity=1400, ladder=[500, 1000, 2000])
    assert tried == [1500, 1250]
    assert best == 1250


def test_a_rate_far_over_capacity_ends_the_ladder():
    best, tried = search(capacity=300, ladder=[250, 500, 1000, 2000], overload=500)
    assert tried == [375, 300]
    assert best == 300


def test_the_top_of_the_ladder_passing_needs_no_search():
    assert next_rate({500: True, 1000: True}) is None


def test_a_close_pair_needs_no_search():
    assert next_rate({450: True, 500: False}) is None


def test_nothing_below_the_smallest_rate():
    assert next_rate({40: False}) is None     # 20/s is below the smallest step
    assert next_rate({60: False}) == 25
