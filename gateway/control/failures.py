"""What the reconcile loop keeps across ticks about what went wrong: failed starts and
the pause they earn, the driver's outage, and listed replicas that no start accounts for.

Pure: time comes in as ``now``; the loop logs and acts on what these return.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.control.backoff import backoff


class StartFailures:
    """Failed starts in a row, and until when the next start waits. A start that fails
    for good (a bad image, no runtime) must not spin; a replica that died after it was
    ready (``crashed``) is replaced at once the first time, since it may have been
    killed (an OOM, an operator), and a second early death in a row backs off."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s
        self.count = 0  # since a replica last stayed up
        self.last = ""  # the latest one's reason
        self.until = 0.0  # no start before then

    def failed(self, reason: str, now: float) -> float:
        """Count one; the pause it earns, in s."""
        self.count += 1
        self.last = reason
        pause_s = backoff(self.count - (reason == "crashed"), cap_s=self.cap_s)
        self.until = now + pause_s
        return pause_s

    def stayed_up(self) -> None:
        """A replica stayed ready: starting works again (a pause under way runs out)."""
        self.count = 0

    def driver_back(self) -> None:
        """The driver answers again: starts that failed for want of it start at once."""
        if self.last == "driver":
            self.count, self.until = 0, 0.0


class Outage:
    """The driver's calls failing, from the first failure to the next answer."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.errors = 0

    def failed(self, now: float) -> bool:
        """Count a failed call; True when it begins an outage (log it once)."""
        self.errors += 1
        if self.since is not None:
            return False
        self.since = now
        return True

    def answered(self, now: float) -> tuple[float, int] | None:
        """A call succeeded: the outage that ends (its length in s, its failed calls),
        or None if there was none."""
        if self.since is None:
            return None
        ended = (now - self.since, self.errors)
        self.since, self.errors = None, 0
        return ended


class Strays:
    """Listed replicas that no member accounts for: a create whose answer was lost (an
    engine that timed out, then made the container anyway) leaves one, unknown to
    anyone until the next restart. Removed only when listed twice in a row (one listing
    taken while a removal finished may still show the removed replica), one removal at
    a time each, logged once while it stays listed."""

    def __init__(self) -> None:
        self._last: set[str] = set()  # strays of the previous listing
        self._removing: set[str] = set()
        self._logged: set[str] = set()

    def due(self, listed: Iterable[str], known: Iterable[str]) -> list[tuple[str, bool]]:
        """The strays to remove now, each with whether to log it (the first time)."""
        strays = set(listed) - set(known)
        due = []
        for rid in sorted((strays & self._last) - self._removing):
            due.append((rid, rid not in self._logged))
            self._logged.add(rid)
            self._removing.add(rid)
        self._last = strays
        self._logged &= strays
        return due

    def removed(self, replica_id: str) -> None:
        """Its removal ended (done or failed: a stray still listed is due again)."""
        self._removing.discard(replica_id)
