"""The `payment-service` handler: a batch of `ProcessPayment` and `RefundPayment` commands.

A round takes the first command of each order in the batch through three steps, with no
transaction open during a gateway call:
1. create missing rows and read every row, in one statement;
2. (only if some order needs a charge) after creating intents concurrently, record them in
   one statement, compare-and-set, so that no intent is ever confirmed before our row
   names it;
3. after the gateway calls (concurrent, bounded), write the changes (compare-and-set on the
   version read) and enqueue the answers in one statement: the answers are made beforehand
   from the rows as the changes will leave them, and each is written only if its change is
   applied.
The row is the record of what was applied: a command applied before finds its row settled,
changes nothing and is answered again from it (`rules.reply`), as its first answer may have
been lost; no inbox row is kept. A row that changed under a command sends that command to
another round, decided afresh. Orders whose gateway call failed get nothing written; once
the rest is committed, the batch is handed back (`TransientError`) and retried by the
consumer loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg

from jetsaga import inbox, outbox, tracing
from jetsaga.consumer import Delivery, PermanentError, TransientError
from jetsaga.contracts import ProcessPayment, RefundPayment
from payment_service import flows, metrics, rounds, rules, store
from payment_service.flows import Work
from payment_service.gateway import PaymentGateway
from payment_service.rules import Step

log = logging.getLogger(__name__)

CONSUMER = "payment-service"
MAX_ROUNDS = 4


class PaymentHandler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        gateway: PaymentGateway,
        concurrency: int = 32,
        statements: outbox.Statements | None = None,
    ) -> None:
        self._gw = gateway
        # Every write of the handler is one statement: no transaction is ever opened. A
        # round's statements share the one connection this gives.
        self._statements = statements or pool.acquire
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
        # One copy of each logical message: a redelivery may share a batch with the first.
        pending = inbox.first_fresh(batch, {d.key for d in batch})
        held, errors, duplicates = set[str](), list[Exception](), len(batch) - len(pending)
        for _ in range(MAX_ROUNDS):
            now, pending = rounds.next_round(pending, held)
            if not now:
                break
            works, skipped = await self._round(now)
            duplicates += skipped
            for w in works:
                if w.error is not None:
                    errors.append(w.error)
                    held.add(w.row.order_id)
            pending = [w.delivery for w in works if w.redo] + pending
        if errors:  # a bug first: the consumer then isolates it from its neighbours
            raise next((e for e in errors if not isinstance(e, TransientError)), errors[0])
        if pending:
            raise TransientError("payment rows kept changing under this batch")
        return duplicates

    async def _round(self, deliveries: list[Delivery]) -> tuple[list[Work], int]:
        # No transaction: each statement stands alone (rows change under us only through
        # compare-and-set on their version, which every writer checks), so no lock is held
        # across a gateway call. One pooled connection serves the whole round: asyncpg
        # returns a connection to its pool in a task of its own, and each release would
        # put a turn of the event loop before the next statement.
        async with self._statements() as conn:
            # A command applied before has its row already: opening it again does nothing.
            rows = await store.open_payments(
                conn, [rules.opening(rounds.command(d)) for d in deliveries]
            )
            works = [Work(d, rows[d.message.order_id]) for d in deliveries]
            charging = [w for w in works if rules.step(w.command, w.row) is Step.CHARGE]
            await self._charge(conn, charging)
            await self._each(
                lambda w: flows.advance(self._gw, w),
                [w for w in works if w.outcome is None and not w.redo and w.error is None],
            )
            return works, await self._commit(conn, works)

    async def _charge(self, conn: asyncpg.Connection, charging: list[Work]) -> None:
        """Create intents, then record them before anything may confirm them."""
        await self._each(lambda w: flows.create(self._gw, w), charging)
        made = sorted(  # order id order: concurrent batches lock rows in one order
            ((w, w.created) for w in charging if w.created is not None),
            key=lambda pair: pair[0].row.order_id,
        )
        if not made:
            return
        recorded = await store.record_intents(  # one statement: no transaction needed
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
        await asyncio.gather(
            *(flows.cancel_stray(self._gw, w.row.order_id, i.id) for w, i in strays)
        )

    async def _commit(self, conn: asyncpg.Connection, works: list[Work]) -> int:
        """Write outcomes and enqueue answers in one statement; returns how many commands
        changed nothing (duplicates)."""
        if not works:
            return 0
        at = datetime.now(UTC)
        answers = rounds.answers(works, at)
        applied = await store.settle(conn, rounds.changes(works), at, answers)
        changed, duplicates = rounds.written(works, applied, at)
        for w in changed:
            metrics.outcome(w.row.status)
            compensation = w.row.status in (rules.REFUNDED, rules.VOIDED)
            log.log(
                logging.INFO if compensation else logging.DEBUG,
                "payment settled",
                extra={"orderId": w.row.order_id, "status": w.row.status},
            )
        # An answer with no change to wait for is one its row gave before: log those.
        again = {a.message.causation_id for a in answers if a.order_id is None}
        for w in works:
            if w.delivery.msg_id in again:
                log.info("answered again from its row", extra=_fields(w.delivery, "re-answered"))
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


def _fields(delivery: Delivery, outcome: str) -> dict[str, object]:
    return {
        "orderId": delivery.message.order_id,
        "subject": delivery.subject,
        "durable": CONSUMER,
        "deliveries": delivery.num_delivered,
        "outcome": outcome,
        "traceId": tracing.trace_id(delivery.traceparent),
    }
