"""The process driver: replicas as local subprocesses on free loopback ports.

The no-Docker runtime, for the quick start and for fast tests, with the Docker driver's
semantics: the autoscaler cannot tell them apart. Where containers carry labels, a
process carries a small JSON record in ``state_dir`` (instance id, pool, replica id, pid,
the pid's kernel start time for outside observers such as ``load/burst.py``, port, GPU
ids); records of another instance id are ignored. In the command, ``{port}`` is
replaced by a free loopback port and ``{python}`` by the gateway's own interpreter. Each
child runs in a session of its own, so it outlives a gateway that is killed, and the next
gateway adopts it from its record, as it adopts containers.

Isolation: a replica gets a minimal environment (``INHERITED``, then the pool's
``autoscale.env``), never the gateway's own, which holds the admin token and other secrets.

A record is not trusted for the pid it names: a pid counts as our replica only while it is
our unreaped child, or while its ``/proc/PID/environ`` carries the marker ``MARKER`` =
``<instance id>/<replica id>`` it was started with. A recycled pid, or a record naming
someone else's process, is never signalled. (So a command that clears its environment is
not recognised after a gateway restart: it is then left running, unadopted.)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from gateway.control.drivers import MANAGER, Instance, ReplicaSpec, Tier, free_port

STOP_POLL_S = 0.05
# What a replica inherits of the gateway's environment: enough to find programs, a home,
# a locale, a temp dir and the gateway's Python packages; ``LC_*`` too. Nothing else.
INHERITED = frozenset({"PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV"})
MARKER = "INFERENCE_GATEWAY_REPLICA"
log = logging.getLogger(__name__)


def _well_formed(record: dict[str, object]) -> bool:
    """Has the record every field ``start`` writes, of its type?"""
    fields = {"replica_id": str, "pool": str, "pid": int, "url": str, "gpu_ids": list}
    return all(isinstance(record.get(name), kind) for name, kind in fields.items())


def replica_env(spec: ReplicaSpec, port: int, marker: str) -> dict[str, str]:
    """The whole environment of a replica: ``INHERITED``, ``spec.env``, then ours."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith("LC_")}
    env.update(spec.env)
    env["PORT"] = str(port)
    if spec.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
    env[MARKER] = marker
    return env


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _carries(pid: int, marker: str) -> bool:
    """Whether process ``pid`` was started with ``MARKER=marker`` (False if gone, a
    zombie, or not ours to read)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={marker}".encode() in environ.split(b"\0")


class ProcessDriver:
    tiers: frozenset[Tier] = frozenset({"paused"})  # (a stopped process keeps nothing)

    def __init__(self, state_dir: str | Path, instance: str, cwd: str | None = None) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.instance = instance
        self.cwd = cwd
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._watchers: set[asyncio.Task[None]] = set()
        self._malformed: set[Path] = set()  # record files skipped (each logged once)

    async def list(self, pool: str) -> list[Instance]:
        records = await asyncio.to_thread(self._records)  # file and /proc reads: off the loop
        return [instance for record, instance in records if instance.pool == pool]

    async def start(self, spec: ReplicaSpec) -> Instance:
        port = free_port()
        argv = [
            arg.replace("{port}", str(port)).replace("{python}", sys.executable)
            for arg in spec.command
        ]
        env = replica_env(spec, port, self._marker(spec.replica_id))
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.cwd, env=env, start_new_session=True, stdin=asyncio.subprocess.DEVNULL
        )
        record = {
            "managed_by": MANAGER,
            "instance": self.instance,
            "pool": spec.pool,
            "replica_id": spec.replica_id,
            "pid": proc.pid,
            "started": _start_time(proc.pid),
            "url": f"http://127.0.0.1:{port}",
            "gpu_ids": list(spec.gpu_ids),
        }
        writing = asyncio.ensure_future(asyncio.to_thread(self._write, spec.replica_id, record))
        try:
            await asyncio.shield(writing)
        except BaseException:  # failed or cancelled (a shutdown): the caller will not know
            # this replica, so it must not outlive the call, nor its record
            self._signal(proc.pid, signal.SIGKILL)
            path = self._path(spec.replica_id)
            writing.add_done_callback(lambda _: path.unlink(missing_ok=True))
            raise
        self._children[proc.pid] = proc
        watcher = asyncio.create_task(self._watch(spec.pool, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return self._instance(record)

    async def stop(self, instance: Instance, timeout_s: float) -> None:
        """Signals only a pid that is still the replica (``_alive``); removes the record
        only if it is ours."""
        path = self._path(instance.replica_id)
        record = await asyncio.to_thread(self._read, path)
        if record is None or not _well_formed(record) or not self._ours(record):
            return
        pid = record["pid"]
        assert isinstance(pid, int)
        alive = await asyncio.to_thread(self._alive, record)  # /proc reads: off the loop
        if alive:
            if record.get("paused"):
                self._signal(pid, signal.SIGCONT)  # a stopped process takes no SIGTERM
            self._signal(pid, signal.SIGTERM)
            # An adopted replica is not our child, so there is nothing to wait on: poll.
            for _ in range(max(1, round(timeout_s / STOP_POLL_S))):
                if not await asyncio.to_thread(self._alive, record):
                    break
                await asyncio.sleep(STOP_POLL_S)
            if await asyncio.to_thread(self._alive, record):
                self._signal(pid, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            await child.wait()
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def pause(self, instance: Instance) -> None:
        """SIGSTOP to the replica's session; the record says so, for ``list``."""
        await self._freeze(instance, True)

    async def halt(self, instance: Instance, timeout_s: float) -> None:
        raise NotImplementedError("the process driver has no stopped tier")

    async def wake(self, instance: Instance) -> Instance:
        record = await self._freeze(instance, False)
        if record is None:
            raise LookupError(f"no replica {instance.replica_id} of ours to wake")
        return self._instance(record)

    async def _freeze(self, instance: Instance, paused: bool) -> dict[str, object] | None:
        """Stop or continue a live replica of ours (only while its pid is still it);
        the record, updated, or None if there is no such replica."""
        path = self._path(instance.replica_id)
        record = await asyncio.to_thread(self._read, path)
        if record is None or not _well_formed(record) or not self._ours(record):
            return None
        if not await asyncio.to_thread(self._alive, record):
            return None
        pid = record["pid"]
        assert isinstance(pid, int)
        self._signal(pid, signal.SIGSTOP if paused else signal.SIGCONT)
        record["paused"] = paused
        await asyncio.to_thread(self._write, instance.replica_id, record)
        return record

    async def events(self) -> AsyncIterator[str]:
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        for task in list(self._watchers):
            task.cancel()

    # -- records -----------------------------------------------------------------------

    def _path(self, replica_id: str) -> Path:
        return self.state_dir / f"{replica_id}.json"

    def _marker(self, replica_id: str) -> str:
        return f"{self.instance}/{replica_id}"

    def _ours(self, record: dict[str, object]) -> bool:
        return record.get("managed_by") == MANAGER and record.get("instance") == self.instance

    def _write(self, replica_id: str, record: dict[str, object]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._path(replica_id).write_bytes(orjson.dumps(record))

    @staticmethod
    def _read(path: Path) -> dict[str, object] | None:
        try:
            record = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def _records(self) -> builtins.list[tuple[dict[str, object], Instance]]:
        """Our replicas' records. One that is not a record this driver wrote (cut short,
        edited, another program's file) is skipped, and logged once: a single bad file
        must not fail every listing, which would stop the pool's autoscaling."""
        found = []
        for path in sorted(self.state_dir.glob("*.json")):
            record = self._read(path)
            if record is None or not _well_formed(record):
                if path not in self._malformed:
                    self._malformed.add(path)
                    log.warning("process driver: %s is not a replica record; skipped", path)
                continue
            if self._ours(record):
                found.append((record, self._instance(record)))
        return found

    def _instance(self, record: dict[str, object]) -> Instance:
        gpu_ids = record["gpu_ids"]
        assert isinstance(gpu_ids, list)
        alive = self._alive(record)
        return Instance(
            replica_id=str(record["replica_id"]),
            pool=str(record["pool"]),
            state=("paused" if record.get("paused") else "running") if alive else "exited",
            url=str(record["url"]),
            gpu_ids=tuple(str(g) for g in gpu_ids),
            handle=str(record["pid"]),
        )

    def _alive(self, record: dict[str, object]) -> bool:
        """Whether the record's pid is still its replica: our child not yet reaped (its
        pid cannot be anyone else's), or a process carrying the replica's marker."""
        pid = record["pid"]
        assert isinstance(pid, int)
        child = self._children.get(pid)
        if child is not None:
            return child.returncode is None
        return _carries(pid, self._marker(str(record["replica_id"])))

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # the replica's whole session: a shell and its server

    async def _watch(self, pool: str, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self._events.put_nowait(pool)
