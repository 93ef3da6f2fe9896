"""Benchmark processes: a paused (SIGSTOP) one, as the failover scenario makes of a
replica, still ends fast; the proxy under test runs on a core no other process of the
run uses."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from load.procs import Procs, proxy_apart, stat_fields

GRACE_S = 10.0


def state(pid: int) -> str:
    """The process's state letter in /proc (T: stopped)."""
    fields = stat_fields(pid)
    assert fields is not None
    return fields[0]


@pytest.mark.parametrize("kill", [False, True])
def test_a_paused_process_stops_without_waiting_out_the_grace(kill: bool, tmp_path: Path) -> None:
    with Procs(log_dir=tmp_path, grace_s=GRACE_S) as procs:
        proc = procs.start("sleeper", ["sleep", "30"])
        procs.pause("sleeper")
        deadline = time.monotonic() + 5
        while state(proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)  # SIGSTOP is asynchronous
        assert state(proc.pid) == "T"
        began = time.monotonic()
        procs.stop("sleeper", kill=kill)
        assert time.monotonic() - began < 1.0 < GRACE_S
        assert proc.returncode == (-9 if kill else -15)  # SIGKILL, or SIGTERM once resumed


def test_the_proxy_runs_apart_from_the_processes_around_it(tmp_path: Path) -> None:
    usable = os.sched_getaffinity(0)
    with Procs(log_dir=tmp_path, grace_s=GRACE_S) as procs, proxy_apart() as core:
        replica = procs.start("replica", ["sleep", "30"])
        proxy = procs.start("proxy", ["sleep", "30"], core)
        if len(usable) < 2:
            assert core is None
            assert os.sched_getaffinity(replica.pid) == usable
        else:
            assert core is not None and len(core) == 1
            assert os.sched_getaffinity(proxy.pid) == core
            assert os.sched_getaffinity(replica.pid) == os.sched_getaffinity(0) == usable - core
    assert os.sched_getaffinity(0) == usable  # restored
