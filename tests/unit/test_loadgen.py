"""The load generator's pure parts: arrival gaps, percentiles, per-second series."""

from __future__ import annotations

import random
import statistics

import pytest

from load.loadgen import Record, interarrival, percentile, tally, time_series


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 2.0, 4.0])
def test_gaps_keep_the_rate_and_have_the_asked_spread(burstiness: float) -> None:
    rng = random.Random(7)
    gaps = [interarrival(rng, 200.0, burstiness) for _ in range(100_000)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / 200, rel=0.03)
    assert statistics.pstdev(gaps) / mean == pytest.approx(burstiness, rel=0.05)


def test_poisson_gaps_are_the_exponential_draws_as_before() -> None:
    """Seeded runs of the existing benchmarks keep their arrival times."""
    a, b = random.Random(3), random.Random(3)
    assert [interarrival(a, 50.0) for _ in range(5)] == [b.expovariate(50.0) for _ in range(5)]


@pytest.mark.parametrize(
    ("p", "expected"),
    [(50, 50), (90, 90), (99, 99), (99.9, 100), (100, 100), (0.5, 1)],
)
def test_nearest_rank_percentile(p: float, expected: float) -> None:
    assert percentile([float(x) for x in range(1, 101)], p) == expected


def test_percentile_of_nothing_is_zero() -> None:
    assert percentile([], 99) == 0.0


RECORDS = [
    Record(0.1, "ok", 0.010, "r0"),
    Record(0.9, "ok", 0.030, "r1"),
    Record(1.5, "http_500", None, "r0"),
    Record(1.7, "timeout"),
    Record(2.2, "ok", 0.020, "r1"),
    Record(3.4, "ok", 0.040, "r0"),  # due after the last second: counted in it
]


def test_tally_counts_outcomes_latencies_and_replicas() -> None:
    t = tally(RECORDS)
    assert (t["arrivals"], t["ok"]) == (6, 4)
    assert t["errors"] == {"http_500": 1, "timeout": 1}
    assert t["replicas"] == {"r0": 3, "r1": 2}
    assert t["latency_ms"]["p50"] == pytest.approx(20.0)
    assert t["latency_ms"]["max"] == pytest.approx(40.0)


def test_time_series_buckets_by_the_second_a_request_was_due() -> None:
    series = time_series(RECORDS, 3)
    assert [row["t"] for row in series] == [0, 1, 2]
    assert [row["arrivals"] for row in series] == [2, 2, 2]
    assert [row["ok"] for row in series] == [2, 0, 2]
    assert series[1]["errors"] == {"http_500": 1, "timeout": 1}
    assert series[0]["latency_ms"]["p99"] == pytest.approx(30.0)
    assert series[2]["replicas"] == {"r0": 1, "r1": 1}
