"""`docker compose up` end to end on the real engine: the front door as an operator meets it.

For each Compose spelling found here (v2 ``docker compose``, v1 ``docker-compose``), one
test brings up the repository's docker-compose.yml with ``up -d --build``, gets a
``/predict`` answer from a container the gateway started, changes the policy file and
reloads it through the admin API, sees the change take effect (a second replica), and
checks that ``down`` leaves no container of ours behind.

Isolation from a stack a developer may be running on the same engine, and from other test
runs: a project name, host ports, network name and pool name of the run's own. The pool
name matters most: replicas are found by their labels (managed-by + pool), so a gateway
whose pool were called ``default`` would adopt, or remove, another gateway's replicas. The
run gets its pool name from a copy of config/compose.yaml in a temporary folder, which is
mounted in place of ./config (``GATEWAY_CONFIG_DIR``); cleanup then removes only
containers labelled with that unique pool, and only the network of that unique name.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker.errors
import pytest
import yaml

from gateway.control.drivers import MANAGED_BY, MANAGER, POOL
from tests.conftest import free_port
from tests.docker.conftest import REPO_ROOT

# A first build installs the dependencies (tens of seconds); later ones hit the cache.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SPELLINGS: dict[str, tuple[str, ...]] = {"v2": ("docker", "compose"), "v1": ("docker-compose",)}
T = TypeVar("T")


@functools.cache
def compose_missing(spelling: str) -> str | None:
    """Why this spelling of Compose cannot be used here, or None when it answers."""
    argv = SPELLINGS[spelling]
    name = " ".join(argv)
    if shutil.which(argv[0]) is None:
        return f"`{name}` (Compose {spelling}) is not installed: no {argv[0]} on PATH"
    try:
        proc = subprocess.run(
            [*argv, "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{name}` (Compose {spelling}) does not run: {exc}"
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`{name}` (Compose {spelling}) is not installed: {said[0] if said else proc.returncode}"
    return None


@dataclass
class Stack:
    """One compose project of this test run, and how to reach it."""

    argv: tuple[str, ...]
    project: str
    pool: str
    network: str
    config_dir: Path
    port: int
    admin_port: int
    token: str

    @property
    def env(self) -> dict[str, str]:
        # Set every variable docker-compose.yml reads: the developer's environment or a .env
        # file must not point the test at their own ports, config or network.
        return {
            **os.environ,
            "GATEWAY_IMAGE": "inference-gateway:latest",
            "GATEWAY_CONFIG": "compose.yaml",
            "GATEWAY_CONFIG_DIR": str(self.config_dir),
            "GATEWAY_PORT": f"127.0.0.1:{self.port}",  # loopback only, unlike the default
            "GATEWAY_ADMIN_PORT": str(self.admin_port),
            "GATEWAY_NETWORK": self.network,
            "GATEWAY_ADMIN_TOKEN": self.token,
        }

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, "-p", self.project, "-f", str(COMPOSE_FILE), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def write_config(self, **changes: Any) -> None:
        """config/compose.yaml, renamed to this run's pool and network, with ``changes``
        applied to the pool (``autoscale`` as a dict of its own changes)."""
        config = yaml.safe_load((REPO_ROOT / "config" / "compose.yaml").read_text())
        pool = config["pools"].pop("default")
        config["pools"][self.pool] = pool
        config["routes"] = [{**route, "pool": self.pool} for route in config["routes"]]
        pool["autoscale"]["network"] = self.network
        pool["autoscale"].update(changes.pop("autoscale", {}))
        pool.update(changes)
        (self.config_dir / "compose.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Print the gateway's log when the block fails: the first thing one wants to see."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                logs = self.compose("logs", "--no-color", "--tail", "100", "gateway", timeout=30)
                print(f"--- gateway log ({' '.join(self.argv)}) ---\n{logs.stdout}{logs.stderr}")
            raise


@pytest.fixture(params=sorted(SPELLINGS, reverse=True))
def stack(request: pytest.FixtureRequest, client: Any, tmp_path: Path) -> Iterator[Stack]:
    spelling: str = request.param
    missing = compose_missing(spelling)
    if missing is not None:
        nothing = all(compose_missing(s) is not None for s in SPELLINGS)
        if nothing and os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(f"REQUIRE_DOCKER=1 but no Compose at all; {missing}", pytrace=False)
        pytest.skip(missing)
    run = f"igwtest{secrets.token_hex(4)}"
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    stack = Stack(
        argv=SPELLINGS[spelling],
        project=run,
        pool=f"ctest-{run[7:]}",
        network=f"{run}-net",
        config_dir=config_dir,
        port=free_port(),
        admin_port=free_port(),
        token=secrets.token_urlsafe(16),
    )
    stack.write_config()
    yield stack
    # Whatever the test left: the project's own containers and network, then replicas of
    # this run's pool (a gateway killed mid-drain may leave some), then the network if a
    # leftover replica kept compose from removing it. Nothing is matched by a broad name.
    stack.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=180)
    labels = [f"{MANAGED_BY}={MANAGER}", f"{POOL}={stack.pool}"]
    for container in client.containers.list(all=True, filters={"label": labels}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for network in client.networks.list(names=[stack.network]):
        if network.name == stack.network:  # the engine's name filter also matches prefixes
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.remove()


def wait_for(probe: Callable[[], T | None], within: float, what: str) -> T:
    """Poll ``probe`` until it returns something other than None (or raise after
    ``within`` seconds, naming ``what``)."""
    deadline = time.monotonic() + within
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.25)
    return value


def request_json(
    method: str, url: str, body: bytes | None = None, token: str | None = None
) -> tuple[int, Any]:
    """(status, JSON body) of one request; raises OSError when nothing answered."""
    request = urllib.request.Request(url, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


DIGIT = json.dumps({"inputs": [[0.0] * 64]}).encode()  # one 8x8 image, all blank


def predict(stack: Stack) -> tuple[dict[str, Any], str] | None:
    """One POST /predict: the answer and the replica that gave it (its X-Replica header),
    or None while it is not a 200 yet."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.port}/predict",
        data=DIGIT,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read()), response.headers["X-Replica"]
    except (OSError, http.client.HTTPException):  # not listening yet, reset, or not a 200
        return None


