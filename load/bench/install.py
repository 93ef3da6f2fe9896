"""The peers' binaries: HAProxy and nginx from the distribution's packages, when missing.

Installed, never started as services: while ``apt-get`` runs, ``policy-rc.d`` answers 101
("action forbidden") to the packages' scripts, so neither is started or left running by
the install. The suite runs each peer itself, in the foreground, with its own config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PACKAGES = {"haproxy": "haproxy", "nginx": "nginx"}  # binary -> Debian package
POLICY = Path("/usr/sbin/policy-rc.d")  # see invoke-rc.d(8)
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def binary(name: str) -> str | None:
    """The path of ``name``, looking in the sbin folders too (not on every user's PATH)."""
    return shutil.which(name, path=SEARCH)


def ensure(names: list[str]) -> dict[str, str]:
    """The paths of the binaries ``names``, installing the missing ones with apt-get."""
    missing = [name for name in names if binary(name) is None]
    if missing:
        install([PACKAGES[name] for name in missing])
    paths = {name: binary(name) for name in names}
    found = {name: path for name, path in paths.items() if path is not None}
    if len(found) < len(names):
        raise RuntimeError(f"not installed: {', '.join(sorted(set(names) - set(found)))}")
    return found


def install(packages: list[str]) -> None:
    if os.geteuid() != 0 or binary("apt-get") is None:
        raise RuntimeError(f"install {' '.join(packages)} (needs root and apt-get)")
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    placed = not POLICY.exists()
    if placed:
        POLICY.write_text("#!/bin/sh\nexit 101\n")
        POLICY.chmod(0o755)
    try:
        if subprocess.run(command, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)  # a fresh machine
            subprocess.run(command, env=env, check=True)
    finally:
        if placed:
            POLICY.unlink()
