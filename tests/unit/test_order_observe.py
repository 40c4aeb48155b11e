"""What the coordinator reports once a batch commits: the ended sagas' lines and levels."""

from __future__ import annotations

import logging

import pytest

from order_service.handlers import observe
from order_service.saga import Decision
from order_service.store import StoredSaga
from tests.unit.saga_builders import STATES, T0


def ended(before: str, after: str) -> tuple[StoredSaga, Decision]:
    return StoredSaga(STATES[before], 3), Decision(STATES[after])


def test_a_completed_saga_logs_at_debug_and_an_unhappy_end_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes = [
        ended("payment_succeeded", "completed"),
        ended("started", "failed"),
        ended("compensating_release_requested", "compensated_after_decline"),
    ]
    with caplog.at_level(logging.DEBUG, logger="order_service.handlers"):
        observe(changes, T0 + 5.0)
    lines = [(r.levelno, r.getMessage(), r.__dict__["outcome"]) for r in caplog.records]
    assert lines == [
        (logging.DEBUG, "saga ended", "completed"),
        (logging.INFO, "saga ended", "failed"),
        (logging.INFO, "saga ended", "compensated"),
    ]


def test_at_info_only_the_unhappy_ends_are_written(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="order_service.handlers"):
        observe([ended("payment_succeeded", "completed")], T0 + 5.0)
        assert caplog.records == []
        observe([ended("started", "failed")], T0 + 5.0)
    assert [r.__dict__["reason"] for r in caplog.records] == ["out_of_stock"]


def test_a_saga_that_had_already_ended_is_not_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="order_service.handlers"):
        observe([ended("completed", "completed")], T0 + 5.0)
    assert caplog.records == []
