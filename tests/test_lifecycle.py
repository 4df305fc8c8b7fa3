"""aistream.lifecycle: the per-request state machine every conversation is checked with."""

from __future__ import annotations

import pytest

from aistream.errors import LifecycleViolation
from aistream.lifecycle import Lifecycle, RequestLifecycle


def test_normal_sequence() -> None:
    """start, tokens with consecutive seq (count-aware), one terminal."""
    lc = Lifecycle(strict=True)
    lc.expect("a")
    lc.observe("start", "a")
    lc.observe("token", "a", 0, 1)
    lc.observe("token", "a", 1, 3)
    lc.observe("token", "a", 4, 1)
    lc.observe("done", "a")
    assert lc.running == []


@pytest.mark.parametrize(
    "events",
    [
        [("token", "a", 0)],
        [("start", "a", 0), ("start", "a", 0)],
        [("start", "a", 0), ("token", "a", 1)],
        [("start", "a", 0), ("done", "a", 0), ("token", "a", 0)],
        [("start", "a", 0), ("done", "a", 0), ("done", "a", 0)],
        [("done", "a", 0)],
    ],
)
def test_violations(events: list[tuple[str, str, int]]) -> None:
    """Out-of-order events raise LifecycleViolation."""
    lc = Lifecycle()
    with pytest.raises(LifecycleViolation):
        for kind, rid, seq in events:
            lc.observe(kind, rid, seq)  # type: ignore[arg-type]


def test_rejection_without_start() -> None:
    """A lone error answers a rejected generate."""
    lc = Lifecycle(strict=True)
    lc.expect("a")
    lc.observe("error", "a")
    assert lc.running == []


def test_strict_mode_requires_a_generate() -> None:
    """In strict mode a start or a rejection nobody asked for is a violation."""
    lc = Lifecycle(strict=True)
    with pytest.raises(LifecycleViolation):
        lc.observe("start", "a")
    lc.expect("b")
    lc.observe("start", "b")
    lc.observe("error", "b")
    with pytest.raises(LifecycleViolation):
        lc.observe("error", "b")  # a second terminal for an ended id


def test_id_may_be_reused_after_it_ended() -> None:
    """A new generate after the terminal starts a new lifecycle with seq from 0."""
    lc = Lifecycle(strict=True)
    for _ in range(2):
        lc.expect("a")
        lc.observe("start", "a")
        lc.observe("token", "a", 0)
        lc.observe("done", "a")


def test_frame_level_error_without_id_is_allowed() -> None:
    """An error with an empty id answers an unreadable frame."""
    Lifecycle(strict=True).observe("error", "")


def test_one_request_from_sent_to_its_terminal() -> None:
    """A RequestLifecycle (one id, as the bridge keeps it from the Generate on) says which event
    ends it: a done after its start, or an error whether it started or not."""
    request = RequestLifecycle("a")
    assert request.observe("start") is False
    assert request.observe("token", 0, 2) is False
    assert request.observe("token", 2, 1) is False
    assert request.next_seq == 3
    assert request.observe("done") is True
    rejected = RequestLifecycle("b")
    assert rejected.observe("error") is True


@pytest.mark.parametrize(
    "events",
    [
        [("token", 0)],
        [("done", 0)],
        [("start", 0), ("start", 0)],
        [("start", 0), ("token", 1)],
    ],
)
def test_one_request_out_of_order(events: list[tuple[str, int]]) -> None:
    """A token or done before the start, a second start, or a seq gap is a violation."""
    request = RequestLifecycle("a")
    with pytest.raises(LifecycleViolation, match="'a'"):
        for kind, seq in events:
            request.observe(kind, seq)  # type: ignore[arg-type]
