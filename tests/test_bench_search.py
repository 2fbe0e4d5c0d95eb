"""crash-bench's search for the highest offered rate that meets a latency bound."""
from streams.bench.runs import next_rate


def search(capacity: int, ladder: list[int], steps: int = 3) -> tuple[int | None, list[int]]:
    """Run the bench's search against a system that meets the bound up to `capacity`."""
    met = {rate: rate <= capacity for rate in ladder}
    tried = []
    for _ in range(steps):
        rate = next_rate(met)
        if rate is None:
            break
        tried.append(rate)
        met[rate] = rate <= capacity
    return max((r for r, ok in met.items() if ok), default=None), tried


def test_every_rate_failing_searches_below_the_ladder():
    best, tried = search(capacity=300, ladder=[500, 1000, 2000])
    assert tried == [250, 375, 300]
    assert best == 300


def test_a_gap_in_the_ladder_is_narrowed():
    best, tried = search(capacity=1400, ladder=[500, 1000, 2000])
    assert tried == [1500, 1250]
    assert best == 1250


def test_the_top_of_the_ladder_passing_needs_no_search():
    assert next_rate({500: True, 1000: True}) is None


def test_a_close_pair_needs_no_search():
    assert next_rate({450: True, 500: False}) is None


def test_nothing_below_the_smallest_rate():
    assert next_rate({40: False}) is None     # 20/s is below the smallest step
    assert next_rate({60: False}) == 25
