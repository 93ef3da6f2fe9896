"""The read gate: a peer is read again only once every cause that held it has ended."""

from __future__ import annotations

import asyncio
from typing import cast

from gateway.http.wire import BEHIND, ReadGate


class Transport:
    """Records the pause and resume calls the gate makes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def gate() -> tuple[ReadGate, Transport]:
    g, t = ReadGate(), Transport()
    g.transport = cast(asyncio.Transport, t)
    return g, t


def test_one_cause_pauses_and_its_end_resumes() -> None:
    g, t = gate()
    g.hold(BEHIND)
    g.hold(BEHIND)
    assert t.calls == ["pause"]
    g.release(BEHIND)
    g.release(BEHIND)  # a cause that no longer holds changes nothing
    assert t.calls == ["pause", "resume"] and not g.causes


def test_the_end_of_one_cause_does_not_resume_what_another_holds() -> None:
    g, t = gate()
    g.hold("turn")
    g.hold(BEHIND)
    g.release("turn")
    assert t.calls == ["pause"] and g.causes == {BEHIND}
    g.release(BEHIND)
    assert t.calls == ["pause", "resume"]


def test_open_resumes_whatever_held_the_peer_once() -> None:
    g, t = gate()
    g.open()
    assert t.calls == []  # it was being read
    g.hold("turn")
    g.hold(BEHIND)
    g.open()
    g.release("turn")  # a timer that fires after: nothing left to resume
    assert t.calls == ["pause", "resume"] and not g.causes


def test_without_a_transport_causes_are_only_recorded() -> None:
    g, t = gate()
    g.hold(BEHIND)
    g.transport = None  # lost
    g.release(BEHIND)
    assert t.calls == ["pause"] and not g.causes
