"""The saga execution coordinator: applies events and timeouts to sagas.

A batch holds no lock. It takes its sagas as this worker last wrote them (its cache,
`order_service.cache`) or, for those it does not hold, reads them; runs the pure
`transition` for each event; then writes states, history and outgoing messages in one
statement, each saga only if it has not changed since. An event whose saga was not written
(changed meanwhile by the other consumer, another replica or the sweep) is decided again
from a fresh read.

Idempotency is the saga's own: `transition` moves a saga only on an event its state still
waits for, so a redelivered or duplicated message changes nothing, and no inbox row is
kept for it. The timeout sweep locks sagas whose deadline passed, with `SKIP LOCKED`, so
that every replica sweeps without two of them firing one timeout, and saves them the same
way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

import asyncpg

from jetsaga import inbox, outbox
from jetsaga.config import Settings
from jetsaga.consumer import Delivery, PermanentError, TransientError
from jetsaga.outbox import OutboxRelay, Outgoing
from jetsaga.waits import pause
from order_service import metrics, store
from order_service.cache import SagaCache
from order_service.saga import Context, Decision, Event, SagaStatus, Timeout, transition

log = logging.getLogger(__name__)

SWEEP_BATCH = 200
MAX_ROUNDS = 4  # a batch whose sagas keep changing under it is handed back to the loop
_OUTCOMES = {
    SagaStatus.COMPLETED: "completed",
    SagaStatus.COMPENSATED: "compensated",
    SagaStatus.FAILED: "failed",
}

Change = tuple[store.StoredSaga, Decision]


def decide(
    sagas: dict[str, store.StoredSaga],
    events: Iterable[tuple[Event, str, str | None]],
    ctx: Context,
) -> tuple[list[Change], list[Outgoing], set[str]]:
    """Apply events (with their causation id and traceparent) in order; pure. Returns the
    changes, the messages they emit and the causation ids of the events that changed their
    saga (an event that changes nothing was applied before, or is stale for its saga)."""
    merged: dict[str, Change] = {}
    out: list[Outgoing] = []
    moved: set[str] = set()
    for event, causation, traceparent in events:
        before = sagas.get(event.order_id)
        if before is None:
            raise PermanentError(f"no saga for order {event.order_id}")
        base, so_far = merged.get(event.order_id, (before, Decision(before.saga)))
        decision = transition(so_far.saga, event, ctx)
        if not decision.changed:
            continue
        moved.add(causation)
        merged[event.order_id] = (
            base,
            Decision(decision.saga, so_far.emit + decision.emit, so_far.history + decision.history),
        )
        out.extend(outbox.outgoing(m, causation, traceparent) for m in decision.emit)
    return list(merged.values()), out, moved


def observe(changes: Sequence[Change], now: float) -> None:
    """Count what the committed changes ended or started compensating."""
    for before, after in changes:
        was, now_status = before.saga.status, after.saga.status
        if now_status is SagaStatus.COMPENSATING and was is not SagaStatus.COMPENSATING:
            metrics.COMPENSATIONS.inc()
        outcome = _OUTCOMES.get(now_status)
        if outcome and was not in _OUTCOMES:
            metrics.ENDED_BY_OUTCOME[outcome].inc()
            metrics.DURATION_BY_OUTCOME[outcome].observe(max(0.0, now - after.saga.started_at))
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
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        relay: OutboxRelay,
        cache: SagaCache | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._relay = relay
        self._cache = cache if cache is not None else SagaCache()

    def _ctx(self, now: float) -> Context:
        return Context(now=now, payment_timeout_s=self._settings.payment_timeout_s)

    async def handle(self, batch: Sequence[Delivery]) -> int:
        """The handler of both consumers of events (`Handler`): applies a batch; returns
        how many of its messages changed nothing (duplicates, or stale for their saga)."""
        pending, duplicates = list(batch), 0
        for round_ in range(MAX_ROUNDS):
            # Sagas changed under a round are decided again from a fresh read.
            applied, redo = await self._round(pending, cached=round_ == 0)
            duplicates += len(pending) - applied - len(redo)
            if not redo:
                return duplicates
            pending = redo
        raise TransientError("sagas kept changing under this batch")

    async def _round(
        self, batch: Sequence[Delivery], *, cached: bool
    ) -> tuple[int, list[Delivery]]:
        """Apply a batch, or what of it can be, with no lock held: take the sagas from the
        cache (`cached`) or read them, decide, and write each saga only if it did not change
        meanwhile. Returns how many messages changed a saga that was written, and the
        messages whose saga was not written, to decide again from a fresh read."""
        now = time.time()
        # One copy of each logical message: a redelivery may share a batch with the first.
        fresh = inbox.first_fresh(batch, {d.key for d in batch})
        order_ids = {d.message.order_id for d in fresh}
        sagas: dict[str, store.StoredSaga] = {}
        unknown: Sequence[Delivery] = fresh
        if cached:
            unknown = []
            for d in fresh:
                if (hit := self._cache.get(d.message.order_id)) is not None:
                    sagas[hit.saga.order_id] = hit
                else:
                    unknown.append(d)
            metrics.CACHE_HITS.inc(len(sagas))
            metrics.CACHE_MISSES.inc(len(order_ids) - len(sagas))
        hits = set(sagas)
        try:
            async with self._relay.statements() as conn:
                if unknown:
                    sagas.update(await store.read(conn, [d.message.order_id for d in unknown]))
                events = ((d.message, d.msg_id, d.traceparent) for d in fresh)
                changes, out, moved = decide(sagas, events, self._ctx(now))
                changing = {stored.saga.order_id for stored, _ in changes}
                written = await store.save(conn, changes, now, out)
        except BaseException:
            self._cache.drop(order_ids)  # a write may or may not have committed
            raise
        # A message that changes nothing on a cached saga may have met a stale entry (a step
        # another replica wrote): it is decided again from a fresh read. On a saga read
        # just now it was applied before, or is stale for the saga's state: a duplicate.
        unsure = hits - changing
        self._cache.drop(unsure)
        self._remember(changes, written)
        observe([change for change in changes if change[0].saga.order_id in written], now)
        redo = [d for d in fresh if d.message.order_id in (changing - written) | unsure]
        applied = sum(d.msg_id in moved and d.message.order_id in written for d in fresh)
        return applied, redo

    def _remember(self, changes: Sequence[Change], written: set[str]) -> None:
        for stored, decision in changes:
            order_id = decision.saga.order_id
            if order_id in written:
                self._cache.put(stored.after(decision))
            else:
                self._cache.drop((order_id,))

    async def sweep_once(self) -> int:
        """Fire the timeouts that are due; returns how many sagas were examined."""
        now = time.time()
        async with self._relay.transaction() as conn:
            locked = await store.lock_due_sagas(conn, now, SWEEP_BATCH)
            events = ((Timeout(order_id), f"timeout:{order_id}", None) for order_id in locked)
            changes, out, _ = decide(locked, events, self._ctx(now))
            try:
                written = await store.save(conn, changes, now, out)  # locked: all written
            except BaseException:
                self._cache.drop(locked)
                raise
        self._remember(changes, written)
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
                    await store.prune_saga_ends(conn, 2 * metrics.WINDOW_S)
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
