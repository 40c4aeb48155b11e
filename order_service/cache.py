"""The sagas in flight as this worker last wrote them, so that their next event is decided
without reading them back.

A coordinator batch read its sagas in one round trip, then wrote them in a second. Most
events of a saga come back to the worker that wrote its last step, which knows the state it
wrote: for those the read is skipped. Entries are hints, never the truth. `store.save`
writes a saga only if it still has the steps its entry was taken at; a saga it did not
write is decided again from a fresh read. So a stale entry (a step written by another
replica, or by a concurrent batch of this one) costs a second round, never a wrong write,
and a message applied before changes nothing on the saga as it is.

Ended sagas are not kept (a late event for one is rare, and read), nor more than `limit`
sagas: past it, the oldest entry goes, so a backlog of stuck sagas cannot grow the worker.
"""

from __future__ import annotations

from collections.abc import Iterable

from order_service.saga import TERMINAL
from order_service.store import StoredSaga

LIMIT = 10_000  # about 1 KB each: the sagas of ten seconds at 1,000 orders/s


class SagaCache:
    def __init__(self, limit: int = LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._sagas: dict[str, StoredSaga] = {}  # oldest first

    def __len__(self) -> int:
        return len(self._sagas)

    def get(self, order_id: str) -> StoredSaga | None:
        return self._sagas.get(order_id)

    def put(self, stored: StoredSaga) -> None:
        """Remember a saga as written (committed) at `stored.steps`; an ended one is
        forgotten. An entry at more steps is kept: a batch that finished later may have
        written an earlier step."""
        order_id = stored.saga.order_id
        if stored.saga.status in TERMINAL:
            self._sagas.pop(order_id, None)
            return
        known = self._sagas.pop(order_id, None)
        self._sagas[order_id] = stored if known is None or known.steps < stored.steps else known
        if len(self._sagas) > self._limit:
            del self._sagas[next(iter(self._sagas))]

    def drop(self, order_ids: Iterable[str]) -> None:
        for order_id in order_ids:
            self._sagas.pop(order_id, None)
