"""The instance id: the cluster name, or one random id per state_dir that a restart keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.control.drivers.identity import instance_id


def test_a_random_id_is_made_once_and_kept_in_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = instance_id(None, state_dir)
    assert instance_id(None, state_dir) == first  # a restarted gateway: the same id
    assert (state_dir / "instance-id").read_text().strip() == first
    assert instance_id(None, tmp_path / "other") != first  # another state_dir: another
    assert sorted(p.name for p in state_dir.iterdir()) == ["instance-id"]  # no drafts left


def test_the_cluster_name_wins_and_writes_nothing(tmp_path: Path) -> None:
    assert instance_id("prod-eu", tmp_path / "state") == "prod-eu"
    assert not (tmp_path / "state").exists()


def test_a_damaged_id_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "instance-id").write_text("\n")
    with pytest.raises(ValueError, match="not an instance id"):
        instance_id(None, tmp_path)


def test_cluster_is_validated_in_the_config() -> None:
    base = {"routes": [{"path": "/", "pool": "p"}], "pools": {"p": {}}}
    assert parse_config(base).cluster is None
    assert parse_config({**base, "cluster": "prod-eu.1"}).cluster == "prod-eu.1"
    with pytest.raises(ConfigError) as exc:
        parse_config({**base, "cluster": "a b"})
    assert exc.value.errors[0].startswith("cluster: ")
