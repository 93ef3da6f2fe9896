"""The workload matrix's cells, rates, p99 floors and verdicts (load/bench/matrix.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from backends.sim.server import DISTRIBUTIONS, Settings, Sim
from load.bench import __main__ as bench
from load.bench.matrix import (
    DEFAULT_CELLS,
    Cell,
    heatmap,
    parse,
    parse_cells,
    summary,
    table,
    verdict,
)
from load.bench.scenarios import NAMES


def test_the_default_cells_are_named_as_asked_and_cover_every_value() -> None:
    names = [c.name for c in DEFAULT_CELLS]
    assert len(names) == len(set(names)) == 15
    assert names[:3] == ["const-s4-l70", "exp-s4-l70", "lognormal0.5-s4-l70"]
    assert "lognormal0.5-s4-l70-slow" in names and "bimodal-s16-l30-slow" in names
    assert {c.distribution for c in DEFAULT_CELLS} == set(DISTRIBUTIONS)
    assert {c.sigma for c in DEFAULT_CELLS if c.distribution == "lognormal"} == {0.5, 1.0}
    assert {c.slots for c in DEFAULT_CELLS} == {1, 4, 16}
    assert {c.load_pct for c in DEFAULT_CELLS} == {30, 70, 90}
    assert {c.slow for c in DEFAULT_CELLS} == {False, True}


def test_a_name_parses_to_its_cell_and_back() -> None:
    assert parse("lognormal1.0-s16-l90-slow") == Cell("lognormal", 16, 90, True, 1.0)
    assert parse("const-s4-l30") == Cell("const", 4, 30)
    assert all(parse(c.name) == c for c in DEFAULT_CELLS)


@pytest.mark.parametrize(
    "name",
    ["lognormal-s4-l70", "const0.5-s4-l70", "uniform-s4-l70", "const-s0-l70", "const-s4-l0",
     "const-s4-l101", "const-s04-l70", "const-s4-l70-fast", "const-s4"],
)  # fmt: skip
def test_a_bad_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse(name)


def test_a_bad_cell_on_the_command_line_lists_the_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["matrix", "--cells", "const-s4-l30,nope"])
    assert "nope: not a cell" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the default cells: const-s4-l70, exp-s4-l70"):
        parse_cells("nope")


def test_matrix_is_not_part_of_all_and_cells_are_only_for_it() -> None:
    assert bench.parse_args(["all"]).scenarios == NAMES
    args = bench.parse_args(["matrix", "--cells", "const-s4-l30,const-s4-l30"])
    assert args.scenarios == ["matrix"] and args.cells == [Cell("const", 4, 30)]
    assert bench.parse_args(["matrix"]).cells == list(DEFAULT_CELLS)
    for argv in (["hetero", "--cells", "const-s4-l30"], ["matrix", "--rate", "100"],
                 ["matrix", "--contestants", "gateway-p2c"]):  # fmt: skip
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


@pytest.mark.parametrize(
    ("name", "service_ms", "rate"),
    [("const-s4-l70", 20, 560), ("lognormal0.5-s16-l70", 80, 560), ("exp-s1-l90", 20, 180),
     ("const-s4-l70-slow", 20, 420), ("bimodal-s16-l30-slow", 80, 180)],
)  # fmt: skip
def test_the_rate_is_the_load_of_the_healthy_replicas_capacity(
    name: str, service_ms: float, rate: float
) -> None:
    cell = parse(name)
    assert cell.service_ms == service_ms
    assert cell.rate == pytest.approx(rate)


@pytest.mark.parametrize(
    ("name", "p99_ms"),
    [("const-s4-l70", 20), ("exp-s4-l70", 20 * math.log(100)), ("bimodal-s4-l70", 200 / 1.9),
     ("pareto-s1-l90", 100), ("lognormal0.5-s16-l70", 80 * math.exp(-0.125 + 2.3263 * 0.5)),
     ("lognormal1.0-s4-l70", 20 * math.exp(-0.5 + 2.3263))],
)  # fmt: skip
def test_the_p99_floor_is_the_distributions_and_the_sim_draws_it(name: str, p99_ms: float) -> None:
    cell = parse(name)
    assert cell.service_p99_ms == pytest.approx(p99_ms)
    sim = Sim("s", Settings(service_ms=cell.service_ms, distribution=cell.distribution,
                            sigma=cell.sigma, seed=3))  # fmt: skip
    drawn = sorted(sim.service_s() * 1000 for _ in range(40000))
    assert drawn[int(0.99 * len(drawn))] == pytest.approx(p99_ms, rel=0.06)


def test_a_cell_becomes_a_scenario_with_a_slow_r0_and_the_peers_cap() -> None:
    s = parse("pareto-s1-l90-slow").scenario()
    assert [r.slowdown for r in s.replicas] == [5.0, 1.0, 1.0, 1.0]
    assert {(r.distribution, r.slots, r.service_ms) for r in s.replicas} == {("pareto", 1, 20)}
    assert (s.rate, s.limits.max_inflight, s.watch) == (pytest.approx(135), 64, True)
    assert not parse("const-s4-l30").scenario().watch


def run(name: str, p50: float, p99: float, errors: int = 0, ok: int = 1000) -> dict[str, Any]:
    return {"contestant": name, "kind": name.split("-")[0], "ok": ok, "error_count": errors,
            "latency_ms": {"p50": p50, "p99": p99}}  # fmt: skip


def runs(gateway: tuple[float, float], errors: int = 0, peer_errors: int = 0) -> list[Any]:
    """The gateway default against peers whose best p50 (10) and p99 (50) are not one's."""
    return [run("gateway-peak_ewma", *gateway, errors=errors),
            run("gateway-least_connections", 1, 1),  # not a peer
            run("haproxy-leastconn", 10, 100, errors=peer_errors),
            run("nginx-least_conn", 20, 50, errors=peer_errors + 1),
            run("nginx-round_robin", 0.0, 0.0, errors=9, ok=0)]  # nothing answered: no best  # fmt: skip


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [((10.5, 52.5), "met"), ((10.6, 52.5), "missed (p50 1.06x the best peer's)"),
     ((10, 53), "missed (p99 1.06x the best peer's)"),
     ((11, 60), "missed (p50 1.10x the best peer's; p99 1.20x the best peer's)")],
)  # fmt: skip
def test_p50_and_p99_are_within_5_percent_of_the_best_peers(
    gateway: tuple[float, float], expected: str
) -> None:
    assert verdict(runs(gateway), slow=False, service_p99_ms=20) == expected


