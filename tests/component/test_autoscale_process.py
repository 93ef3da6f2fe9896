"""The autoscaler end to end with the process driver: real sim replicas, no Docker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.control.drivers import MANAGER, ReplicaSpec
from gateway.control.drivers.process import INHERITED, MARKER, ProcessDriver
from load.procs import stat_fields
from tests.conftest import (
    SIM_PROCESS,
    eventually,
    free_port,
    load_until,
    scale_out_and_in,
    scaled_config,
)

ROOT = Path(__file__).resolve().parents[2]


def sim_pool(state_dir: Path, *sim_args: str, **autoscale: Any) -> dict[str, Any]:
    """A gateway whose one pool runs sim replicas as local processes."""
    command = [*SIM_PROCESS["command"], *sim_args]
    config = scaled_config("default", {**SIM_PROCESS, "command": command, **autoscale})
    config["state_dir"] = str(state_dir)
    return config


def records(state_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted((state_dir / "replicas").glob("*.json"))]


async def test_load_scales_the_pool_up_and_back_down(gateway, client, tmp_path: Path) -> None:
    gw = await gateway(sim_pool(tmp_path, "--service-ms", "100", "--slots", "4"))
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 1, within=20)
    done = asyncio.Event()
    load = asyncio.create_task(load_until(client, f"{gw.url}/predict", 8, done))
    await eventually(lambda: scaler.count["ready"] >= 3, within=30)
    done.set()
    statuses = await load
    assert set(statuses) == {200}
    await eventually(lambda: len(scaler.members) == 1, within=30)
    assert len(records(tmp_path)) == 1  # the others were stopped and removed


async def test_a_killed_replica_is_replaced_and_costs_no_request(
    gateway, client, tmp_path: Path
) -> None:
    config = sim_pool(tmp_path, "--service-ms", "200", min_replicas=2, max_replicas=2)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 2, within=20)
    before = {r["replica_id"] for r in records(tmp_path)}
    done = asyncio.Event()
    load = asyncio.create_task(load_until(client, f"{gw.url}/predict", 4, done))
    await asyncio.sleep(0.5)
    victim = records(tmp_path)[0]
    os.kill(victim["pid"], signal.SIGKILL)  # in-flight requests on it are cut off
    await eventually(
        lambda: scaler.count["ready"] == 2 and victim["replica_id"] not in scaler.members,
        within=20,
    )
    await asyncio.sleep(0.5)
    done.set()
    statuses = await load
    assert set(statuses) == {200}
    after = {r["replica_id"] for r in records(tmp_path)}
    assert len(after) == 2 and after != before


async def test_scale_down_drains_a_long_request(gateway, client, tmp_path: Path) -> None:
    config = sim_pool(
        tmp_path, "--tokens", "30", "--token-ms", "100", min_replicas=2, max_replicas=2
    )
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 2, within=20)

    async def long_stream() -> bytes:
        async with client.post(f"{gw.url}/predict?stream=1") as resp:
            assert resp.status == 200
            return await resp.read()

    streams = [asyncio.create_task(long_stream()) for _ in range(2)]  # one on each replica
    await eventually(lambda: all(r.inflight == 1 for r in gw.pools["default"].replicas.values()))
    scaler.apply(scaler.settings.model_copy(update={"min_replicas": 1}))
    await eventually(lambda: scaler.count["draining"] == 1, within=10)
    bodies = await asyncio.gather(*streams)
    for body in bodies:  # neither stream was cut short by the scale-down
        assert body.count(b"data:") == 31 and body.endswith(b"data: [DONE]\n\n")
    await eventually(lambda: len(records(tmp_path)) == 1, within=10)


async def test_scale_from_zero_answers_the_first_request(gateway, client, tmp_path: Path) -> None:
    config = sim_pool(tmp_path, "--startup-delay-s", "0.5", min_replicas=0)
    gw = await gateway(config)
    await asyncio.sleep(0.5)
    assert records(tmp_path) == []  # nothing runs without demand
    t0 = time.monotonic()
    async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
        assert resp.status == 200
        waited = float(resp.headers["X-Cold-Start-Wait"])
    assert 0.5 <= waited <= time.monotonic() - t0
    assert len(records(tmp_path)) == 1  # one start, shared by whoever waited


async def test_cold_start_overflow_gets_503_with_retry_after(
    gateway, client, tmp_path: Path
) -> None:
    config = sim_pool(
        tmp_path, "--startup-delay-s", "2", min_replicas=0, cold_start={"max_waiting": 2}
    )
    gw = await gateway(config)
    waiting = [asyncio.create_task(client.post(f"{gw.url}/predict")) for _ in range(2)]
    await eventually(lambda: gw.pools["default"].queued == 2)
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
    for task in waiting:
        resp = await task
        assert resp.status == 200
        resp.release()


async def test_gpus_are_never_given_out_twice(gateway, client, tmp_path: Path) -> None:
    config = sim_pool(tmp_path, min_replicas=3, max_replicas=3, gpus=[0, 1], gpus_per_replica=1)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 2, within=20)
    await asyncio.sleep(0.5)
    assert scaler.count["ready"] + scaler.count["starting"] == 2  # no GPU for a third
    held = [tuple(r["gpu_ids"]) for r in records(tmp_path)]
    assert sorted(held) == [("0",), ("1",)]
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    assert 'gateway_replica_start_failures_total{pool="default",reason="no_gpu"}' in text
    assert 'gateway_gpus{state="allocated"} 2.0' in text


async def test_the_predicted_and_measured_p99_wait_are_exported(
    gateway, client, tmp_path: Path
) -> None:
    """With a queue-wait SLO, the decision carries what it asks for, and /metrics shows
    Erlang C's p99 wait beside the measured one."""
    config = sim_pool(
        tmp_path, "--service-ms", "20", "--slots", "2", max_replicas=2,
        slo={"queue_wait_p99_s": 0.5},
    )  # fmt: skip
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] >= 1, within=15)

    async def worker() -> None:
        for _ in range(40):
            async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
                assert resp.status == 200

    await asyncio.gather(*(worker() for _ in range(3)))

    def sized() -> bool:
        d = scaler.decision
        return scaler.predicted_wait_p99_s is not None and d is not None and d.slo_replicas >= 1

    await eventually(sized, within=5, what="a decision sized by the SLO")
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    assert 'gateway_queue_wait_p99_seconds{pool="default",source="measured"}' in text
    assert 'gateway_queue_wait_p99_seconds{pool="default",source="predicted"}' in text


