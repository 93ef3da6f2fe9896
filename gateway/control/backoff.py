"""The pause before the next try of something that failed ``failures`` times in a row.

One rule for the control plane's retries after a pause: replica starts, stops, and the
Docker event stream. Exponential and capped: a replica image that crashes at once is then
tried a few times a minute, not once a tick, and an engine that went away is not hammered.
A driver call that fails is first retried at once a few times (``retrying``, tenacity);
the pause is between such rounds. ``backoff`` is pure.
"""

from __future__ import annotations

from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential


def backoff(failures: int, first_s: float = 2.0, cap_s: float = 60.0) -> float:
    """0 after no failure, then ``first_s``, doubled with each further failure, never more
    than ``cap_s``."""
    if failures <= 0:
        return 0.0
    return min(cap_s, first_s * 2.0 ** min(failures - 1, 64))  # 2.0 ** 1100 overflows


def retrying() -> AsyncRetrying:
    """A driver call's retries at once, before it counts as failed: 3 tries, 0.2 s apart
    and then doubling (capped at 2 s); the last error is raised."""
    wait = wait_exponential(0.2, max=2)
    return AsyncRetrying(stop=stop_after_attempt(3), wait=wait, reraise=True)
