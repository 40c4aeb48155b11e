"""The saga execution coordinator: applies events and timeouts to sagas.

A batch is one transaction: claim the inbox keys, lock the sagas (in id order), run the pure
`transition` for each event, then save states, history and outgoing messages together. The
timeout sweep does the same for sagas whose deadline passed; `SKIP LOCKED` lets every
replica sweep without two of them firing one timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

import asyncpg

from jetsaga import inbox, outbox
from jetsaga.config import Settings
from jetsaga.consumer import Delivery, Handler, PermanentError
from jetsaga.outbox import OutboxRelay, Outgoing
from jetsaga.waits import pause
from order_service import metrics, store
from order_service.saga import Context, Decision, Event, SagaStatus, Timeout, transition

log = logging.getLogger(__name__)

SWEEP_BATCH = 200
_OUTCOMES = {
    SagaStatus.COMPLETED: "completed",
    SagaStatus.COMPENSATED: "compensated",
    SagaStatus.FAILED: "failed",
}

Change = tuple[store.LockedSaga, Decision]


def decide(
    locked: dict[str, store.LockedSaga],
    events: Iterable[tuple[Event, str, str | None]],
    ctx: Context,
) -> tuple[list[Change], list[Outgoing]]:
    """Apply events (with their causation id and traceparent) in order; pure."""
    merged: dict[str, Change] = {}
    out: list[Outgoing] = []
    for event, causation, traceparent in events:
        before = locked.get(event.order_id)
        if before is None:
            raise PermanentError(f"no saga for order {event.order_id}")
        base, so_far = merged.get(event.order_id, (before, Decision(before.saga)))
        decision = transition(so_far.saga, event, ctx)
        if not decision.changed:
            continue
        merged[event.order_id] = (
            base,
            Decision(decision.saga, so_far.emit + decision.emit, so_far.history + decision.history),
        )
        out.extend(outbox.outgoing(m, causation, traceparent) for m in decision.emit)
    return list(merged.values()), out


def observe(changes: Sequence[Change], now: float) -> None:
    """Count what the committed changes ended or started compensating."""
    for before, after in changes:
        was, now_status = before.saga.status, after.saga.status
        if now_status is SagaStatus.COMPENSATING and was is not SagaStatus.COMPENSATING:
            metrics.COMPENSATIONS.inc()
        outcome = _OUTCOMES.get(now_status)
        if outcome and was not in _OUTCOMES:
            metrics.ENDED.labels(outcome).inc()
            metrics.DURATION.labels(outcome).observe(max(0.0, now - after.saga.started_at))
            # A completed saga is the common case, counted by the metrics and kept in its
            # history: its line is debug, so that 1,000 orders/s do not write 1,000 lines/s.
            # A failed or compensated saga is worth a line each.
            level = logging.DEBUG if outcome == "completed" else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "saga ended",
                    extra={
                        "orderId": after.saga.order_id,
                        "outcome": outcome,
                        "reason": after.saga.reason,
                    },
                )


class Coordinator:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, relay: OutboxRelay) -> None:
        self._pool = pool
        self._settings = settings
        self._relay = relay

    def _ctx(self, now: float) -> Context:
        return Context(now=now, payment_timeout_s=self._settings.payment_timeout_s)

    def handler(self, durable: str) -> Handler:
        async def handle(batch: Sequence[Delivery]) -> int:
            now = time.time()
            async with self._relay.transaction() as conn:
                claimed, locked = await store.claim_and_lock(
                    conn, durable, [d.key for d in batch], [d.message.order_id for d in batch]
                )
                fresh = inbox.first_fresh(batch, claimed)
                events = ((d.message, d.msg_id, d.traceparent) for d in fresh)
                changes, out = decide(locked, events, self._ctx(now))
                await store.save(conn, changes, now, out)
            observe(changes, now)
            return len(batch) - len(fresh)

        return handle

    async def sweep_once(self) -> int:
        """Fire the timeouts that are due; returns how many sagas were examined."""
        now = time.time()
        async with self._relay.transaction() as conn:
            locked = await store.lock_due_sagas(conn, now, SWEEP_BATCH)
            events = ((Timeout(order_id), f"timeout:{order_id}", None) for order_id in locked)
            changes, out = decide(locked, events, self._ctx(now))
            await store.save(conn, changes, now, out)
        if out:
            log.info("timeouts fired", extra={"count": len(changes)})
        observe(changes, now)
        return len(locked)

    async def sweep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await self.sweep_once() == SWEEP_BATCH:
                    pass
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("timeout sweep failed; will retry", extra={"error": repr(exc)})
            await pause(stop, self._settings.sweep_interval_s)

    async def refresh_metrics(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self._pool.acquire() as conn:
                    stats = await store.saga_stats(conn, metrics.WINDOW_S)
                    pruned = await inbox.prune(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass
            else:
                for status in ("PENDING", "CONFIRMED", "CANCELLED", "FAILED"):
                    metrics.STATUS_COUNT.labels(status).set(stats.status_counts.get(status, 0))
                metrics.IN_FLIGHT.set(stats.in_flight)
                metrics.OLDEST_IN_FLIGHT.set(stats.oldest_in_flight_age_s)
                metrics.SUCCESS_RATE.set(_ratio(stats.completed_recent, stats.ended_recent))
                metrics.COMPENSATION_SUCCESS_RATE.set(
                    _ratio(stats.compensated_recent, stats.compensations_recent)
                )
                if pruned:
                    log.info("pruned inbox", extra={"rows": pruned})
            await pause(stop, 5.0)


def _ratio(part: int, whole: int) -> float:
    """NaN when nothing happened in the window: no data is not a 0 % or 100 % rate."""
    return part / whole if whole else float("nan")