async def test_a_learnt_keep_alive_lets_the_last_replica_go_after_the_usual_spell(
    gateway, client, tmp_path: Path
) -> None:
    """Calls 0.5 s apart, ten times: the pool learns that a spell longer than ~0.6 s is
    unusual, and goes to zero then, where its 10 s stable window would hold it 10 s."""
    config = sim_pool(tmp_path, min_replicas=0, stable_window_s=10)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    for _ in range(12):
        async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
            assert resp.status == 200
        await asyncio.sleep(0.5)
    assert scaler.keep_alive is not None  # learnt: ten spells of a tick or more
    t0 = time.monotonic()
    await eventually(lambda: not records(tmp_path), within=8, what="the pool at zero")
    assert time.monotonic() - t0 < 5  # not the stable window's 10 s
    assert scaler.decision is not None and scaler.decision.reason == "to_zero"


def process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid``: T while stopped (SIGSTOP)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def held_paused(gateway, client, tmp_path: Path, paused_s: float) -> Gateway:
    """A pool of two one-GPU sim replicas, scaled out and back in: one is held paused."""
    config = sim_pool(
        tmp_path, "--service-ms", "100", "--slots", "2", max_replicas=2, gpus=[0, 1],
        gpus_per_replica=1, tiers={"paused_s": paused_s, "max_warm": 1},
    )  # fmt: skip
    gw = await gateway(config)
    await scale_out_and_in(gw, client, "default", 20)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["paused"] == 1, within=20, what="one held paused")
    return gw


