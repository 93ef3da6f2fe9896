"""What the gateway reports, as a base class whose methods do nothing.

Hot-path and control-loop code call a ``Recorder``; only ``metrics.py`` knows about
Prometheus, by overriding these methods. Gauges (in-flight, queue depth, health, replica
counts) are not pushed through here at all: the Prometheus collector reads them from the
pools and scalers at scrape time, which costs the request path nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.dataplane.tokens import Tokens


def _ignore(gap_s: float) -> None:
    pass


class Recorder:
    # -- data plane --------------------------------------------------------------------
    def request_done(self, pool: str, replica: str, status: int, duration_s: float) -> None:
        """One client request finished; ``replica`` is "" when none answered."""

    def tokens_done(self, pool: str, model: str, ttft_s: float | None, tokens: Tokens) -> None:
        """An LLM answer's tokens: ``ttft_s`` from the request's arrival to its first
        token (None: not streamed); ``model`` the configured one it was routed by, or ""."""

    def inter_token_observer(self, pool: str, model: str) -> Callable[[float], None]:
        """What takes each gap between two tokens of one streamed answer (seconds)."""
        return _ignore

    def retry(self, pool: str, reason: str) -> None:
        """An attempt is retried after ``reason`` (connect, reset, timeout, status_503...)."""

    def retry_denied(self, pool: str) -> None:
        """The retry budget refused a retry."""

    def hedge(self, pool: str) -> None:
        """A slow attempt got a backup attempt on another replica."""

    def hedge_won(self, pool: str) -> None:
        """A backup attempt answered first."""

    def queue_wait(self, pool: str, wait_s: float) -> None:
        """A request got a slot after waiting in the queue."""

    def rejected(self, pool: str, reason: str) -> None:
        """A request was refused with 503 (queue_full, queue_timeout, cold_start_full...)."""

    def client_refused(self, reason: str) -> None:
        """A client limit refused a request or let a connection go (``reason``: the
        limit: request_line, header_size, header_fields, header_timeout, write_timeout,
        body_timeout, body_buffer, connections, connections_per_ip, malformed, transfer_coding)."""

    def ejection(self, pool: str, replica: str) -> None:
        """Passive outlier detection ejected a replica."""

    def health_changed(self, pool: str, replica: str, up: bool) -> None:
        """The active health verdict on a replica flipped."""

    def cold_start_wait(self, pool: str, wait_s: float) -> None:
        """A request waited ``wait_s`` for the first replica of an empty pool."""

    # -- control plane -----------------------------------------------------------------
    def config_reload(self, ok: bool) -> None:
        """A reload was applied (``ok``) or refused for a bad config."""

    def scale_event(self, pool: str, action: str, reason: str) -> None:
        """The autoscaler started, drained, replaced, demoted or woke a replica
        (``action``) because of ``reason`` (the decision's reason word, or the tier)."""

    def replica_time(self, pool: str, state: str, replica_s: float, gpu_s: float) -> None:
        """The pool's replicas in ``state`` held ``replica_s`` replica-seconds and
        ``gpu_s`` GPU-seconds since the last call: what it costs, by tier."""

    def replica_ready(self, pool: str, startup_s: float) -> None:
        """A started replica passed its health check ``startup_s`` after its start."""

    def replica_woken(self, pool: str, tier: str, wake_s: float) -> None:
        """A replica held in ``tier`` passed its health check ``wake_s`` after its wake."""

    def driver_error(self, pool: str) -> None:
        """Listing the pool's replicas through its driver failed (the engine is away)."""

    def start_failed(self, pool: str, reason: str) -> None:
        """A replica could not be started (driver error, start-up timeout, no GPU)."""


NULL_RECORDER = Recorder()