@pytest.mark.parametrize(
    ("p99", "service_p99_ms", "expected"),
    [(25, 20, "met"), (26, 20, "missed (p99 26.0 > 25.0 ms with r0 slow)"),
     (40, 32, "met"), (41, 32, "missed (p99 41.0 > 40.0 ms with r0 slow)")],
)  # fmt: skip
def test_a_slow_cell_asks_for_half_the_best_p99_or_near_the_replicas_own(
    p99: float, service_p99_ms: float, expected: str
) -> None:
    """The limit is the larger of half the best peer's p99 (25) and 1.25x the floor."""
    assert verdict(runs((10, p99)), slow=True, service_p99_ms=service_p99_ms) == expected


def test_errors_count_only_where_a_peer_had_none() -> None:
    assert verdict(runs((10, 50), errors=1), False, 20) == (
        "missed (1 errors where haproxy-leastconn had none)"
    )
    assert verdict(runs((10, 50), errors=1, peer_errors=1), False, 20) == "met"


def test_no_verdict_without_the_gateway_default_or_a_peer() -> None:
    assert verdict(runs((10, 50))[1:], False, 20) is None
    assert verdict(runs((10, 50))[:2], False, 20) is None


def result() -> dict[str, Any]:
    cells = [{**parse("const-s4-l30").describe(), "runs": runs((10, 50))},
             {**parse("exp-s1-l90-slow").describe(), "runs": runs((10, 200))[1:]},
             {**parse("pareto-s1-l90").describe(), "runs": runs((20, 50))}]  # fmt: skip
    return {"cells": cells}


def test_the_table_has_a_row_per_cell_with_ratios_and_verdicts() -> None:
    lines = table(result()).splitlines()
    assert len(lines) == 5 and lines[0].count("|") == lines[1].count("|") == 10
    assert lines[2].startswith("| const-s4-l30 | 240 | 10.0 / 50.0, 0 | 1.0 / 1.0, 0 |")
    assert lines[2].endswith("| 1.00 / 1.00 | met |")
    assert lines[3].startswith("| exp-s1-l90-slow | 135 | - |") and lines[3].endswith("| - | - |")
    assert lines[4].endswith("| 2.00 / 1.00 | missed (p50 2.00x the best peer's) |")
    assert summary(result()) == "Targets for gateway-peak_ewma met in **1 / 2** cells."


def test_the_heat_map_is_each_gateways_ratio_to_the_best_peer() -> None:
    rows, columns, values = heatmap(result())
    assert rows == ["const-s4-l30", "exp-s1-l90-slow", "pareto-s1-l90"]
    assert columns == ["peak_ewma\np50", "peak_ewma\np99", "least_connections\np50",
                       "least_connections\np99"]  # fmt: skip
    assert values == [[1.0, 1.0, 0.1, 0.02], [None, None, 0.1, 0.02], [2.0, 1.0, 0.1, 0.02]]
