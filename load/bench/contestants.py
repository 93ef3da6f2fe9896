"""The contestants: the gateway with each policy, HAProxy, nginx, and no proxy at all.

Each peer gets the gateway's settings, spelled in its own config language, from one
``Limits``: the same connect and response timeouts, two tries per request (the second on
another replica, only for failures that did not reach the client), health checks on the
same schedule where the peer has them. What a peer cannot do (open source nginx has no
active health checks and no queue in front of a full server) is left out and said so in
the rendered config. The gateway sets nothing else: its per-replica limit (learned, below
a ceiling) and its hedging are its defaults, as a user who tuned nothing would run it;
HAProxy's per-server ``maxconn`` is ``Limits.max_inflight``.

One process each on one core: the gateway is one event loop, so HAProxy runs one thread
(``nbthread 1``) and nginx one worker (``worker_processes 1``), and that core is the
proxy's alone (``load.procs.proxy_apart``: the replicas and the load generator run on
the others). Every peer runs in the
foreground as our child (``haproxy -db``, nginx ``daemon off``), with its config, pid file
and logs in the run's folder, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.control.drivers import free_port
from load.procs import Procs, python, write_config

MAX_OUTSTANDING = 4000  # the load generator's cap on requests out at once
SESSIONS = 5000  # requests a proxy may hold at once: one client, one upstream connection each


@dataclass(frozen=True)
class Limits:
    """The settings every proxy shares; times in seconds."""

    max_inflight: int = 4  # HAProxy maxconn per server (the gateway learns its own limit)
    connect_s: float = 2.0
    response_s: float = 10.0  # the wait for a response head
    queue_s: float = 5.0  # the longest wait for a free replica (gateway and HAProxy queue)
    queue_size: int = 512  # gateway only; HAProxy's backend queue has no total bound
    attempts: int = 2  # tries per request, the first included
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    rise: int = 2
    fall: int = 3
    error_limit: int = 5  # failed requests in a row that take a replica out
    ejection_s: float = 10.0  # gateway base ejection, nginx fail_timeout


@dataclass(frozen=True)
class Contestant:
    """``kind`` is the program; ``policy`` its balancing setting, spelled its own way."""

    kind: str  # direct | gateway | haproxy | nginx
    policy: str

    @property
    def name(self) -> str:
        return self.kind if self.kind == "direct" else f"{self.kind}-{self.policy}"

    @property
    def peer(self) -> bool:
        return self.kind in ("haproxy", "nginx")


CONTESTANTS = (
    Contestant("direct", "round_robin"),  # the client spreads requests itself
    *(Contestant("gateway", p) for p in ("round_robin", "least_connections", "p2c", "peak_ewma")),
    Contestant("haproxy", "roundrobin"),
    Contestant("haproxy", "leastconn"),
    Contestant("nginx", "round_robin"),
    Contestant("nginx", "least_conn"),
)


def gateway_config(
    policy: str, backends: list[str], port: int, limits: Limits, out: Path
) -> dict[str, Any]:
    lim = limits
    pool = {
        "policy": policy,
        "backends": backends,
        # no max_inflight_per_replica and no hedging: the defaults (a learned per-replica
        # limit below a ceiling; hedging on, which no peer has)
        "queue": {"max_size": lim.queue_size, "timeout_s": lim.queue_s},
        "timeouts": {"connect_s": lim.connect_s, "request_s": lim.response_s},
        "retries": {"attempts": lim.attempts},
        "health": {"interval_s": lim.health_interval_s, "timeout_s": lim.health_timeout_s,
                   "healthy_threshold": lim.rise, "unhealthy_threshold": lim.fall},
        "outlier": {"consecutive_failures": lim.error_limit, "base_ejection_s": lim.ejection_s},
    }  # fmt: skip
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "routes": [{"path": "/", "pool": "default"}],
        "state_dir": str(out / "state"),
        "pools": {"default": pool},
    }


def haproxy_config(balance: str, backends: list[str], port: int, limits: Limits, out: Path) -> str:
    lim = limits
    servers = "\n".join(
        f"    server r{i} {url.removeprefix('http://')}" for i, url in enumerate(backends)
    )
    return f"""\
# HAProxy 2.6, rendered by load/bench/contestants.py with the gateway's settings.
global
    nbthread 1                      # one core, like the gateway's one event loop
    maxconn {SESSIONS}                    # HAProxy counts sessions
    pidfile {out}/haproxy.pid

