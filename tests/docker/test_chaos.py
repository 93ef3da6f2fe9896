"""Chaos against the real engine (issue 12): the engine's API goes away or hangs under
load (a), or is away while the gateway starts (a2); the gateway is SIGKILLed and restarted
(b); an image crash-loops (c); a replica is killed by the engine (d).

Every test drives real requests (open loop, ``RPS`` a second) through a gateway to sim
replicas in containers, and prints its figures on one ``CHAOS ...`` line (shown even
when output is captured) so they can be quoted: client errors, recovery time,
containers before and after. Every container a test makes carries a gateway instance id
(``cluster``) of its own, and is removed by that label afterwards, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker.errors
import pytest
import yaml

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.control import lifecycle as lifecycle_module
from gateway.control.drivers import REPLICA
from gateway.control.drivers import docker as docker_driver
from tests.conftest import FAST_SCALING, eventually, free_port
from tests.docker.chaos import (
    EngineRelay,
    SteadyLoad,
    containers,
    metric,
    running,
)
from tests.docker.conftest import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

RPS = 20  # steady load, requests a second
OUTAGE_S = 30.0  # how long the engine is away in (a)
AWAY_AT_START_S = 3.0  # ... in (a2), when the gateway starts
CRASH_WINDOW_S = 20.0  # how long (c) watches a crash-looping pool
HEALTH_S = 0.5  # health-check interval of every pool here


# -- fixtures and config -------------------------------------------------------------------


@pytest.fixture
def cluster(client: Any) -> Iterator[str]:
    """A gateway instance id no other run uses; afterwards every container carrying it is
    removed (two sweeps: a create still in flight when the test ended lands in between)."""
    name = f"chaos-{secrets.token_hex(4)}"
    yield name
    for sweep in range(2):
        for row in containers(client, name):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(row["Id"], force=True)
        if sweep == 0:
            time.sleep(1.0)


@pytest.fixture
async def relay() -> AsyncIterator[EngineRelay]:
    """A relay in front of the engine's socket, on a short path (sun_path holds 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="igw-relay-", dir="/tmp")
    proxy = EngineRelay(os.path.join(folder, "docker.sock"))
    await proxy.start()
    yield proxy
    await proxy.close()
    shutil.rmtree(folder, ignore_errors=True)


def report(capsys: pytest.CaptureFixture[str], test: str, **figures: Any) -> None:
    line = f"CHAOS {test}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    with capsys.disabled():
        print(f"\n{line}", flush=True)


def sim(*args: str) -> list[str]:
    """The sim's command, named after its container (``X-Replica`` = the short id)."""
    return ["sh", "-c", f"exec python -m backends.sim --host 0.0.0.0 --port $PORT "
            f"--name $HOSTNAME {' '.join(args)}"]  # fmt: skip


def pool_config(image: str, command: list[str], **autoscale: Any) -> dict[str, Any]:
    return {
        "policy": "least_connections",
        "max_inflight_per_replica": 8,
        "health": {"interval_s": HEALTH_S, "timeout_s": 0.5},
        "autoscale": {**FAST_SCALING, "driver": "docker", "image": image, "command": command,
                      **autoscale},
    }  # fmt: skip


def gateway_config(
    cluster: str, pools: dict[str, Any], routes: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    routes = routes or [("/", next(iter(pools)))]
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "routes": [{"path": path, "pool": name} for path, name in routes],
        "pools": pools,
        "drain_timeout_s": 5,
        "cluster": cluster,
    }


