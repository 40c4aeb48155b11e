"""The `payment-service` handler: a batch of `ProcessPayment` and `RefundPayment` commands.

A round takes the first command of each order in the batch through at most three
transactions, with no transaction open during a gateway call:
1. skip commands already applied (inbox), create missing rows, read every row;
2. (only if some order needs a charge) after creating intents concurrently, record them,
   compare-and-set, so that no intent is ever confirmed before our row names it;
3. after the gateway calls (concurrent, bounded), write the changes (compare-and-set on the
   version read), claim the inbox keys and enqueue the answers, all in one commit.
A row that changed under a command sends that command to another round, decided afresh.
Orders whose gateway call failed get nothing written; once the rest is committed, the batch
is handed back (`TransientError`) and retried by the consumer loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from jetsaga import inbox, outbox
from jetsaga.consumer import Delivery, PermanentError, TransientError
from jetsaga.contracts import ProcessPayment, RefundPayment
from payment_service import flows, metrics, rules, store
from payment_service.flows import Work
from payment_service.gateway import PaymentGateway
from payment_service.rules import Step

log = logging.getLogger(__name__)

CONSUMER = "payment-service"
MAX_ROUNDS = 4


def _next_round(pending: list[Delivery], held: set[str]) -> tuple[list[Delivery], list[Delivery]]:
    """The first command of each order (stream order kept), and the rest for later rounds."""
    now: list[Delivery] = []
    later: list[Delivery] = []
    orders: set[str] = set()
    for delivery in pending:
        order_id = delivery.message.order_id
        if order_id in held:
            continue  # an earlier command of this order is unfinished: keep their order
        (later if order_id in orders else now).append(delivery)
        orders.add(order_id)
    return now, later


class PaymentHandler:
    def __init__(self, pool: asyncpg.Pool, gateway: PaymentGateway, concurrency: int = 32) -> None:
        self._pool, self._gw = pool, gateway
        self._limit = asyncio.Semaphore(concurrency)
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no batch is being handled (for closing the gateway after a drain)."""
        await self._idle.wait()

    async def __call__(self, batch: Sequence[Delivery]) -> int:
        self._busy += 1
        self._idle.clear()
        try:
            return await self._handle(batch)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _handle(self, batch: Sequence[Delivery]) -> int:
        for d in batch:
            if not isinstance(d.message, ProcessPayment | RefundPayment):
                raise PermanentError(f"{d.subject} is not a payment command")
        pending, held, errors, duplicates = list(batch), set[str](), list[Exception](), 0
        for _ in range(MAX_ROUNDS):
            now, pending = _next_round(pending, held)
            if not now:
                break
            works, skipped = await self._round(now)
            duplicates += skipped
            for w in works:
                if w.error is not None:
                    errors.append(w.error)
                    held.add(w.row.order_id)
            pending = [w.delivery for w in works if w.redo] + pending
        else:
            if pending:
                raise TransientError("payment rows kept changing under this batch")
        if errors:  # a bug first: the consumer then isolates it from its neighbours
            raise next((e for e in errors if not isinstance(e, TransientError)), errors[0])
        return duplicates

    async def _round(self, deliveries: list[Delivery]) -> tuple[list[Work], int]:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await store.seen(conn, CONSUMER, [d.key for d in deliveries])
            fresh = [d for d in deliveries if d.key not in done]
            await store.open_payments(conn, [rules.opening(_command(d)) for d in fresh])
            rows = await store.load(conn, [d.message.order_id for d in fresh])
        works = [Work(d, rows[d.message.order_id]) for d in fresh]
        await self._charge([w for w in works if rules.step(w.command, w.row) is Step.CHARGE])
        await self._each(
            lambda w: flows.advance(self._gw, w),
            [w for w in works if w.outcome is None and not w.redo and w.error is None],
        )
        return works, len(deliveries) - len(fresh) + await self._commit(works)

    async def _charge(self, charging: list[Work]) -> None:
        """Create intents, then record them before anything may confirm them."""
        await self._each(lambda w: flows.create(self._gw, w), charging)
        made = [(w, w.created) for w in charging if w.created is not None]
        if not made:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            recorded = await store.record_intents(
                conn, [(w.row.order_id, w.row.version, i.id) for w, i in made]
            )
            lost = [(w, i) for w, i in made if w.row.order_id not in recorded]
            now = await store.load(conn, [w.row.order_id for w, _ in lost]) if lost else {}
        for w, _ in made:
            w.row = recorded.get(w.row.order_id, w.row)
            w.redo = w.row.order_id not in recorded
        # Lost the race (voided meanwhile, or another worker recorded its own intent): ours
        # is named nowhere, so cancel it, unless Stripe's key handed both of us the same one.
        strays = [(w, i) for w, i in lost if now[w.row.order_id].intent_id != i.id]
        await asyncio.gather(*(self._cancel_stray(w.row.order_id, i.id) for w, i in strays))

    async def _commit(self, works: list[Work]) -> int:
        """Write outcomes, claim the inbox and enqueue answers in one transaction; returns
        how many commands turned out to be duplicates."""
        changes = [
            _change(w.row, w.outcome)
            for w in works
            if w.outcome is not None and not w.redo and w.error is None
        ]
        duplicates, changed = 0, list[Work]()
        async with self._pool.acquire() as conn, conn.transaction():
            applied = await store.apply(conn, changes)
            answering = []
            for w in works:
                if w.redo or w.error is not None:
                    continue
                if w.outcome is not None:
                    w.redo = w.row.order_id not in applied
                    if w.redo:
                        continue
                    w.row = applied[w.row.order_id]
                    changed.append(w)
                answering.append(w)
            claimed = {
                d.key for d in await inbox.claim(conn, CONSUMER, [w.delivery for w in answering])
            }
            out = []
            for w in answering:
                if w.outcome is None and w.delivery.key not in claimed:
                    duplicates += 1
                    continue
                answer = rules.reply(w.command, w.row)
                if answer is not None:
                    out.append(outbox.outgoing(answer, w.delivery.msg_id, w.delivery.traceparent))
            await outbox.enqueue(conn, out)
        for w in changed:
            metrics.outcome(w.row.status)
            log.debug("payment settled", extra={"orderId": w.row.order_id, "status": w.row.status})
        return duplicates

    async def _each(self, call: Callable[[Work], Awaitable[None]], works: list[Work]) -> None:
        """Run one gateway sequence per order, bounded; a failure stays with its order."""

        async def one(work: Work) -> None:
            async with self._limit:
                try:
                    await call(work)
                except Exception as exc:
                    work.error = exc

        if works:
            await asyncio.gather(*(one(w) for w in works))

    async def _cancel_stray(self, order_id: str, intent_id: str) -> None:
        try:
            async with self._limit:
                await self._gw.cancel_intent(order_id, intent_id)
        except Exception as exc:  # never confirmed by anyone: harmless if it stays
            log.warning(
                "stray payment intent not cancelled",
                extra={"orderId": order_id, "error": repr(exc)},
            )


def _command(delivery: Delivery) -> ProcessPayment | RefundPayment:
    assert isinstance(delivery.message, ProcessPayment | RefundPayment)
    return delivery.message


def _change(row: store.Payment, outcome: flows.Outcome) -> store.Change:
    return store.Change(
        order_id=row.order_id,
        version=row.version,
        status=outcome.status,
        failure_reason=outcome.failure_reason,
        payment_id=outcome.payment_id,
        refund_id=outcome.refund_id,
    )
