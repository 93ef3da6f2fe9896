"""A scenario's client timeout reaches the load generator and the saved results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from load.bench import __main__ as bench
from load.bench import runner
from load.bench.contestants import Contestant
from load.bench.scenarios import SCENARIOS
from load.loadgen import Summary


def options(tmp_path: Path, duration: float = 1.0) -> runner.Options:
    return runner.Options(duration=duration, rate=None, burstiness=1.0, seed=1, timeout=15.0,
                          progress=False, out=tmp_path)  # fmt: skip


def test_the_client_timeout_is_the_scenarios_else_the_option(tmp_path: Path) -> None:
    opts = options(tmp_path)
    assert opts.client_timeout(SCENARIOS["failover"]) == 2.0
    assert opts.client_timeout(SCENARIOS["hetero"]) == 15.0


async def test_failover_hangs_kills_and_restarts_r0_under_the_client_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real sim replicas, no proxy; the load generator is replaced by one that records
    how it was called and sends nothing."""
    calls: list[dict[str, Any]] = []

    async def run_load(urls: list[str], rate: float, duration: float, **kw: Any) -> Summary:
        calls.append(kw)
        return Summary(urls=list(urls), rate=rate, duration_s=duration)

    monkeypatch.setattr(runner, "run_load", run_load)
    s = SCENARIOS["failover"]
    run = await runner.run_contestant(s, Contestant("direct", "round_robin"), options(tmp_path), {})
    assert [c["request_timeout"] for c in calls] == [2.0]
    assert [e["action"] for e in run["events"]] == ["stop r0", "kill r0", "restart r0"]
    assert [p["name"] for p in run["phases"]] == ["before", "r0 hung", "r0 dead", "r0 restarted"]


def test_the_saved_options_state_the_client_timeout_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def no_runs(*args: Any) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(bench, "run_scenario", no_runs)
    monkeypatch.setattr(bench, "ensure", lambda kinds: {})
    monkeypatch.setattr(bench.report, "machine", lambda binaries: {})
    args = bench.parse_args(["failover", "hetero", "--timeout", "15", "--out", str(tmp_path)])
    saved = {name: bench.run(name, args, "") for name in args.scenarios}
    assert {name: r["options"]["timeout"] for name, r in saved.items()} == {
        "failover": 2.0, "hetero": 15.0
    }  # fmt: skip
