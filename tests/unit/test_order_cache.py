"""The coordinator's saga cache: what it keeps, for how long, and what it forgets."""

from __future__ import annotations

import pytest

from order_service.cache import SagaCache
from order_service.saga import SagaStatus
from order_service.store import StoredSaga
from tests.unit.saga_builders import saga


def stored(order_id: str, steps: int, status: SagaStatus = SagaStatus.STARTED) -> StoredSaga:
    return StoredSaga(saga(order_id=order_id, status=status), steps)


def test_a_saga_put_is_got_back_as_put() -> None:
    cache = SagaCache()
    entry = stored("o-1", 1)
    cache.put(entry)
    assert cache.get("o-1") is entry and cache.get("o-2") is None and len(cache) == 1


@pytest.mark.parametrize(
    "status", [SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.COMPENSATED]
)
def test_an_ended_saga_is_forgotten(status: SagaStatus) -> None:
    cache = SagaCache()
    cache.put(stored("o-1", 3, SagaStatus.PAYMENT_PROCESSING))
    cache.put(stored("o-1", 5, status))
    assert cache.get("o-1") is None and len(cache) == 0


@pytest.mark.parametrize(
    "status", [s for s in SagaStatus if s not in (
        SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.COMPENSATED)]
)  # fmt: skip
def test_a_saga_in_flight_is_kept_in_every_other_status(status: SagaStatus) -> None:
    cache = SagaCache()
    cache.put(stored("o-1", 2, status))
    assert cache.get("o-1") is not None


def test_an_entry_at_more_steps_is_not_replaced_by_an_earlier_step() -> None:
    # Two batches of one worker: the one that wrote step 3 may finish after step 4's.
    cache = SagaCache()
    later = stored("o-1", 4, SagaStatus.PAYMENT_SUCCEEDED)
    cache.put(later)
    cache.put(stored("o-1", 3, SagaStatus.PAYMENT_PROCESSING))
    assert cache.get("o-1") is later
    newest = stored("o-1", 5, SagaStatus.PAYMENT_SUCCEEDED)
    cache.put(newest)
    assert cache.get("o-1") is newest


def test_past_its_limit_the_oldest_entry_goes() -> None:
    cache = SagaCache(limit=3)
    for i in range(3):
        cache.put(stored(f"o-{i}", 1))
    cache.put(stored("o-0", 2))  # written again: now the newest
    cache.put(stored("o-3", 1))
    assert len(cache) == 3
    assert [cache.get(f"o-{i}") is not None for i in range(4)] == [True, False, True, True]


def test_dropped_sagas_are_gone_and_unknown_ones_are_ignored() -> None:
    cache = SagaCache()
    cache.put(stored("o-1", 1))
    cache.put(stored("o-2", 1))
    cache.drop(["o-1", "o-9"])
    assert cache.get("o-1") is None and cache.get("o-2") is not None


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SagaCache(limit=0)
