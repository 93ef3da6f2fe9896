"""Subprocesses for benchmarks: sim backends and gateways, started, watched and stopped.

``Procs`` owns every process it starts and stops them all, newest first, when its ``with``
block ends, however it ends: SIGTERM to each PID (after a SIGCONT, for those paused),
then SIGKILL to those that outlive ``grace_s``. Output goes to one log file per process,
whose tail is shown when a process fails to come up. Nothing here signals a process it
did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson
import yaml


class Procs:
    """The subprocesses of one benchmark run; a context manager that stops them all."""

    def __init__(self, log_dir: Path | None = None, grace_s: float = 10.0) -> None:
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="load-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, args: list[str], cores: set[int] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` with stdout and stderr in ``<log_dir>/<name>.log``, on ``cores``
        (None: this process's)."""
        pin = None if cores is None else functools.partial(os.sched_setaffinity, 0, cores)
        with open(self.log_path(name), "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def pause(self, name: str) -> None:
        """SIGSTOP one process: a hang, as benchmarks inject. The kernel still accepts
        connections on its listening sockets, but nothing is answered until it is resumed."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)

    def stop(self, name: str, *, kill: bool = False) -> None:
        """Stop one process: SIGTERM, then SIGKILL after the grace; ``kill`` sends SIGKILL
        at once (a crash, as benchmarks inject). Its name stays, so it can be started again."""
        proc = self.procs[name]
        if proc.poll() is None:
            if kill:
                proc.kill()  # SIGKILL ends a paused process too
            else:
                proc.send_signal(signal.SIGCONT)  # paused, it would not act on SIGTERM
                proc.terminate()
            try:
                proc.wait(self.grace_s)
            except subprocess.TimeoutExpired:
                print(f"{name} (pid {proc.pid}) ignored SIGTERM; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        """Terminate every process, newest first; kill those still alive after the grace."""
        for name in reversed(list(self.procs)):
            self.stop(name)
        self.procs.clear()

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


async def wait_for_url(
    url: str,
    *,
    within: float = 30.0,
    interval: float = 0.1,
    proc: subprocess.Popen[bytes] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> None:
    """Poll ``url`` until it answers 200; raise RuntimeError after ``within`` seconds or
    as soon as ``proc`` (the process that should serve it) has exited."""
    deadline = time.monotonic() + within
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
            try:
                async with session.request(method, url, data=body) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = type(exc).__name__
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: not ready within {within:g} s ({last})")
            await asyncio.sleep(interval)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def python(module: str, *args: str) -> list[str]:
    """The command line running ``module`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def sim_command(ports: list[int], **settings: Any) -> list[str]:
    """``python -m backends.sim --ports ...`` with settings as flags (``service_ms=1``)."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    return python("backends.sim", "--ports", ",".join(map(str, ports)), *flags)


@contextlib.contextmanager
def proxy_apart() -> Iterator[set[int] | None]:
    """Keep the proxy under test off everything else's cores: yields the core for it (the
    last usable one) while this process, and every child it starts without ``cores``,
    runs on the others; nothing is pinned (None) below two cores. On a small machine a
    proxy's own CPU would otherwise delay the sim replicas' timers and the load generator,
    and it would be judged on replicas slowed by its cost, not on its routing: at 90 %
    load on one-slot replicas, a spinner taking 14 % of a core beside nginx raised its
    mean latency by 3-4 ms (``load/RESULTS.md``, the matrix)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        yield None
        return
    os.sched_setaffinity(0, cores[:-1])
    try:
        yield {cores[-1]}
    finally:
        os.sched_setaffinity(0, cores)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (which may hold spaces and
    parentheses), so index 0 is field 3, the state; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), or None when unknown."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The live descendants of a process (nginx's workers), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and of its live descendants, or None."""
    total = cpu_seconds(pid)
    if total is None:
        return None
    return total + sum(cpu_seconds(child) or 0.0 for child in descendants(pid))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and of its live descendants."""
    return rss_bytes(pid) + sum(rss_bytes(child) for child in descendants(pid))


def write_report(path: Path, settings: dict[str, Any], results: dict[str, Any]) -> None:
    """A benchmark's JSON: its settings, the machine it ran on, and its results."""
    environment = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    kept = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items() if k != "json"}
    document = {"settings": kept, "environment": environment, **results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}")
