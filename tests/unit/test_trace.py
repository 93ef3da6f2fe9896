"""The autoscale-trace benchmark's pure parts: the trace, the lower bound, and a short
simulated run of its contestants."""

from __future__ import annotations

import pytest

from load.bench import trace


def test_the_trace_is_the_seed_s() -> None:
    app = trace.APPS[0]
    assert trace.requests(app, 1, 3600) == trace.requests(app, 1, 3600)
    assert trace.requests(app, 1, 3600) != trace.requests(app, 2, 3600)
    gaps = [b[0] - a[0] for a, b in zip(trace.requests(app, 1, 3600),
                                        trace.requests(app, 1, 3600)[1:], strict=False)]  # fmt: skip
    assert all(100 < g < 140 for g in gaps)  # a timer: every 120 s, give or take


def test_the_lower_bound_counts_replicas_at_the_target() -> None:
    # 3 requests of 10 s at once need ceil(3 / 3) = 1 replica for 10 s; a 4th, for 5 of
    # those seconds, makes it 2 for 5 s
    reqs = [(0.0, 10.0)] * 3 + [(2.0, 5.0)]
    total, per_s = trace.lower_bound(reqs, 20.0)
    assert total == pytest.approx(10 + 5)
    assert per_s[0] == 1 and per_s[3] == 2 and per_s[15] == 0


def test_a_short_run_of_every_contestant() -> None:
    result = trace.run(1, ["gateway", "gateway-notiers", "kpa", "fixed-60"], duration_s=1800)
    rows = result["rows"]
    bound = rows["lower-bound"]["replica_s"]
    for name in ("gateway", "gateway-notiers", "kpa", "fixed-60"):
        row = rows[name]
        assert 0 < row["slo"] <= 1 and row["replica_s"] >= bound
        assert set(row["pools"]) == {app.name for app in trace.APPS}
    assert rows["gateway-notiers"]["wakes"] == 0 and rows["gateway"]["held_s"] > 0
    assert "| gateway |" in trace.table(result)
