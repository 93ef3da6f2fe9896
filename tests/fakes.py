"""Fakes for pure logic only (never on a path that does I/O)."""

from __future__ import annotations


class Clock:
    """A clock that moves only when a test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
