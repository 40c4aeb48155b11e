"""The inventory service's three consumers (SPEC §3, §4.3).

Confirm applies its whole batch in one transaction: lock the reservations and the stock they
hold, let `rules` decide in the batch's order, and write the plan back; a sold reservation
says itself that it was sold, so it claims no inbox key. Nor does a reserved order: its
reservation row says it was applied (only an order refused claims one). New orders and
release requests take no lock and open no transaction: one statement reads the inbox and
the rows the batch is decided on (for new orders, the stock and which orders have a
reservation row; for releases, the reservations), `rules` decide, and one more writes the
changes, the inbox claims and the answers, each change only if its rows are still as read,
and stock relative to what it holds (the database refuses stock below what a batch
reserved). What was decided on rows that changed meanwhile is decided again from a new
read. A message applied before changes nothing, but is answered again from its row
(`reanswers`), as its first answer may have been lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from inventory_service import reanswers, rules, store
from inventory_service.domain import CONFIRMED, RELEASED, RESERVED, Reservation
from jetsaga import inbox, outbox
from jetsaga.consumer import Delivery, PermanentError, TransientError
from jetsaga.contracts import OrderConfirmed, OrderCreated, ReleaseInventory

log = logging.getLogger(__name__)

RESERVE = "inventory-service"
CONFIRM = "inventory-service-confirm"
RELEASE = "inventory-service-release"
MAX_ROUNDS = 4  # a batch of new orders whose stock keeps falling goes back to the loop

M = TypeVar("M", OrderCreated, ReleaseInventory, OrderConfirmed)

# The routine outcomes of every order are debug lines; a saga bug is an error.
_LEVELS = {
    reanswers.REANSWERED: logging.INFO,  # rare: a redelivery, a replay, or a saga re-sending
    reanswers.NOTHING: logging.DEBUG,
    "reserved": logging.DEBUG,
    "released": logging.DEBUG,
    "confirmed": logging.DEBUG,
    "confirmed_from_available": logging.WARNING,
    "confirmed_not_released": logging.ERROR,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _typed(batch: Sequence[Delivery], kind: type[M]) -> list[M]:
    messages: list[M] = []
    for delivery in batch:
        if not isinstance(delivery.message, kind):
            raise PermanentError(f"{delivery.subject} does not carry {kind.__name__}")
        messages.append(delivery.message)
    return messages


def emitted(batch: Sequence[Delivery], plan: rules.Plan, **extra: Any) -> list[outbox.Outgoing]:
    """Log each decision with its order id; the events to enqueue, caused by their message."""
    out = []
    for delivery, decision in zip(batch, plan.decisions, strict=True):
        fields = {
            "orderId": decision.order_id,
            "subject": delivery.subject,
            "outcome": decision.outcome,
            **extra,
        }
        log.log(_LEVELS.get(decision.outcome, logging.INFO), decision.outcome, extra=fields)
        if decision.event is not None:
            out.append(outbox.outgoing(decision.event, delivery.msg_id, delivery.traceparent))
    return out


def applied_before(batch: Sequence[Delivery], fresh: Sequence[Delivery]) -> list[Delivery]:
    """The first delivery of each key applied before this batch (a copy of a key applied in
    this batch is answered by it)."""
    keys = {d.key for d in fresh}
    out: list[Delivery] = []
    for delivery in batch:
        if delivery.key not in keys:
            keys.add(delivery.key)
            out.append(delivery)
    return out


async def answer_again(
    conn: asyncpg.Connection,
    durable: str,
    duplicates: Sequence[Delivery],
    kind: type[M],
    decide: Callable[[list[M], dict[str, Reservation]], rules.Plan],
) -> None:
    """Enqueue what the rows of messages applied before imply; no query when there are none."""
    if not duplicates:
        return
    messages = _typed(duplicates, kind)
    held = await store.reservations_of(conn, [m.order_id for m in messages])
    await outbox.enqueue(conn, emitted(duplicates, decide(messages, held), durable=durable))


class Handlers:
    def __init__(
        self,
        pool: asyncpg.Pool,
        reservation_ttl_s: float,
        clock: Callable[[], datetime] = utcnow,
        transaction: outbox.Transaction | None = None,
        statements: outbox.Statements | None = None,
    ) -> None:
        self._transaction = transaction or outbox.unstaged(pool)
        self._statements = statements or pool.acquire  # a batch of new orders: no transaction
        self._ttl = timedelta(seconds=reservation_ttl_s)
        self._clock = clock

    async def reserve(self, batch: Sequence[Delivery]) -> int:
        """orders.created: reserve every item of each order, or none of them.

        The reservation row says an order was applied; only an order refused for want of
        stock, which gets none, claims its inbox key. A message applied before is answered
        again from its row."""
        expires_at = self._clock() + self._ttl
        everything = _typed(batch, OrderCreated)
        products = [item.product_id for order in everything for item in order.items]
        for _ in range(MAX_ROUNDS):
            async with self._statements() as conn:
                seen, stock = await store.read_for_reserve(
                    conn, RESERVE, [d.key for d in batch], products,
                    [order.order_id for order in everything],
                )  # fmt: skip
                # An order with a row was applied before (or released before it came); one
                # refused for want of stock has no row, and its inbox key says so instead.
                seen.update(d.key for d in batch if d.message.order_id in stock.orders_with_rows)
                fresh = inbox.first_fresh(batch, {d.key for d in batch} - seen)
                again = applied_before(batch, fresh)
                await answer_again(conn, RESERVE, again, OrderCreated, reanswers.reserve)
                if not fresh:
                    return len(batch)
                orders = _typed(fresh, OrderCreated)
                plan = rules.plan_reserve(orders, stock.available, stock.orders_with_rows,
                                          expires_at)  # fmt: skip
                out = emitted(fresh, plan, durable=RESERVE)
                try:
                    refused = [d.key for d, decision in zip(fresh, plan.decisions, strict=True)
                               if decision.outcome == rules.OUT_OF_STOCK]  # fmt: skip
                    await store.open_reservations(
                        conn, plan.deltas, plan.opened, out, RESERVE, refused
                    )
                except store.StockMoved:
                    continue  # decided on stock that fell meanwhile: decide again
                except store.Conflict as exc:
                    # A release got there first (its tombstone): run the batch again, and
                    # this time the order is seen before.
                    raise TransientError(str(exc)) from exc
            return len(batch) - len(fresh)
        raise TransientError("stock kept falling under this batch")

    async def release(self, batch: Sequence[Delivery]) -> int:
        """inventory.release_request: give reserved stock back to available. A reservation
        is closed only if it is still reserved, a tombstone written only if the order still
        has no row; an order whose row changed meanwhile is decided again."""
        pending, applied = list(batch), 0
        for _ in range(MAX_ROUNDS):
            async with self._statements() as conn:
                requests = _typed(pending, ReleaseInventory)
                seen, rows = await store.read_for_release(
                    conn, RELEASE, [d.key for d in pending], [r.order_id for r in requests]
                )
                fresh = inbox.first_fresh(pending, {d.key for d in pending} - seen)
                if again := applied_before(pending, fresh):
                    answers = reanswers.release(_typed(again, ReleaseInventory), rows)
                    await outbox.enqueue(conn, emitted(again, answers, durable=RELEASE))
                if not fresh:
                    return len(batch) - applied
                requests = _typed(fresh, ReleaseInventory)
                absent = {r.order_id for r in requests if r.order_id not in rows}
                plan = rules.plan_release(requests, absent, rows)
                out = emitted(fresh, plan, durable=RELEASE)
                closing = dict(plan.closed)
                writes = closing.keys() | absent
                done, _ = await store.release(
                    conn,
                    [rows[order_id] for order_id in closing],
                    list(closing.values()),
                    [(r.order_id, r.reason) for r in requests if r.order_id in absent],
                    out,
                    RELEASE,
                    [(d.key, r.order_id if r.order_id in writes else None)
                     for d, r in zip(fresh, requests, strict=True)],
                )  # fmt: skip
            pending = [d for d, r in zip(fresh, requests, strict=True)
                       if r.order_id in writes and r.order_id not in done]  # fmt: skip
            applied += len(fresh) - len(pending)
            if not pending:
                return len(batch) - applied
        raise TransientError("reservations kept changing under this batch of releases")

    async def confirm(self, batch: Sequence[Delivery]) -> int:
        """orders.confirmed: the reserved stock is sold. It has no answer to give again.

        No inbox key is claimed: a sold reservation says so itself (`confirmed`), and under
        its row lock a copy of the message, redelivered or replayed, finds it so and
        changes nothing. A copy within the batch is dropped here."""
        fresh = inbox.first_fresh(batch, {d.key for d in batch})
        orders = _typed(fresh, OrderConfirmed)
        async with self._transaction() as conn:
            held, available = await store.lock_with_stock(
                conn, [o.order_id for o in orders], [RESERVED, RELEASED]
            )
            try:
                plan = rules.plan_confirm(orders, held, available)
            except rules.CannotConfirm as exc:
                raise PermanentError(str(exc)) from exc
            if plan.closed:
                await store.close_reservations(conn, plan.deltas, plan.closed, CONFIRMED)
            emitted(fresh, plan, durable=CONFIRM)
        return len(batch) - len(plan.closed)
