"""Reservations that outlive `RESERVATION_TTL_S` give their stock back (SPEC §3).

A sweep locks due reservations with `FOR UPDATE SKIP LOCKED`, so replicas sweeping at once
never release one twice, and releases them with their `inventory.released` (reason
`expired`) in one transaction. The same loop refreshes the active-reservations gauge and
prunes the inbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

import asyncpg

from inventory_service import metrics, store
from inventory_service.domain import RELEASED
from inventory_service.handlers import utcnow
from inventory_service.rules import plan_expiry
from jetsaga import inbox, outbox
from jetsaga.waits import pause

log = logging.getLogger(__name__)

SWEEP_BATCH = 500
PRUNE_EVERY_S = 3600.0


async def expire_due(
    transaction: outbox.Transaction, now: datetime, limit: int = SWEEP_BATCH
) -> int:
    """Release up to `limit` reservations expired at `now`; returns how many."""
    async with transaction() as conn:
        due = await store.lock_due(conn, now, limit)
        if not due:
            return 0
        await store.lock_stock(conn, [p for r in due for p in r.items])
        plan = plan_expiry(due)
        out = [outbox.outgoing(d.event) for d in plan.decisions if d.event]
        await store.close_reservations(conn, plan.deltas, plan.closed, RELEASED, out)
    for decision in plan.decisions:
        log.info("reservation expired", extra={"orderId": decision.order_id})
    return len(due)


class Expiry:
    def __init__(
        self,
        pool: asyncpg.Pool,
        transaction: outbox.Transaction,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._pool = pool
        self._transaction = transaction  # the relay's: released events go out on commit
        self._interval_s = interval_s
        self._clock = clock
        self._pruned_at = time.monotonic()

    async def sweep(self) -> int:
        """Release every reservation due now, batch by batch; returns how many."""
        total = 0
        while True:
            count = await expire_due(self._transaction, self._clock())
            total += count
            if count < SWEEP_BATCH:
                return total

    async def housekeeping(self) -> None:
        async with self._pool.acquire() as conn:
            metrics.RESERVATIONS_ACTIVE.set(await store.count_active(conn))
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                pruned = await inbox.prune(conn)
                self._pruned_at = time.monotonic()
                log.info("pruned inbox", extra={"rows": pruned})

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
                await self.housekeeping()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("expiry sweep failed; will retry", extra={"error": repr(exc)})
            except Exception:
                # A bug must not stop the worker's consumers; it is logged and retried.
                log.exception("expiry sweep failed unexpectedly; will retry")
            await pause(stop, self._interval_s)
