"""The saga execution coordinator: applies events and timeouts to sagas.

A batch holds no lock. It takes its sagas as this worker last wrote them (its cache,
`order_service.cache`) or, for those it does not hold, reads them together with which of
its messages were applied before; runs the pure `transition` for each new event; then
writes states, history, outgoing messages and inbox claims in one statement, each saga only
if it has not changed since and none of its messages was applied before. An event whose
saga was not written (changed meanwhile by the other consumer, another replica or the
sweep, or a redelivery) is decided again from a fresh read. The timeout sweep locks sagas
whose deadline passed, with `SKIP LOCKED`, so that every replica sweeps without two of them
firing one timeout, and saves them the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

import asyncpg

from jetsaga import inbox, outbox
from jetsaga.config import Settings
from jetsaga.consumer import Delivery, Handler, PermanentError, TransientError
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
) -> tuple[list[Change], list[Outgoing]]:
    """Apply events (with their causation id and traceparent) in order; pure."""
    merged: dict[str, Change] = {}
    out: list[Outgoing] = []
    for event, causation, traceparent in events:
        before = sagas.get(event.order_id)
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

    def handler(self, durable: str) -> Handler:
        async def handle(batch: Sequence[Delivery]) -> int:
            pending, duplicates = list(batch), 0
            for round_ in range(MAX_ROUNDS):
                # Sagas changed under a round are decided again from a fresh read.
                applied, redo = await self._round(durable, pending, cached=round_ == 0)
                duplicates += len(pending) - applied - len(redo)
                if not redo:
                    return duplicates
                pending = redo
            raise TransientError("sagas kept changing under this batch")

        return handle

    async def _round(
        self, durable: str, batch: Sequence[Delivery], *, cached: bool
    ) -> tuple[int, list[Delivery]]:
        """Apply a batch, or what of it can be, with no lock held: take the sagas from the
        cache (`cached`) or read them with the inbox, decide, and write each saga only if it
        did not change meanwhile and none of its messages was applied before. Returns how
        many messages were applied (their key claimed now, or their saga written), and the
        messages whose saga was not written, to decide again from a fresh read."""
        now = time.time()
        order_ids = {d.message.order_id for d in batch}
        sagas: dict[str, store.StoredSaga] = {}
        unknown = batch
        if cached:
            unknown = []
            for d in batch:
                if (hit := self._cache.get(d.message.order_id)) is not None:
                    sagas[hit.saga.order_id] = hit
                else:
                    unknown.append(d)
            metrics.CACHE_HITS.inc(len(sagas))
            metrics.CACHE_MISSES.inc(len(order_ids) - len(sagas))
        hits = set(sagas)
        try:
            async with self._relay.statements() as conn:
                seen: set[str] = set()
                if unknown:
                    seen, read = await store.read(
                        conn,
                        durable,
                        [d.key for d in unknown],
                        [d.message.order_id for d in unknown],
                    )
                    sagas.update(read)
                fresh = inbox.first_fresh(batch, {d.key for d in batch} - seen)
                events = ((d.message, d.msg_id, d.traceparent) for d in fresh)
                changes, out = decide(sagas, events, self._ctx(now))
                changing = {stored.saga.order_id for stored, _ in changes}
                # A message that changes nothing on a cached saga may have met a stale entry
                # (a step another replica wrote): it is not claimed, but decided again from
                # a fresh read. A written saga proves its entry was current, so the messages
                # merged into its change are claimed with it.
                unsure = hits - changing
                claims = [
                    (d.key, d.message.order_id if d.message.order_id in changing else None)
                    for d in fresh
                    if d.message.order_id not in unsure
                ]
                written, claimed = await store.save(conn, changes, now, out, durable, claims)
        except BaseException:
            self._cache.drop(order_ids)  # a write may or may not have committed
            raise
        self._cache.drop(unsure)
        self._remember(changes, written)
        observe([change for change in changes if change[0].saga.order_id in written], now)
        redo = [d for d in fresh if d.message.order_id in (changing - written) | unsure]
        applied = sum(d.key in claimed or d.message.order_id in written for d in fresh)
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
            changes, out = decide(locked, events, self._ctx(now))
            try:
                written, _ = await store.save(conn, changes, now, out)  # locked: all written
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
