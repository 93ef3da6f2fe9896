"""How long a pool's replicas take to start: measured, kept across restarts, seeded from config.

A model server's start-up (pulling nothing, but loading weights, compiling, warming a
cache) is the longest wait a client can meet, and what every start-up-aware rule needs:
the backlog's horizon, the capacity a starting replica brings and when, the wait told to
a request on a cold pool (``admission.py``) and its ``Retry-After``. It is a property of
the image and the machine, not of this gateway's run, so the samples are kept in
``state_dir`` and a restarted gateway knows them at once; until one is measured, the
pool's ``expected_startup_s`` stands in.

Invariants: at most ``KEPT`` samples, the newest; ``expected_s`` is their median (one
start slowed by a cold disk cache does not move it), or the seed while there are none.
A state file that cannot be read or written costs the samples, never the pool.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
from collections import deque
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

KEPT = 16  # the newest start-up times kept


class StartupTimes:
    def __init__(self, seed_s: float, path: Path | None = None) -> None:
        self.seed_s = seed_s  # what stands in until a start is measured
        self.path = path  # where the samples are kept; None: not kept
        self._samples: deque[float] = deque(self._read(), maxlen=KEPT)

    @property
    def samples(self) -> list[float]:
        return list(self._samples)

    @property
    def expected_s(self) -> float:
        return statistics.median(self._samples) if self._samples else self.seed_s

    def add(self, startup_s: float) -> None:
        self._samples.append(startup_s)

    def keep(self, samples: list[float]) -> None:
        """Write ``samples`` (``self.samples``, taken on the event loop) to the state file:
        blocking, so the caller runs it in a thread."""
        if self.path is not None:
            self._write(self.path, samples)

    def _read(self) -> list[float]:
        if self.path is None or not self.path.exists():
            return []
        try:
            data = orjson.loads(self.path.read_bytes())
            samples = [float(x) for x in data["startup_s"] if 0 <= float(x) < float("inf")]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring start-up times in %s: %s", self.path, exc)
            return []
        return samples[-KEPT:]

    @staticmethod
    def _write(path: Path, samples: list[float]) -> None:
        """Whole or not at all: a draft of this thread's own renamed over the file."""
        draft = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            draft.write_bytes(orjson.dumps({"startup_s": samples}))
            draft.replace(path)
        except OSError as exc:
            log.warning("cannot keep start-up times in %s: %s", path, exc)
