"""The peers' configs say what the gateway's config says (their programs accept them:
``tests/component/test_bench_configs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config
from load.bench.contestants import (
    CONTESTANTS,
    Limits,
    gateway_config,
    haproxy_config,
    nginx_config,
)

BACKENDS = ["http://127.0.0.1:9101", "http://127.0.0.1:9102", "http://127.0.0.1:9103"]
LIMITS = Limits(max_inflight=6)


def lines(text: str) -> list[str]:
    """Directives, without comments or indentation."""
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


def test_the_gateway_config_is_valid_and_carries_the_shared_limits(tmp_path: Path) -> None:
    config = parse_config(gateway_config("peak_ewma", BACKENDS, 18080, LIMITS, tmp_path))
    pool = config.pools["default"]
    assert config.listen.host == "127.0.0.1" and config.admin.host == "127.0.0.1"
    assert pool.backends == tuple(BACKENDS)
    assert pool.policy == "peak_ewma"
    assert pool.retries.attempts == 2
    assert (pool.timeouts.connect_s, pool.timeouts.request_s, pool.queue.timeout_s) == (2, 10, 5)
    h = pool.health
    assert (h.interval_s, h.timeout_s, h.healthy_threshold, h.unhealthy_threshold) == (2, 1, 2, 3)
    assert pool.outlier.consecutive_failures == 5


def test_the_gateway_runs_its_defaults_for_the_per_replica_limit_and_hedging(
    tmp_path: Path,
) -> None:
    """Only the settings the peers share are set: nothing tuned to the replicas."""
    config = gateway_config("least_connections", BACKENDS, 18080, LIMITS, tmp_path)
    pool = config["pools"]["default"]
    assert set(pool) == {"policy", "backends", "queue", "timeouts", "retries", "health", "outlier"}


@pytest.mark.parametrize("balance", ["roundrobin", "leastconn"])
def test_haproxy_gets_the_same_settings(balance: str, tmp_path: Path) -> None:
    text = lines(haproxy_config(balance, BACKENDS, 18081, LIMITS, tmp_path))
    assert f"balance {balance}" in text
    assert "bind 127.0.0.1:18081" in text
    assert "nbthread 1" in text
    assert "retries 1" in text  # 1 retry after the first try: 2 tries, as the gateway
    assert "option redispatch 1" in text  # every retry on another server
    assert "retry-on conn-failure empty-response response-timeout 502 503 504" in text
    assert {"timeout connect 2s", "timeout server 10s", "timeout queue 5s"} <= set(text)
    default = next(ln for ln in text if ln.startswith("default-server"))
    for part in ("check inter 2s rise 2 fall 3", "observe layer7 error-limit 5",
                 "on-error mark-down", "maxconn 6"):  # fmt: skip
        assert part in default
    assert [ln for ln in text if ln.startswith("server ")] == [
        f"server r{i} {url.removeprefix('http://')}" for i, url in enumerate(BACKENDS)
    ]


@pytest.mark.parametrize(
    ("method", "directive"), [("round_robin", None), ("least_conn", "least_conn;")]
)
def test_nginx_gets_the_same_settings(method: str, directive: str | None, tmp_path: Path) -> None:
    text = lines(nginx_config(method, BACKENDS, 18082, LIMITS, tmp_path))
    assert ("least_conn;" in text) == (directive is not None)
    assert {"daemon off;", "worker_processes 1;", "listen 127.0.0.1:18082;"} <= set(text)
    assert "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;" in text
    assert "proxy_next_upstream_tries 2;" in text
    assert {"proxy_connect_timeout 2s;", "proxy_read_timeout 10s;", "keepalive 64;"} <= set(text)
    assert [ln for ln in text if ln.startswith("server 127.")] == [
        f"server {url.removeprefix('http://')} max_fails=5 fail_timeout=10s;" for url in BACKENDS
    ]
    assert all(str(tmp_path) in ln for ln in text if ln.startswith(("pid ", "error_log ")))


def test_every_contestant_has_a_unique_name() -> None:
    names = [c.name for c in CONTESTANTS]
    assert len(set(names)) == len(names)
    assert {c.kind for c in CONTESTANTS if c.peer} == {"haproxy", "nginx"}