def short_ids(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(row["Id"][:12] for row in rows)


def summary(load: SteadyLoad, since: float = 0.0, until: float = float("inf")) -> str:
    errors = load.errors(since, until)
    kinds = sorted({o.error or str(o.status) for o in errors})
    return f"{len(errors)}/{load.sent(since, until)}" + (f" {kinds}" if kinds else "")


async def scrape(session: aiohttp.ClientSession, admin_port: int) -> str:
    async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        return await resp.text()


# -- (a) the engine's API away under load ------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("failure", ["refuse", "hang"])
async def test_engine_outage_under_load(
    failure: str,
    cluster: str,
    relay: EngineRelay,
    gateway: Any,
    client: Any,
    image: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The engine refuses connections (down), or accepts and answers nothing (hung), for
    ``OUTAGE_S`` while requests flow, and the pool is asked for a third replica meanwhile.
    The replicas in place serve on, the failed starts are counted, the outage is logged
    once when it begins and once when it ends, and when the engine is back the
    autoscaler starts the third replica, once."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{relay.path}")  # the gateway's driver only
    if failure == "hang":  # every call to a hung engine times out: sooner, for CI's sake
        monkeypatch.setattr(docker_driver, "API_TIMEOUT_S", 5.0)
    caplog.set_level(logging.INFO)
    pool = f"{cluster}-p"
    config = gateway_config(
        cluster, {pool: pool_config(image, sim("--service-ms", "50"), min_replicas=2,
                                    max_replicas=2)}
    )  # fmt: skip
    gw = await gateway(config)
    scaler = gw.autoscalers[pool]
    await eventually(lambda: scaler.count["ready"] == 2, 30, what="2 replicas ready")
    before = short_ids(containers(client, cluster))
    async with aiohttp.ClientSession() as http:
        load = SteadyLoad(http, f"{gw.url}/predict", RPS).start()
        try:
            await asyncio.sleep(2)
            began, began_wall = time.monotonic(), time.time()
            if failure == "refuse":
                await relay.refuse()
            else:
                relay.hang()
            scaler.apply(scaler.settings.model_copy(update={"min_replicas": 3, "max_replicas": 3}))
            await asyncio.sleep(OUTAGE_S)
            during = short_ids(containers(client, cluster))
            failed = metric(await scrape(http, gw.admin_port),
                            "gateway_replica_start_failures_total", pool=pool, reason="driver")  # fmt: skip
            ended, ended_wall = time.monotonic(), time.time()
        finally:
            await relay.restore()
        recovery_s = await eventually(
            lambda: (
                scaler.count["ready"] == 3
                and len(running(client, cluster)) == 3
                and len(containers(client, cluster)) == 3  # no late create left behind
            ),
            40,
            what="a third replica, and nothing else",
        )
        await asyncio.sleep(2)  # ticks go by: a duplicate would show now
        await load.stop()
        scraped = await scrape(http, gw.admin_port)
        failed_total = metric(scraped, "gateway_replica_start_failures_total", pool=pool,
                              reason="driver")  # fmt: skip
        driver_errors = metric(scraped, "gateway_driver_errors_total", pool=pool)
    after = containers(client, cluster)
    records = [r for r in caplog.records if r.name.startswith("gateway")]
    loud = [r for r in records if r.levelno >= logging.WARNING and
            began_wall <= r.created < ended_wall + 1]  # fmt: skip

    def logged(*words: str) -> list[logging.LogRecord]:
        return [r for r in loud if any(w in r.getMessage() for w in words)]

    stream_lost = logged("event stream ended", "cannot watch events")
    start_failed = logged("start failed")
    late_create = logged("no start accounts for it")
    down = [r for r in records if "driver unavailable" in r.getMessage()]
    back = [r for r in records if "driver available again" in r.getMessage()]
    reconcile_errors = [r for r in records if "reconcile failed" in r.getMessage()]
    strays = [r for r in records if "no start accounts for it" in r.getMessage()]
    ticks = OUTAGE_S / FAST_SCALING["tick_s"]
    failed_calls = back[0].getMessage().rpartition("(")[2].split()[0] if back else "?"
    report(
        capsys, f"(a) engine {failure}s {OUTAGE_S:.0f} s",
        errors=summary(load), errors_during_outage=summary(load, began, ended),
        start_failures_counted=int(failed), recovery_s=f"{recovery_s:.2f}",
        containers_before=len(before), during=len(during), after=len(after),
        warnings_during=f"{len(loud)} (ticks {ticks:.0f})", down_logs=len(down),
        back_logs=len(back), failed_driver_calls=failed_calls,
        driver_errors_counted=int(driver_errors),
        late_creates_removed=len(strays),
        relay_connections=relay.connections,
    )  # fmt: skip
    assert load.sent() > RPS * OUTAGE_S
    assert load.errors() == []
    assert during == before  # nothing could change while the engine was away
    assert failed >= 1  # the third replica's starts failed, and were counted
    assert driver_errors >= 1 and str(int(driver_errors)) == failed_calls  # each one counted
    assert len(after) == 3 and all(c["State"] == "running" for c in after)
    assert set(before) < set(short_ids(after))  # the two kept, one more: no duplicate
    replica_ids = {c["Labels"][REPLICA] for c in after}
    assert replica_ids == set(scaler.members) == set(gw.pools[pool].replicas)
    assert len(down) == 1 and down[0].created < ended_wall  # once, when it began
    assert len(back) == 1 and back[0].created >= ended_wall  # once, when it ended
    assert reconcile_errors == []
    # the outage once, the event stream once, each failed start (backed off), each late
    # create removed: nothing once per tick
    assert len(stream_lost) <= 1 and len(start_failed) <= failed_total
    assert len(loud) == len(down) + len(stream_lost) + len(start_failed) + len(late_create)
    assert recovery_s < 10


@pytest.mark.timeout(90)
async def test_gateway_started_while_the_engine_is_away_adopts_once_it_is_back(
    cluster: str,
    relay: EngineRelay,
    gateway: Any,
    client: Any,
    image: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A gateway whose replicas are running starts while the engine refuses connections:
    it adopts nothing and starts nothing while it cannot know what runs (requests wait,
    as for an empty pool), and adopts the replicas when the engine is back: no duplicate,
    no client error."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{relay.path}")
    caplog.set_level(logging.INFO)
    pool = f"{cluster}-p"
    config = gateway_config(
        cluster, {pool: pool_config(image, sim(), min_replicas=2, max_replicas=2,
                                    on_exit="keep")}
    )  # fmt: skip
    previous = Gateway(parse_config(config))
    await previous.start()
    try:
        await eventually(lambda: previous.autoscalers[pool].count["ready"] == 2, 30, what="ready")
    finally:
        await previous.stop()  # on_exit: keep, so its replicas run on
    before = short_ids(containers(client, cluster))
    await relay.refuse()
    seen_before = len(caplog.records)
    try:
        gw = await gateway(config)
        scaler = gw.autoscalers[pool]
        async with aiohttp.ClientSession() as http:
            load = SteadyLoad(http, f"{gw.url}/predict", RPS, timeout_s=30).start()
            try:
                await asyncio.sleep(AWAY_AT_START_S)
                members_while_away = len(scaler.members)
                await relay.restore()
                back = time.monotonic()
                adopted_s = await eventually(lambda: scaler.count["ready"] == 2, 20, what="adopted")
                await asyncio.sleep(1)  # ticks go by: a duplicate would show now
            finally:
                await load.stop()
    finally:
        await relay.restore()
    after = short_ids(containers(client, cluster))
    messages = [
        r.getMessage()
        for r in caplog.records[seen_before:]
        if r.name == "gateway.control.autoscaler"
    ]
    waited = [o.done - o.sent for o in load.outcomes if o.sent < back]
    report(
        capsys, f"(a2) gateway starts, engine away {AWAY_AT_START_S:.0f} s",
        errors=summary(load), members_while_away=members_while_away,
        adopted_after_back_s=f"{adopted_s:.2f}",
        longest_wait_s=f"{max(waited, default=0):.2f}",
        containers_before=len(before), after=len(after),
        down_logs=sum("driver unavailable" in m for m in messages),
    )  # fmt: skip
    assert members_while_away == 0
    assert after == before  # the same two: adopted, none started
    assert sum("adopted replica" in m for m in messages) == 2
    assert not any("starting replica" in m for m in messages)
    assert load.errors() == [] and load.sent() >= RPS * AWAY_AT_START_S
    assert sum("driver unavailable" in m for m in messages) == 1


# -- (b) the gateway SIGKILLed under load, and restarted --------------------------------


@pytest.mark.timeout(120)
async def test_gateway_sigkill_under_load_restarts_and_adopts(
    cluster: str, client: Any, image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the gateway (a real ``python -m gateway run``) under load, just as it is
    starting a third replica, and start it again with the same ``cluster``: it adopts what
    it finds, the adopted replicas serve within one health interval of the new gateway's
    listener, and afterwards the containers with our labels are exactly the pool's
    replicas: no orphan (the half-started third is adopted then drained, or removed),
    no duplicate."""
    health_s = 1.0
    pool = f"{cluster}-p"
    port, admin_port = free_port(), free_port()
    config = gateway_config(
        cluster, {pool: pool_config(image, sim("--service-ms", "50"), min_replicas=2,
                                    max_replicas=2, on_exit="keep")}
    )  # fmt: skip
    config["pools"][pool]["health"]["interval_s"] = health_s
    config["listen"]["port"], config["admin"]["port"] = port, admin_port
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": token}
    url = f"http://127.0.0.1:{port}"
    procs: list[asyncio.subprocess.Process] = []

    async def run_gateway(log: str) -> asyncio.subprocess.Process:
        out = await asyncio.to_thread((tmp_path / log).open, "wb")
        with out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", "--config", str(path),
                cwd=REPO_ROOT, env=env, stdout=out, stderr=out,
            )  # fmt: skip
        procs.append(proc)
        return proc

    async def up(session: aiohttp.ClientSession, what: str) -> bool:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            timeout = aiohttp.ClientTimeout(total=2)
            async with session.get(f"{url}{what}", timeout=timeout) as resp:
                return resp.status == 200
        return False

    connector = aiohttp.TCPConnector(force_close=True)  # no connection outlives a gateway
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            first = await run_gateway("first.log")
            for _ in range(600):
                if len(running(client, cluster)) == 2 and await up(http, "/healthz"):
                    text = await scrape(http, admin_port)
                    if metric(text, "gateway_replicas", pool=pool, state="ready") == 2:
                        break
                await asyncio.sleep(0.05)
            before = short_ids(containers(client, cluster))
            assert len(before) == 2
            load = SteadyLoad(http, f"{url}/predict", RPS, timeout_s=5).start()
            try:
                await asyncio.sleep(2)
                headers = {"Authorization": f"Bearer {token}"}
                async with http.put(
                    f"http://127.0.0.1:{admin_port}/admin/pools/{pool}/scale",
                    json={"min_replicas": 3, "max_replicas": 3}, headers=headers,
                ) as resp:  # fmt: skip
                    assert resp.status == 200, await resp.text()
                third: list[dict[str, Any]] = []
                for _ in range(500):  # kill as soon as the engine shows the third container
                    third = [c for c in containers(client, cluster)
                             if c["Id"][:12] not in before]  # fmt: skip
                    if third:
                        break
                    await asyncio.sleep(0.01)
                first.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await first.wait()
                third_at_kill = third[0]["State"] if third else "none"
                await run_gateway("second.log")
                await eventually(lambda: up(http, "/healthz"), 6, 0.01, what="the listener")
                listening = time.monotonic()
                served = await eventually(
                    lambda: any(o.status == 200 and o.done >= listening for o in load.outcomes),
                    10, 0.01, what="a request served after the restart",
                )  # fmt: skip
                first = min((o for o in load.outcomes if o.status == 200 and o.done >= listening),
                            key=lambda o: o.done)  # fmt: skip
                first_ok = first.done
                text = ""

                async def converged() -> bool:
                    nonlocal text
                    text = await scrape(http, admin_port)
                    rows = containers(client, cluster)
                    return (
                        len(rows) == 2
                        and all(c["State"] == "running" for c in rows)
                        and metric(text, "gateway_replicas", pool=pool, state="ready") == 2
                        and sum(metric(text, "gateway_replicas", pool=pool, state=s)
                                for s in ("starting", "draining", "failed")) == 0
                    )  # fmt: skip

                await eventually(converged, 45, 0.1, what="the pool converged")
                converged_s = time.monotonic() - listening
                await asyncio.sleep(2)  # ticks go by: a duplicate or an orphan would show now
            finally:
                await load.stop()
            assert await converged()
            after = containers(client, cluster)
            in_pool = {
                line.split('replica="')[1].split('"')[0]
                for line in text.splitlines()
                if line.startswith("gateway_replica_up{") and f'pool="{pool}"' in line
            }
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    second_log = (tmp_path / "second.log").read_text()
    adopted = second_log.count("adopted replica")
    report(
        capsys, "(b) gateway SIGKILL + restart",
        errors_after_restart=summary(load, listening),
        errors_while_down=summary(load, killed - 0.5, listening),
        down_s=f"{listening - killed:.2f}", first_answer_after_listen_s=f"{first_ok - listening:.3f}",
        converged_s=f"{converged_s:.2f}", third_at_kill=third_at_kill,
        containers_before=len(before), after=len(after), adopted=adopted,
        kept=len(set(before) & set(short_ids(after))),
        removed_leftovers=second_log.count("removing leftover"),
        started_by_second=second_log.count("starting replica"),
    )  # fmt: skip
    assert served < 10
    assert load.errors(listening) == []  # the restarted gateway failed no request
    assert first_ok - listening <= health_s  # adopted replicas serve within one interval
    assert first.replica in {*before, *(c["Id"][:12] for c in third)}  # an adopted one
    assert {c["Labels"][REPLICA] for c in after} == in_pool  # no orphan, no duplicate
    assert len(after) == 2
    assert second_log.count("starting replica") == 0  # it started nothing: all adopted
    assert adopted + second_log.count("removing leftover") == 2 + len(third)


# -- (c) an image whose container exits at once ------------------------------------------


@pytest.mark.timeout(90)
async def test_crash_looping_replicas_back_off_and_the_rest_serves(
    cluster: str,
    gateway: Any,
    client: Any,
    image: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One pool's containers exit at once. Its starts back off exponentially up to the
    cap (4 s here, to see the cap within the window), each counted in
    ``gateway_replica_start_failures_total``, exited containers are not left behind, and
    the other pool serves its steady load with no error throughout."""
    cap_s = 4.0
    monkeypatch.setattr(lifecycle_module, "MAX_BACKOFF_S", cap_s)
    good, bad = f"{cluster}-good", f"{cluster}-bad"
    config = gateway_config(
        cluster,
        {
            good: pool_config(image, sim(), min_replicas=2, max_replicas=2),
            bad: pool_config(
                image, ["sh", "-c", "echo crashing >&2; exit 3"], min_replicas=1, max_replicas=1
            ),
        },
        routes=[("/", good), ("/bad", bad)],
    )
    began_wall = time.time()
    gw = await gateway(config)
    await eventually(lambda: gw.autoscalers[good].count["ready"] == 2, 30, what="good pool ready")
    most_bad = 0
    async with aiohttp.ClientSession() as http:
        load = SteadyLoad(http, f"{gw.url}/predict", RPS).start()
        try:
            watch_until = time.monotonic() + CRASH_WINDOW_S
            while time.monotonic() < watch_until:
                most_bad = max(most_bad, len(containers(client, cluster, bad)))
                await asyncio.sleep(0.1)
        finally:
            await load.stop()
        text = await scrape(http, gw.admin_port)
    ended_wall = time.time()
    events = client.api.events(
        since=int(began_wall), until=int(ended_wall) + 1, decode=True,
        filters={"type": "container", "event": "create", "label": [f"io.inference-gateway.pool={bad}",
                                                                   f"io.inference-gateway.instance={cluster}"]},
    )  # fmt: skip
    creates = sorted(int(e["timeNano"]) / 1e9 for e in events)
    creates = [t for t in creates if began_wall <= t <= ended_wall]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(creates)]
    failures = metric(text, "gateway_replica_start_failures_total", pool=bad, reason="exited")
    window_s = ended_wall - creates[0] if creates else 0.0
    report(
        capsys, f"(c) crash loop, backoff cap {cap_s:.0f} s",
        start_attempts=len(creates), over_s=f"{window_s:.1f}", gaps_s=gaps,
        start_failures_counted=int(failures), most_bad_containers_at_once=most_bad,
        good_pool_errors=summary(load),
        good_containers=len(containers(client, cluster, good)),
    )  # fmt: skip
    assert load.errors() == [] and load.sent() >= RPS * CRASH_WINDOW_S * 0.9
    # no thrash: 2, 4, 4, 4 ... s between starts (plus a start's own second or so), where
    # a loop without backoff starts one each tick or two
    assert 3 <= len(creates) <= 2 + window_s / cap_s
    assert gaps[0] >= 2.0
    assert all(b >= a - 0.5 for a, b in itertools.pairwise(gaps))  # growing...
    assert all(cap_s <= g <= cap_s + 2.0 for g in gaps[1:])  # ...up to the cap
    assert len(creates) - 1 <= failures <= len(creates)  # each counted (the last: maybe not yet)
    assert most_bad <= 1  # each crashed container removed before the next start


# -- (d) a replica killed by the engine under load ---------------------------------------


@pytest.mark.timeout(90)
async def test_replica_sigkilled_by_the_engine_under_load(
    cluster: str, gateway: Any, client: Any, image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``docker kill -s KILL`` of one of two replicas while requests are in flight on it
    (200 ms each): they are retried on the other, no client sees an error, and the
    autoscaler replaces the dead one."""
    pool = f"{cluster}-p"
    config = gateway_config(
        cluster, {pool: pool_config(image, sim("--service-ms", "200"), min_replicas=2,
                                    max_replicas=2)}
    )  # fmt: skip
    gw = await gateway(config)
    scaler = gw.autoscalers[pool]
    await eventually(lambda: scaler.count["ready"] == 2, 30, what="2 replicas ready")
    before = containers(client, cluster)
    async with aiohttp.ClientSession() as http:
        load = SteadyLoad(http, f"{gw.url}/predict", RPS).start()
        try:
            await asyncio.sleep(2)
            victim = before[0]
            replica = gw.pools[pool].replicas[victim["Labels"][REPLICA]]
            await eventually(lambda: replica.inflight >= 2, 10, 0.005, what="work on the victim")
            inflight = replica.inflight
            killed = time.monotonic()
            client.api.kill(victim["Id"], signal="KILL")
            recovery_s = await eventually(
                lambda: (
                    scaler.count["ready"] == 2
                    and victim["Labels"][REPLICA] not in gw.pools[pool].replicas
                    and len(containers(client, cluster)) == 2
                    and len(running(client, cluster)) == 2
                ),
                30,
                what="the victim replaced",
            )
            await asyncio.sleep(2)
        finally:
            await load.stop()
        text = await scrape(http, gw.admin_port)
    after = containers(client, cluster)
    retries = sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("gateway_retries_total{") and f'pool="{pool}"' in line
    )
    hedges = metric(text, "gateway_hedges_total", pool=pool)
    served_by_victim_after = [
        o for o in load.outcomes if o.sent > killed + 0.5 and o.replica == victim["Id"][:12]
    ]
    report(
        capsys, "(d) replica docker kill -s KILL",
        errors=summary(load), inflight_on_victim=inflight, retries=int(retries),
        hedges=int(hedges),
        recovery_s=f"{recovery_s:.2f}", containers_before=len(before), after=len(after),
        victim_gone=all(c["Id"] != victim["Id"] for c in after),
    )  # fmt: skip
    assert load.errors() == []
    assert retries + hedges >= 1  # what was in flight on the victim went elsewhere
    assert served_by_victim_after == []
    assert len(after) == 2 and all(c["Id"] != victim["Id"] for c in after)
    assert {c["Labels"][REPLICA] for c in after} == set(gw.pools[pool].replicas)
    assert recovery_s < 10
