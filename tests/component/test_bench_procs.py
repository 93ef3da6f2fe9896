"""A paused (SIGSTOP) process, as the failover scenario makes of a replica, still ends fast."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from load.procs import Procs

GRACE_S = 10.0


def state(pid: int) -> str:
    """The process's state letter in /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


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