@pytest.mark.timeout(90)
async def test_a_replica_scaled_down_is_held_paused_and_woken_under_load(
    gateway, client, tmp_path: Path
) -> None:
    gw = await held_paused(gateway, client, tmp_path, 60)
    scaler = gw.autoscalers["default"]
    held = next(m for m in scaler.members.values() if m.state == "paused")
    pid = next(r["pid"] for r in records(tmp_path) if r["replica_id"] == held.replica_id)
    assert process_state(pid) == "T"  # frozen
    assert len(gw.ledger.allocated[held.replica_id]) == 1  # its GPU stays with it
    done = asyncio.Event()
    load = asyncio.create_task(load_until(client, f"{gw.url}/predict", 6, done))
    await eventually(lambda: held.state == "ready", within=20, what="the held one woken")
    done.set()
    assert set(await load) == {200}
    assert len(records(tmp_path)) == 2  # woken, not started anew
    assert process_state(pid) in "RS"
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    assert 'gateway_replica_wake_seconds_count{pool="default",tier="paused"} 1.0' in text
    assert 'gateway_scale_events_total{action="demote",pool="default",reason="paused"}' in text
    for state in ("ready", "paused"):  # what it cost, by tier: one GPU each
        replica_s = f'gateway_replica_seconds_total{{pool="default",state="{state}"}}'
        gpu_s = f'gateway_gpu_seconds_total{{pool="default",state="{state}"}}'
        assert replica_s in text and gpu_s in text


async def test_a_held_replica_goes_after_its_time_and_gives_its_gpu_back(
    gateway, client, tmp_path: Path
) -> None:
    gw = await held_paused(gateway, client, tmp_path, 1)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: len(records(tmp_path)) == 1, within=10, what="the held one gone")
    assert scaler.count["paused"] == 0 and len(gw.ledger.free) == 1


CHAT = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.timeout(90)
async def test_an_engine_with_a_sleep_mode_is_frozen_then_put_to_sleep_and_woken(
    gateway, client, tmp_path: Path
) -> None:
    """The asleep tier with the LLM replica (vLLM's sleep API): a replica scaled down is
    paused, thawed and put to sleep after ``paused_s``, and woken by ``POST /wake_up``
    (its 0.3 s), not started, when load comes back."""
    command = ["{python}", "-m", "backends.llm", "--port", "{port}", "--wake-s", "0.3",
               "--max-num-seqs", "2", "--step-ms", "20"]  # fmt: skip
    config = sim_pool(
        tmp_path, max_replicas=2, command=command,
        tiers={"paused_s": 1, "asleep_s": 60, "max_warm": 1},
    )  # fmt: skip
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await scale_out_and_in(gw, client, "default", 20, "/v1/chat/completions", CHAT)
    await eventually(lambda: scaler.count["asleep"] == 1, within=20, what="one asleep")
    held = next(m for m in scaler.members.values() if m.state == "asleep")
    assert held.instance is not None and held.instance.url is not None
    async with client.get(f"{held.instance.url}/is_sleeping") as resp:
        assert await resp.json() == {"is_sleeping": True}
    pid = next(r["pid"] for r in records(tmp_path) if r["replica_id"] == held.replica_id)
    assert process_state(pid) in "RS"  # thawed: a frozen engine takes no call
    done = asyncio.Event()
    chat = f"{gw.url}/v1/chat/completions"
    load = asyncio.create_task(load_until(client, chat, 8, done, CHAT))
    await eventually(lambda: held.state == "ready", within=20, what="the asleep one woken")
    done.set()
    assert set(await load) == {200}
    assert len(records(tmp_path)) == 2  # woken, not started anew
    assert 0.3 <= scaler.wake_s["asleep"] < 5
    async with client.get(f"{held.instance.url}/is_sleeping") as resp:
        assert await resp.json() == {"is_sleeping": False}


@pytest.mark.timeout(90)
async def test_a_restarted_gateway_adopts_its_replicas(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = sim_pool(tmp_path, min_replicas=2, max_replicas=2, on_exit="keep")
    config["listen"]["port"], config["admin"]["port"] = port, admin
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))

    async def start_gateway() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(path), cwd=ROOT
        )

    async def answered(session: aiohttp.ClientSession) -> bool:
        try:
            async with session.post(f"http://127.0.0.1:{port}/predict", data=b"{}") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    first = await start_gateway()
    second = None
    try:
        async with aiohttp.ClientSession() as session:

            async def both_serving() -> bool:
                return len(records(tmp_path)) == 2 and await answered(session)

            await eventually(both_serving, 20, 0.1, what="two replicas serving")
            before = records(tmp_path)
            assert len(before) == 2
            first.kill()  # SIGKILL: no chance to clean up
            await first.wait()
            second = await start_gateway()
            await eventually(lambda: answered(session), 20, 0.1, what="the restarted gateway")
            await asyncio.sleep(2)  # several ticks: time to start duplicates, if it would
            after = records(tmp_path)
            assert [r["replica_id"] for r in after] == [r["replica_id"] for r in before]
            assert [r["pid"] for r in after] == [r["pid"] for r in before]
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        for record in records(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGKILL)


