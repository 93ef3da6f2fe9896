"""Start-up times (``control/startup.py``): seeded, measured, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.control.startup import KEPT, StartupTimes


def test_the_seed_stands_in_until_a_start_is_measured() -> None:
    times = StartupTimes(30.0)
    assert times.expected_s == 30.0
    times.add(4.0)
    assert times.expected_s == 4.0


def test_the_median_of_the_newest_starts() -> None:
    times = StartupTimes(30.0)
    for s in (20.0, 22.0, 90.0):  # one start slowed by a cold cache does not move it
        times.add(s)
    assert times.expected_s == 22.0
    for _ in range(KEPT):
        times.add(5.0)
    assert times.samples == [5.0] * KEPT and times.expected_s == 5.0


def test_a_restarted_gateway_knows_them(tmp_path: Path) -> None:
    path = tmp_path / "startup" / "llm.json"
    first = StartupTimes(30.0, path)
    first.add(41.0)
    first.add(43.0)
    first.keep(first.samples)
    again = StartupTimes(10.0, path)
    assert again.samples == [41.0, 43.0] and again.expected_s == 42.0


def test_a_broken_state_file_costs_the_samples_only(tmp_path: Path) -> None:
    path = tmp_path / "llm.json"
    for junk in (b"{", b"[1, 2]", b'{"startup_s": ["x"]}', orjson.dumps({"startup_s": [-1]})):
        path.write_bytes(junk)
        assert StartupTimes(30.0, path).expected_s == 30.0


def test_an_unwritable_state_dir_costs_the_keeping_only(tmp_path: Path) -> None:
    blocker = tmp_path / "startup"
    blocker.write_text("a file where the directory should be")
    times = StartupTimes(30.0, blocker / "llm.json")
    times.add(3.0)
    times.keep(times.samples)  # logged, not raised
    assert times.expected_s == 3.0