defaults
    mode http
    # the response head's timeout is "timeout server"; "timeout queue" the longest wait
    # for a server under its maxconn, like the gateway's queue timeout
    timeout connect {lim.connect_s:g}s
    timeout server {lim.response_s:g}s
    timeout queue {lim.queue_s:g}s
    timeout client 30s
    timeout check {lim.health_timeout_s:g}s
    # Two tries, the second on another server: "retries" counts the retries after the
    # first try, and redispatch 1 re-balances on every retry (the default only on the last).
    retries {lim.attempts - 1}
    option redispatch 1
    # The gateway retries on no connection, a reset or a timeout before the response head,
    # and a 502/503/504 from the replica. L7 retries buffer the request and replay it,
    # POST included (HAProxy does not restrict them to idempotent methods).
    retry-on conn-failure empty-response response-timeout 502 503 504
    # No hedging as the gateway's: a hung try is retried only after "timeout server".

frontend bench
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance {balance}
    option httpchk GET /health
    # Active checks on the gateway's schedule; passive: error-limit failed answers in a
    # row (5xx but 501/505, timeouts, resets) take a server down until its checks bring
    # it back. maxconn caps each server (the gateway learns its own limit, below a
    # ceiling): the requests over it queue here.
    default-server check inter {lim.health_interval_s:g}s rise {lim.rise} fall {lim.fall} \
observe layer7 error-limit {lim.error_limit} on-error mark-down maxconn {lim.max_inflight}
{servers}
"""


def nginx_config(method: str, backends: list[str], port: int, limits: Limits, out: Path) -> str:
    lim = limits
    servers = "\n".join(
        f"        server {url.removeprefix('http://')} max_fails={lim.error_limit} "
        f"fail_timeout={lim.ejection_s:g}s;"
        for url in backends
    )
    balance = "least_conn;" if method == "least_conn" else "# round robin, the default"
    return f"""\
# nginx (open source), rendered by load/bench/contestants.py with the gateway's settings.
daemon off;                         # our child, in the foreground
worker_processes 1;                 # one core, like the gateway's one event loop
pid {out}/nginx.pid;
error_log {out}/nginx-error.log warn;  # also given with -e: nginx opens it before this file

events {{
    worker_connections {2 * SESSIONS};     # nginx counts connections
}}

http {{
    access_log off;
    client_body_temp_path {out}/tmp/body;
    proxy_temp_path {out}/tmp/proxy;
    fastcgi_temp_path {out}/tmp/fastcgi;
    uwsgi_temp_path {out}/tmp/uwsgi;
    scgi_temp_path {out}/tmp/scgi;

    upstream replicas {{
        {balance}
        # No active health checks and no queue in open source nginx (and max_conns without
        # a queue answers 502 when all servers are full), so no per-replica cap: requests
        # wait in the replicas. Passive checks: max_fails failures (what proxy_next_upstream
        # lists) within fail_timeout take a server out for fail_timeout.
{servers}
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout {lim.connect_s:g}s;
            proxy_read_timeout {lim.response_s:g}s;
            proxy_send_timeout {lim.response_s:g}s;
            # the gateway's retry conditions, POST included; tries count the first one
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries {lim.attempts};
            # no hedging as the gateway's: a hung try is retried only after proxy_read_timeout
            proxy_next_upstream_timeout {lim.response_s:g}s;
        }}
    }}
}}
"""


@dataclass
class Target:
    """Where the load goes, and the proxy process (None for direct)."""

    urls: list[str]
    proc: subprocess.Popen[bytes] | None


def launch(
    c: Contestant,
    procs: Procs,
    backends: list[str],
    limits: Limits,
    binaries: dict[str, str],
    cores: set[int] | None = None,
) -> Target:
    """Write ``c``'s config into ``procs.log_dir`` and start it on ``cores`` (nothing for
    direct)."""
    if c.kind == "direct":
        return Target([f"{url}/predict" for url in backends], None)
    port, out = free_port(), procs.log_dir
    if c.kind == "gateway":
        config = gateway_config(c.policy, backends, port, limits, out)
        path = write_config(out / "gateway.yaml", config)
        argv = python("gateway", "run", "--config", str(path))
    elif c.kind == "haproxy":
        path = out / "haproxy.cfg"
        path.write_text(haproxy_config(c.policy, backends, port, limits, out))
        argv = [binaries["haproxy"], "-db", "-f", str(path)]
    else:
        (out / "tmp").mkdir(exist_ok=True)
        path = out / "nginx.conf"
        path.write_text(nginx_config(c.policy, backends, port, limits, out))
        log = str(out / "nginx-error.log")  # -e: else it opens /var/log/nginx's first
        argv = [binaries["nginx"], "-p", str(out), "-c", str(path), "-e", log]
    return Target([f"http://127.0.0.1:{port}/predict"], procs.start(c.name, argv, cores))
