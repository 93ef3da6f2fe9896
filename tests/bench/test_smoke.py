"""The benchmark suite end to end, tiny: one scenario (or one matrix cell), 2 s per
contestant, on 127.0.0.1.

Real sim replicas, a real gateway and, where they are installed (the test does not install
them), HAProxy and nginx. It checks that the run completes, answers, writes its JSON and
figure, and leaves no process of its own behind; the numbers are not judged.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from load.bench.__main__ import main
from load.bench.install import binary

pytest.importorskip("matplotlib", reason="the figures need the load extra")


def children() -> list[str]:
    pid = os.getpid()
    return [c for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]  # fmt: skip


def installed_peers() -> list[str]:
    return [name for name in ("haproxy-leastconn", "nginx-least_conn")
            if binary(name.split("-")[0])]  # fmt: skip


def test_a_tiny_overhead_run(tmp_path: Path) -> None:
    contestants = ["direct", "gateway-peak_ewma", *installed_peers()]
    argv = ["overhead", "--duration", "2", "--rate", "100", "--contestants",
            ",".join(contestants), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    result = orjson.loads((tmp_path / "overhead.json").read_bytes())
    assert [r["contestant"] for r in result["runs"]] == contestants
    for run in result["runs"]:
        assert run["ok"] > 100 and run["error_count"] == 0, run["contestant"]
        assert sum(run["replicas"].values()) == run["ok"]  # every answer named its replica
        assert len(run["series"]) == 2
    assert (tmp_path / "bench-overhead.png").stat().st_size > 10_000
    assert children() == []


def test_a_tiny_matrix_cell(tmp_path: Path) -> None:
    contestants = ["gateway-peak_ewma", "gateway-least_connections", *installed_peers()]
    argv = ["matrix", "--cells", "const-s4-l30", "--duration", "2", "--contestants",
            ",".join(contestants), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    result = orjson.loads((tmp_path / "matrix.json").read_bytes())
    [cell] = result["cells"]
    assert (cell["cell"], cell["rate"]) == ("const-s4-l30", 240)
    assert [r["contestant"] for r in cell["runs"]] == contestants
    for run in cell["runs"]:
        assert run["ok"] > 400 and run["error_count"] == 0, run["contestant"]
    assert (tmp_path / "bench-matrix.png").stat().st_size > 5_000
    assert children() == []


def test_a_tiny_llm_run(tmp_path: Path) -> None:
    argv = ["llm-overload", "--duration", "3", "--contestants", "gateway-prefix_affinity",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    [run] = orjson.loads((tmp_path / "llm-overload.json").read_bytes())["llm"]
    assert run["answers"] and all(a["status"] == 200 for a in run["answers"])
    assert run["unflooded"]  # the same arrivals less the flood's, run too
    assert (tmp_path / "bench-llm-overload.png").stat().st_size > 5_000
    assert children() == []
