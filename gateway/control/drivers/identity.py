"""The gateway's instance id: which replicas on a shared engine or state_dir are its own.

Every replica a driver starts carries this id, and drivers list, adopt and remove only
replicas carrying it, so two gateways never touch each other's replicas, even with the same
pool names. The id is the config's ``cluster`` name, or else a random one made once and kept
in ``state_dir``: a restarted gateway has the same id and adopts its replicas again.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from gateway.config import INSTANCE_ID

ID_FILE = "instance-id"


def instance_id(cluster: str | None, state_dir: Path) -> str:
    """``cluster`` if set, else the id kept in ``state_dir``, made on first use. Created
    whole and atomically (a link), so gateways racing on one state_dir agree on it."""
    if cluster is not None:
        return cluster
    path = state_dir / ID_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        draft = state_dir / f".{ID_FILE}.{os.getpid()}"
        draft.write_text(secrets.token_hex(8) + "\n")
        with contextlib.suppress(FileExistsError):  # another gateway won: take its id
            os.link(draft, path)
        draft.unlink()
    found = path.read_text().strip()
    if not re.fullmatch(INSTANCE_ID, found):
        raise ValueError(f"{path}: not an instance id: {found!r}")
    return found
