"""RESULTS.md sections, tables and target verdicts of the benchmark suite."""

from __future__ import annotations

from typing import Any

import pytest

from load.bench.report import describe_run, replace_section, table, verdict
from load.bench.runner import phases
from load.bench.scenarios import SCENARIOS
from load.loadgen import Record, Summary

DOC = """# Load results

Hand-written intro.

<!-- bench:hetero:start -->
old table
<!-- bench:hetero:end -->

Hand-written diagnosis.
"""


def test_a_section_is_replaced_between_its_markers_only() -> None:
    text = replace_section(DOC, "hetero", "new table\n")
    assert "old table" not in text
    assert "<!-- bench:hetero:start -->\nnew table\n<!-- bench:hetero:end -->" in text
    assert text.startswith("# Load results\n\nHand-written intro.")
    assert text.endswith("Hand-written diagnosis.\n")


def test_a_new_section_is_appended_and_rewriting_it_is_idempotent() -> None:
    once = replace_section(DOC, "overload", "table")
    assert once.startswith(DOC.rstrip())
    assert once.endswith("<!-- bench:overload:start -->\ntable\n<!-- bench:overload:end -->\n")
    assert replace_section(once, "overload", "table") == once


def test_a_body_is_taken_literally() -> None:
    body = r"p99 \1 \g<0> $ (.*)"
    assert body in replace_section(DOC, "hetero", body)


def run(name: str, kind: str, p99: float, errors: int = 0, cpu_s: float = 1.0) -> dict[str, Any]:
    return {
        "contestant": name, "kind": kind, "ok": 1000, "ok_rps": 100.0, "elapsed_s": 10.0,
        "errors": {"http_500": errors} if errors else {}, "error_count": errors,
        "latency_ms": {"p50": 10.0, "p90": 11.0, "p99": p99, "p99.9": p99 + 1},
        "phases": [{"name": "all", "errors": {}, "latency_ms": {"p99": p99}, "replicas": {"r0": 1, "r1": 3}}],
        "cpu_s": {"proxy": cpu_s},
    }  # fmt: skip


def result(target: str | None, *runs: dict[str, Any]) -> dict[str, Any]:
    return {"target": target, "runs": list(runs), "phases": ["all"], "watch": True}


@pytest.mark.parametrize(("gateway_p99", "met"), [(25.0, True), (26.0, False)])
def test_the_p99_target_is_half_the_best_peer(gateway_p99: float, met: bool) -> None:
    r = result("p99", run("gateway-peak_ewma", "gateway", gateway_p99),
               run("haproxy-leastconn", "haproxy", 50.0), run("nginx-least_conn", "nginx", 60.0),
               run("gateway-round_robin", "gateway", 10.0))  # not a peer  # fmt: skip
    text = verdict(r)
    assert text is not None and "haproxy-leastconn" in text
    assert ("**met**" in text) == met


@pytest.mark.parametrize(("gateway_errors", "met"), [(3, True), (4, False)])
def test_the_errors_target_is_strictly_fewer_than_every_peer(
    gateway_errors: int, met: bool
) -> None:
    r = result("errors", run("gateway-peak_ewma", "gateway", 10, gateway_errors),
               run("haproxy-leastconn", "haproxy", 10, 4), run("nginx-least_conn", "nginx", 10, 900))  # fmt: skip
    assert ("**met**" in (verdict(r) or "")) == met


def test_throughput_is_a_ratio_to_the_best_haproxy() -> None:
    r = result("throughput", run("gateway-peak_ewma", "gateway", 5, cpu_s=2.0),
               run("haproxy-roundrobin", "haproxy", 5, cpu_s=0.5),
               run("haproxy-leastconn", "haproxy", 5, cpu_s=1.0))  # fmt: skip
    assert "**0.25**" in (verdict(r) or "")


def test_a_throughput_table_without_haproxy_has_no_ratio_column() -> None:
    lines = table(result("throughput", run("gateway-peak_ewma", "gateway", 5))).splitlines()
    assert "rps per core" in lines[0] and "x HAProxy" not in lines[0]  # --contestants
    assert "| 1000 |" in lines[2]


def test_no_verdict_without_the_gateway_or_a_target() -> None:
    assert verdict(result(None, run("gateway-peak_ewma", "gateway", 5))) is None
    assert verdict(result("p99", run("haproxy-leastconn", "haproxy", 5))) is None


def test_the_table_has_a_row_per_contestant_and_the_watched_share() -> None:
    r = result(
        "p99", run("gateway-peak_ewma", "gateway", 12.0), run("haproxy-leastconn", "haproxy", 50.0)
    )
    lines = table(r).splitlines()
    assert len(lines) == 4 and "r0 share" in lines[0]
    assert lines[2].startswith("| **gateway-peak_ewma** |") and "25.0%" in lines[2]


def test_phases_are_cut_at_the_actions() -> None:
    s = SCENARIOS["failover"]  # stop at 25 %, kill at 50 %, restart at 75 %
    records = [Record(t, "ok", 0.01, "r1") for t in (0.5, 2.4, 2.6, 4.9, 5.0, 7.4, 7.5, 9.9)]
    cut = phases(s, Summary(urls=[], rate=1, duration_s=10, records=records), 10.0)
    assert [p["name"] for p in cut] == ["before", "r0 hung", "r0 dead", "r0 restarted"]
    assert [p["arrivals"] for p in cut] == [2, 2, 2, 2]
    assert [p["from_s"] for p in cut] == [0.0, 2.5, 5.0, 7.5]


def test_the_run_is_described_with_its_timeouts() -> None:
    r = {"rate": 300, "options": {"duration": 20, "burstiness": 1, "seed": 1, "timeout": 2.0},
         "limits": {"max_inflight": 4, "response_s": 2.0}}  # fmt: skip
    assert "response timeout 2 s, client timeout 2 s" in describe_run(r)
