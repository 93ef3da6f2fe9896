"""The GPU ledger: which replica holds which GPU ids, so that none is ever given out twice.

GPUs are a host-wide resource, so the gateway keeps one ledger over every pool. The ledger
is plain synchronous bookkeeping (no I/O, no asyncio): the autoscaler asks it for ids before
starting a replica, hands those ids to the driver (a Docker ``DeviceRequest`` by id), and
gives them back when the replica is stopped or its start fails.

Invariants:
- every id is held by at most one replica, and only ids of the inventory are ever held;
- ``free`` and ``allocated`` together are exactly the inventory;
- after a restart the ledger is rebuilt from container labels with ``adopt``, which refuses
  (rather than resolves) any conflict: a replica whose labels claim a GPU that is unknown
  or already held must not be trusted, and the autoscaler removes it instead.

``discover_gpus`` is the only part that touches the outside world (NVML), and it never
raises: a host without GPUs or without the NVIDIA library simply has an empty inventory,
and the same code runs CPU replicas.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Literal

log = logging.getLogger(__name__)

GpuSetting = Literal["auto", "none"] | tuple[int | str, ...]


class GpuLedger:
    """GPU ids of the inventory, each either free or held by exactly one replica."""

    def __init__(self, ids: Sequence[str]) -> None:
        # Inventory order is allocation order: the lowest free ids go first, which keeps
        # assignments predictable for operators reading ``nvidia-smi``.
        self._ids: tuple[str, ...] = tuple(dict.fromkeys(str(i) for i in ids))
        self._owner: dict[str, str] = {}  # gpu id -> replica id
        self._held: dict[str, tuple[str, ...]] = {}  # replica id -> its gpu ids

    @property
    def total(self) -> int:
        return len(self._ids)

    @property
    def free(self) -> tuple[str, ...]:
        """Ids no replica holds, in inventory order."""
        return tuple(gpu for gpu in self._ids if gpu not in self._owner)

    @property
    def allocated(self) -> dict[str, tuple[str, ...]]:
        """A copy of replica id -> the ids it holds (replicas holding none are left out)."""
        return {rid: ids for rid, ids in self._held.items() if ids}

    def allocate(self, replica_id: str, n: int) -> tuple[str, ...] | None:
        """Give ``replica_id`` ``n`` free ids, or None (and change nothing) when fewer are
        free. ``n == 0`` is a CPU replica: always ``()``. A replica that already holds ids
        gets the same ids back, so a retried start never takes a second set."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} GPUs")
        if replica_id in self._held:
            held = self._held[replica_id]
            return held if len(held) == n else None
        if n == 0:
            return ()
        free = self.free
        if len(free) < n:
            return None
        return self._take(replica_id, free[:n])

    def release(self, replica_id: str) -> tuple[str, ...]:
        """Return the ids ``replica_id`` held (``()`` if none or unknown); idempotent."""
        ids = self._held.pop(replica_id, ())
        for gpu in ids:
            del self._owner[gpu]
        return ids

    def adopt(self, replica_id: str, ids: Iterable[str]) -> bool:
        """Record that a replica found running (from its labels) holds ``ids``.

        Refused (False, nothing changed) when an id is not in the inventory, is listed
        twice, or is held by another replica: never double-assign, even if labels lie.
        Adopting the same replica again with the same ids is accepted (idempotent)."""
        wanted = tuple(str(gpu) for gpu in ids)
        if replica_id in self._held:
            return set(self._held[replica_id]) == set(wanted) and len(set(wanted)) == len(wanted)
        if len(set(wanted)) != len(wanted):
            return False
        inventory = set(self._ids)
        if any(gpu not in inventory or gpu in self._owner for gpu in wanted):
            return False
        self._take(replica_id, wanted)
        return True

    def _take(self, replica_id: str, ids: tuple[str, ...]) -> tuple[str, ...]:
        for gpu in ids:
            self._owner[gpu] = replica_id
        self._held[replica_id] = ids
        return ids

    def __repr__(self) -> str:
        return f"GpuLedger(total={self.total}, allocated={self.allocated})"


def discover_gpus(setting: GpuSetting) -> list[str]:
    """The GPU ids a ledger should manage, from the ``autoscale.gpus`` setting.

    - an explicit list: those ids, as strings (Docker accepts indices or UUIDs);
    - ``"none"``: no GPUs;
    - ``"auto"``: the device indices NVML reports (``nvidia-ml-py``), or none when the
      library is missing, no driver is loaded, or NVML fails in any way.

    Never raises: a GPU-less host is a normal configuration, not an error.
    """
    if setting == "none":
        return []
    if setting != "auto":
        return list(dict.fromkeys(str(gpu) for gpu in setting))
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except Exception:  # ImportError, or a broken install
        log.debug("gpus: auto, but nvidia-ml-py is not installed; no GPUs")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        log.debug("gpus: auto, but NVML did not initialise (%s); no GPUs", exc)
        return []
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        return [str(index) for index in range(count)]
    except Exception as exc:
        log.warning("gpus: NVML could not count devices (%s); no GPUs", exc)
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