def start_time(pid: int) -> str:
    """The kernel's start time of ``pid``: field 22 of /proc/PID/stat."""
    fields = stat_fields(pid)
    assert fields is not None, f"pid {pid} is gone"
    return fields[19]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_a_replica_gets_a_minimal_environment_not_the_gateways(
    gateway, client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("CLOUD_API_KEY", "cloud-secret")
    monkeypatch.setenv("LC_TIME", "C")
    gw = await gateway(sim_pool(tmp_path, max_replicas=1, env={"MODEL_FLAVOUR": "small"}))
    await eventually(lambda: gw.autoscalers["default"].count["ready"] == 1, within=20)
    async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
        assert resp.status == 200  # the sim starts on the minimal environment
    [record] = records(tmp_path)
    env = environ_of(record["pid"])
    assert "GATEWAY_ADMIN_TOKEN" not in env and "CLOUD_API_KEY" not in env
    assert "admin-secret" not in env.values() and "cloud-secret" not in env.values()
    assert env["MODEL_FLAVOUR"] == "small"
    assert env["PORT"] == record["url"].rsplit(":", 1)[1]
    assert env["LC_TIME"] == "C" and env["PATH"] == os.environ["PATH"]
    allowed = INHERITED | {"PORT", MARKER, "MODEL_FLAVOUR"}
    assert {k for k in env if not k.startswith("LC_")} <= allowed


@pytest.mark.timeout(60)
async def test_gateways_of_two_clusters_on_one_state_dir_leave_each_other_alone(
    gateway, client, tmp_path: Path
) -> None:
    # Same state_dir, same pool name: only the cluster names differ.
    gw_a = await gateway({**sim_pool(tmp_path, max_replicas=1), "cluster": "a"})
    await eventually(lambda: gw_a.autoscalers["default"].count["ready"] == 1, within=20)
    [theirs] = records(tmp_path)
    gw_b = Gateway(parse_config({**sim_pool(tmp_path, max_replicas=1), "cluster": "b"}))
    await gw_b.start()
    try:  # b adopts nothing and removes nothing: it starts a replica of its own
        scaler_b = gw_b.autoscalers["default"]
        await eventually(lambda: scaler_b.count["ready"] == 1, within=20)
        await asyncio.sleep(1)  # ticks go by
        [mine] = scaler_b.members
        assert mine != theirs["replica_id"]
        assert list(gw_b.pools["default"].replicas) == [mine]  # b routes to its own only
        async with client.post(f"http://127.0.0.1:{gw_b.port}/predict", data=b"{}") as resp:
            assert resp.status == 200
        pairs = {(r["instance"], r["replica_id"]) for r in records(tmp_path)}
        assert pairs == {("a", theirs["replica_id"]), ("b", mine)}
    finally:
        await gw_b.stop()  # on_exit: stop removes b's replica, and only that one
    assert [r["replica_id"] for r in records(tmp_path)] == [theirs["replica_id"]]
    assert environ_of(theirs["pid"])[MARKER] == f"a/{theirs['replica_id']}"  # still running
    assert gw_a.autoscalers["default"].count["ready"] == 1


def gone(pid: int) -> bool:
    """Is ``pid`` no longer a live process (reaped, or a zombie)?"""
    try:
        return process_state(pid) == "Z"
    except OSError:
        return True


async def test_a_start_cancelled_midway_leaves_no_process_nor_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown that cancels a start after the process is spawned, while its record
    is being written: the caller never learns of that replica, so it must not live on
    (an orphan no later listing in a fresh state_dir would find)."""
    gate, pids = threading.Event(), []
    write = ProcessDriver._write

    def slow_write(self: ProcessDriver, replica_id: str, record: dict[str, object]) -> None:
        pids.append(record["pid"])
        gate.wait(5)
        write(self, replica_id, record)

    monkeypatch.setattr(ProcessDriver, "_write", slow_write)
    driver = ProcessDriver(tmp_path, "me")
    spec = ReplicaSpec(
        "default", "default-0001", "", (sys.executable, "-c", "import time; time.sleep(60)")
    )
    start = asyncio.create_task(driver.start(spec))
    await eventually(lambda: bool(pids))
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    gate.set()
    await eventually(lambda: gone(pids[0]), what="the spawned process gone")
    await eventually(lambda: not (tmp_path / "default-0001.json").exists(), what="no record")
    assert await driver.list("default") == []


async def test_a_record_naming_someone_elses_process_is_never_signalled(tmp_path: Path) -> None:
    # A record whose pid is now an unrelated process (a recycled pid, or a record from
    # before a reboot), down to that process's start time: what an older driver checked.
    bystander = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    try:
        record = {
            "managed_by": MANAGER,
            "instance": "me",
            "pool": "default",
            "replica_id": "default-0000",
            "pid": bystander.pid,
            "started": start_time(bystander.pid),
            "url": "http://127.0.0.1:9",
            "gpu_ids": [],
        }
        (tmp_path / "default-0000.json").write_bytes(orjson.dumps(record))
        driver = ProcessDriver(tmp_path, "me")
        [instance] = await driver.list("default")
        assert instance.state == "exited"  # not our replica, whatever the record says
        await driver.stop(instance, timeout_s=0.2)
        assert bystander.returncode is None and environ_of(bystander.pid)  # alive
        assert not (tmp_path / "default-0000.json").exists()  # the stale record is gone
    finally:
        bystander.kill()
        await bystander.wait()


async def test_a_record_of_another_instance_is_not_listed_nor_removed(tmp_path: Path) -> None:
    spec = ReplicaSpec("default", "default-1111", "", command=(*SIM_PROCESS["command"],))
    theirs = ProcessDriver(tmp_path, "them")
    instance = await theirs.start(spec)
    try:
        ours = ProcessDriver(tmp_path, "us")
        assert await ours.list("default") == []
        await ours.stop(instance, timeout_s=0.2)
        assert [i.state for i in await theirs.list("default")] == ["running"]
    finally:
        await theirs.stop(instance, timeout_s=5)
    assert await theirs.list("default") == []


async def test_a_replica_that_dies_soon_after_it_is_ready_is_restarted_with_backoff(
    gateway, tmp_path: Path
) -> None:
    """Each replica serves for about a second, then dies: a crash loop that passes its
    health check. Every early death counts as a failed start, and the gaps between
    starts grow, instead of a restart on every tick."""
    crash = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-m', 'backends.sim', '--port', '{port}']); "
        "time.sleep(1.0); p.kill()"
    )
    config = scaled_config("default", {"driver": "process", "command": ["{python}", "-c", crash]})
    config["state_dir"] = str(tmp_path)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.start_failures.count >= 2, within=20)
    text = gw.recorder.exposition().decode()
    assert 'gateway_replica_start_failures_total{pool="default",reason="crashed"} 2.0' in text
    assert scaler.start_failures.until - gw.clock() > 1.0  # the first: at once; the second: 2 s


@pytest.mark.parametrize(
    "content", [b"[]", b"{}", b'{"pid": "1", "replica_id": "x"}', b"not json", b"\xff\xfe"]
)
async def test_a_malformed_record_is_skipped_not_fatal_to_the_listing(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """One file in the state directory that is not a record this driver wrote (cut short,
    edited, another program's): the listing goes on without it, and says so once."""
    spec = ReplicaSpec("default", "default-2222", "", command=(*SIM_PROCESS["command"],))
    driver = ProcessDriver(tmp_path, "me")
    instance = await driver.start(spec)
    try:
        (tmp_path / "default-bad.json").write_bytes(content)
        for _ in range(2):
            assert [i.replica_id for i in await driver.list("default")] == ["default-2222"]
        skipped = [r for r in caplog.records if "not a replica record" in r.getMessage()]
        assert len(skipped) == 1
    finally:
        await driver.stop(instance, timeout_s=5)
