"""Config validation: defaults, and every bad key reported with its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config


def minimal(**pool: Any) -> dict[str, Any]:
    return {"routes": [{"path": "/predict", "pool": "default"}], "pools": {"default": pool}}


def routed(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"routes": list(routes), "pools": {"a": {}}}


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.errors


def test_defaults() -> None:
    config = parse_config(minimal(backends=["http://127.0.0.1:9001/"]))
    pool = config.pools["default"]
    assert (config.listen.port, config.admin.host, config.admin.port) == (8080, "127.0.0.1", 9090)
    assert pool.policy == "peak_ewma" and pool.backends == ("http://127.0.0.1:9001",)
    assert (pool.queue.max_size, pool.queue.timeout_s) == (512, 10.0)
    assert (pool.retries.attempts, pool.retries.budget_percent) == (2, 20.0)
    assert (pool.health.healthy_threshold, pool.health.unhealthy_threshold) == (2, 3)
    assert pool.outlier.max_ejected_percent == 50.0
    assert (pool.hedging.enabled, pool.hedging.max_extra_percent) == (True, 2.0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(health={"interval_s": 0}), "pools.default.health.interval_s: must be > 0"),
        (minimal(policy="fastest"), "pools.default.policy: unknown policy 'fastest'"),
        (
            minimal(max_inflight_per_replica=0),
            "pools.default.max_inflight_per_replica: must be >= 1",
        ),
        (minimal(queue={"size": 3}), "pools.default.queue.size: unknown key"),
        (minimal(backends=["127.0.0.1:9001"]), "pools.default.backends: '127.0.0.1:9001' is not"),
        (minimal(backends=["http://a:1", "http://a:1/"]), "pools.default.backends: duplicate"),
        (minimal(retries={"attempts": "two"}), "pools.default.retries.attempts: "),
        (
            minimal(hedging={"max_extra_percent": 100}),
            "pools.default.hedging.max_extra_percent: must be < 100",
        ),
        (
            minimal(outlier={"base_ejection_s": 60, "max_ejection_s": 30}),
            "pools.default.outlier.max_ejection_s: must be >=",
        ),
        ({"pools": {"a": {}}}, "routes: is required"),
        (
            {"routes": [{"path": "/", "pool": "b"}], "pools": {"a": {}}},
            "routes.0.pool: unknown pool 'b'",
        ),
        ([1, 2], "<root>: must be a mapping"),
        (routed({"path": "/v1", "pool": "a", "aliases": ["x"]}), "routes.0.aliases: need a model"),
        (
            routed(
                {"path": "/v1", "pool": "a", "model": "m"},
                {"path": "/v1", "pool": "a", "model": "n", "aliases": ["m"]},
            ),
            "routes.1.model: 'm' is already routed by routes.0",
        ),
        (
            routed({"path": "/v1", "pool": "a"}, {"path": "/v1", "pool": "a"}),
            "routes.1: a second route for /v1 with no model",
        ),
        (routed({"path": "/v1", "pool": "a", "model": ""}), "routes.0.model: "),
        (routed({"path": "/v1", "pool": "a", "deadline_s": 0}), "routes.0.deadline_s: must be > 0"),
        (
            minimal(autoscale={"slo": {"queue_wait_p99_s": -1}}),
            "pools.default.autoscale.slo.queue_wait_p99_s: must be > 0",
        ),
        (
            minimal(autoscale={"slo": {}}),
            "pools.default.autoscale.slo.queue_wait_p99_s: is required",
        ),
        (
            minimal(autoscale={"expected_startup_s": 0}),
            "pools.default.autoscale.expected_startup_s: must be > 0",
        ),
    ],
)
def test_bad_keys_are_named(data: Any, expected: str) -> None:
    assert any(e.startswith(expected) for e in errors_of(data)), errors_of(data)


def test_every_error_is_reported_at_once() -> None:
    data = minimal(policy="x", health={"interval_s": -1, "timeout_s": 0})
    data["listen"] = {"port": -1}
    assert len(errors_of(data)) == 4


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_routes_name_models_and_aliases() -> None:
    config = parse_config(routed({"path": "/v1", "pool": "a", "model": "m", "aliases": ["n"]},
                                 {"path": "/v1", "pool": "a"}))  # fmt: skip
    assert [r.models for r in config.routes] == [("m", "n"), ()]
