"""What the data plane reports, as an interface with a do-nothing default.

Hot-path code calls a ``Recorder``; only ``metrics.py`` knows about Prometheus. Gauges
(in-flight, queue depth, health) are not pushed through here at all: the Prometheus
collector reads them from the pools at scrape time, which costs the request path nothing.
"""

from __future__ import annotations

from typing import Protocol


class Recorder(Protocol):
    def request_done(self, pool: str, replica: str, status: int, duration_s: float) -> None:
        """One client request finished; ``replica`` is "" when none answered."""

    def retry(self, pool: str, reason: str) -> None: ...

    def retry_denied(self, pool: str) -> None: ...

    def queue_wait(self, pool: str, wait_s: float) -> None: ...

    def rejected(self, pool: str, reason: str) -> None: ...

    def ejection(self, pool: str, replica: str) -> None: ...

    def health_changed(self, pool: str, replica: str, up: bool) -> None: ...


class NullRecorder:
    def request_done(self, pool: str, replica: str, status: int, duration_s: float) -> None:
        pass

    def retry(self, pool: str, reason: str) -> None:
        pass

    def retry_denied(self, pool: str) -> None:
        pass

    def queue_wait(self, pool: str, wait_s: float) -> None:
        pass

    def rejected(self, pool: str, reason: str) -> None:
        pass

    def ejection(self, pool: str, replica: str) -> None:
        pass

    def health_changed(self, pool: str, replica: str, up: bool) -> None:
        pass


NULL_RECORDER: Recorder = NullRecorder()