def admin(stack: Stack, method: str, path: str, auth: bool | str = True) -> tuple[int, Any]:
    """One admin request: with the stack's token (``auth=True``), none, or the one given."""
    token = stack.token if auth is True else auth or None
    body = b"" if method == "POST" else None
    return request_json(method, f"http://127.0.0.1:{stack.admin_port}{path}", body, token)


def our_containers(client: Any, stack: Stack, all: bool = False) -> list[Any]:
    """The replicas of this run's pool, found by our labels only."""
    labels = [f"{MANAGED_BY}={MANAGER}", f"{POOL}={stack.pool}"]
    return client.containers.list(all=all, filters={"label": labels})


def network_exists(client: Any, name: str) -> bool:
    # the engine's name filter matches substrings too: compare the names
    return any(network.name == name for network in client.networks.list(names=[name]))


def test_compose_up_predict_reload_down(stack: Stack, client: Any) -> None:
    started = time.monotonic()
    up = stack.compose("up", "-d", "--build", timeout=480)
    assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
    built = time.monotonic()

    with stack.logs_on_failure():
        # 1. The front door: answered by a model-server container the gateway started. It
        #    names itself after its container's hostname, the short container id.
        answer, replica = wait_for(lambda: predict(stack), 180, "a 200 from POST /predict")
        served = time.monotonic()
        replicas = {c.id[:12]: c for c in our_containers(client, stack)}
        assert len(answer["predictions"]) == 1 and len(answer["probabilities"][0]) == 10
        assert replica in replicas, (replica, sorted(replicas))
        networks = replicas[replica].attrs["NetworkSettings"]["Networks"]
        assert stack.network in networks  # the compose network, reached by name

        # 2. The admin API, on the published admin port, behind the bearer token.
        assert admin(stack, "GET", "/admin/pools", auth=False)[0] == 401
        assert admin(stack, "GET", "/admin/pools", auth="wrong")[0] == 401
        status, body = admin(stack, "GET", "/admin/pools")
        assert status == 200, body
        pool = body["pools"][stack.pool]
        assert (pool["policy"], pool["min_replicas"]) == ("peak_ewma", 1)

        # 3. A changed policy file, reloaded live: routing policy and the replica floor.
        stack.write_config(policy="least_connections", autoscale={"min_replicas": 2})
        status, body = admin(stack, "POST", "/admin/reload")
        assert (status, body["reloaded"]) == (200, True), body
        status, body = admin(stack, "GET", "/admin/pools")
        pool = body["pools"][stack.pool]
        assert (pool["policy"], pool["min_replicas"]) == ("least_connections", 2)

        def two_ready() -> bool | None:
            status, body = admin(stack, "GET", "/admin/pools")
            if status != 200:
                return None
            replicas = body["pools"][stack.pool]["replicas"]
            ready = [r for r in replicas if r["state"] == "ready" and r["healthy"]]
            return True if len(ready) == 2 and len(our_containers(client, stack)) == 2 else None

        wait_for(two_ready, 60, "a second replica after raising min_replicas to 2")
        assert predict(stack) is not None  # still answering
        reloaded = time.monotonic()

        # 4. `down`: SIGTERM makes the gateway (on_exit: stop) drain and remove its replicas
        #    before it exits; compose then removes its own containers and the network.
        down = stack.compose("down", "-t", "60")
        assert down.returncode == 0, f"down failed:\n{down.stdout}\n{down.stderr}"
        assert our_containers(client, stack, all=True) == []
        assert not network_exists(client, stack.network)
    print(
        f"{' '.join(stack.argv)}: up --build {built - started:.1f} s, first 200 after "
        f"{served - built:.1f} s, reload to 2 ready {reloaded - served:.1f} s, "
        f"down {time.monotonic() - reloaded:.1f} s"
    )
