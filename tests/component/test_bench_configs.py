"""HAProxy and nginx accept the configs the benchmarks give them (the real binaries)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from load.bench.contestants import Limits, haproxy_config, nginx_config
from load.bench.install import binary

BACKENDS = ["http://127.0.0.1:9101", "http://127.0.0.1:9102"]
LIMITS = Limits(max_inflight=6)


@pytest.mark.skipif(binary("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("balance", ["roundrobin", "leastconn"])
def test_haproxy_accepts_its_config(balance: str, tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(balance, BACKENDS, 18081, LIMITS, tmp_path))
    argv = [str(binary("haproxy")), "-c", "-f", str(path)]
    check = subprocess.run(argv, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(binary("nginx") is None, reason="nginx is not installed")
@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_nginx_accepts_its_config(method: str, tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "nginx.conf"
    path.write_text(nginx_config(method, BACKENDS, 18082, LIMITS, tmp_path))
    argv = [str(binary("nginx")), "-t", "-p", str(tmp_path), "-c", str(path),
            "-e", str(tmp_path / "nginx-error.log")]  # fmt: skip
    check = subprocess.run(argv, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
