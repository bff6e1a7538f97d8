"""kopf's event posting as the operator configures it (``handlers.event_posting``): a bounded number of
objects' events at a time, set by TIDE_OPERATOR_EVENT_POSTERS (0: kopf's own, unbounded); a value that is
not a number stops the operator with a message saying what to give."""

from __future__ import annotations

import kopf
import pytest
from tide_operator import handlers


def test_events_are_posted_a_few_objects_at_a_time_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDE_OPERATOR_EVENT_POSTERS", raising=False)
    s = kopf.OperatorSettings()
    assert s.posting.worker_limit is None  # kopf's default: every object's events at once
    handlers.event_posting(s)
    assert s.posting.worker_limit == handlers.EVENT_POSTERS
    assert s.posting.idle_timeout < 0.1  # a poster leaves at once, so the bound is not a rate of a few/s


def test_zero_leaves_kopfs_posting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDE_OPERATOR_EVENT_POSTERS", "0")
    s = kopf.OperatorSettings()
    handlers.event_posting(s)
    assert (
        s.posting.worker_limit is None
        and s.posting.idle_timeout == kopf.OperatorSettings().posting.idle_timeout
    )


def test_a_bad_value_stops_the_operator_saying_what_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDE_OPERATOR_EVENT_POSTERS", "lots")
    with pytest.raises(kopf.PermanentError, match="whole number, 0 for no limit"):
        handlers.event_posting(kopf.OperatorSettings())
