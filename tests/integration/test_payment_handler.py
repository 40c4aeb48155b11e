"""The payment handler against a real PostgreSQL with the in-process fake gateway (the subject
here is our own logic): an order is charged at most once whatever is redelivered, replayed,
interrupted or raced, and every command gets its answer through the outbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from jetsaga import contracts
from jetsaga.consumer import Delivery
from jetsaga.contracts import (
    AnyMessage,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
)
from payment_service import rules, store
from payment_service.fake_gateway import FakeGateway
from payment_service.gateway import Intent, Unavailable
from payment_service.handlers import PaymentHandler
from tests.support.payments import delivery, gateway, handler, pool, process, refund
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)
__all__ = ["gateway", "handler", "pool"]  # the shared fixtures, imported above


def new_order() -> str:
    return str(uuid.uuid4())


async def answers(pool: asyncpg.Pool, order_id: str) -> list[AnyMessage]:
    rows = await pool.fetch(
        "SELECT subject, payload FROM outbox WHERE saga_id = $1 ORDER BY id", order_id
    )
    return [contracts.decode(r["subject"], r["payload"]) for r in rows]


async def payment(pool: asyncpg.Pool, order_id: str) -> store.Payment:
    return (await store.load(pool, [order_id]))[order_id]


def counted(status: str) -> float:
    return REGISTRY.get_sample_value("payments_processed_total", {"status": status}) or 0.0


async def test_charges_once_and_answers_succeeded(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order, before = new_order(), counted("succeeded")
    assert await handler([process(order)]) == 0
    row = await payment(pool, order)
    assert (row.status, row.amount, row.payment_id) == ("succeeded", 1999, row.intent_id)
    assert await answers(pool, order) == [PaymentSucceeded(
        order_id=order, payment_id=row.intent_id or "", amount=1999,
        stripe_payment_intent_id=row.intent_id or "")]  # fmt: skip
    assert gateway.charged(order) == 1 and len(gateway.intents_of(order)) == 1
    assert gateway.intents_of(order)[0].payment_method == "pm_card_visa"
    assert counted("succeeded") == before + 1


async def test_a_redelivered_process_request_after_success_is_answered_again_not_charged(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    await handler([process(order)])
    calls, before = sum(gateway.calls.values()), counted("succeeded")
    assert await handler([process(order), process(order)]) == 2  # both are duplicates
    assert sum(gateway.calls.values()) == calls
    first, again = await answers(pool, order)  # answered again once per batch, not per copy
    assert first == again and isinstance(again, PaymentSucceeded)
    assert counted("succeeded") == before


async def test_a_replay_under_a_fresh_message_id_reemits_success_without_charging(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    await handler([process(order)])
    calls, before = sum(gateway.calls.values()), counted("succeeded")
    replayed = delivery(process(order).message, msg_id="replay-1")  # `jetsaga dlq replay`
    assert await handler([replayed]) == 1  # its row says it was applied
    first, again = await answers(pool, order)
    assert first == again and isinstance(again, PaymentSucceeded)
    assert sum(gateway.calls.values()) == calls and gateway.charged(order) == 1
    assert counted("succeeded") == before  # a re-emit is not a new outcome


async def test_declined_card_fails_with_card_declined(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order, before = new_order(), counted("failed")
    await handler([process(order, "pm_card_chargeCustomerFail")])
    row = await payment(pool, order)
    assert (row.status, row.failure_reason) == ("failed", "card_declined")
    [answer] = await answers(pool, order)
    assert isinstance(answer, PaymentFailed) and answer.reason == "card_declined"
    assert answer.timestamp == row.updated_at.isoformat()  # the answer is made from the row
    assert gateway.charged(order) == 0 and counted("failed") == before + 1
    assert await handler([process(order, "pm_card_chargeCustomerFail")]) == 1  # a duplicate
    assert await answers(pool, order) == [answer, answer]  # answered again, the same


async def test_an_invalid_payment_method_fails_with_the_gateway_code(
    handler: PaymentHandler, pool: asyncpg.Pool
) -> None:
    order = new_order()
    await handler([process(order, "pm_nonexistent")])
    [answer] = await answers(pool, order)
    assert isinstance(answer, PaymentFailed) and answer.reason == "resource_missing"


async def test_refund_after_success_refunds_once(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order, before = new_order(), counted("refunded")
    await handler([process(order)])
    intent = (await payment(pool, order)).intent_id
    await handler([refund(order, intent)])
    row = await payment(pool, order)
    assert row.status == "refunded" and row.refund_id
    expected = PaymentRefunded(order_id=order, payment_id=intent, refund_id=row.refund_id)
    assert (await answers(pool, order))[1:] == [expected]
    await handler([refund(order, intent)])  # replayed: the same answer, no second refund
    assert (await answers(pool, order))[1:] == [expected, expected]
    assert gateway.calls["refund"] == 1 and gateway.charged(order) == 0
    assert counted("refunded") == before + 1


async def test_refund_before_charge_voids_and_a_later_process_never_charges(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    await handler([refund(order)])
    assert (await payment(pool, order)).status == "voided"
    await handler([process(order)])
    refunded, failed = await answers(pool, order)
    assert refunded == PaymentRefunded(order_id=order, payment_id=None, refund_id=None)
    assert isinstance(failed, PaymentFailed) and failed.reason == "cancelled"
    assert not gateway.calls


async def test_refund_of_a_declined_payment_refunds_nothing(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    await handler([process(order, "pm_card_chargeCustomerFail")])
    await handler([refund(order)])
    assert (await answers(pool, order))[1] == PaymentRefunded(order_id=order)
    assert gateway.calls["refund"] == 0


async def test_transient_failure_keeps_the_row_processing_and_a_retry_completes_it(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    gateway.fail("create")
    with pytest.raises(Unavailable):
        await handler([process(order)])
    row = await payment(pool, order)
    assert (row.status, row.intent_id) == ("processing", None)
    gateway.fail("confirm")
    with pytest.raises(Unavailable):
        await handler([process(order)])
    row = await payment(pool, order)
    assert row.status == "processing" and row.intent_id  # maybe charged: the intent is known
    assert await answers(pool, order) == []
    await handler([process(order)])
    assert (await payment(pool, order)).status == "succeeded"
    assert len(gateway.intents_of(order)) == 1 and gateway.charged(order) == 1


async def test_refund_while_processing_cancels_the_recorded_intent(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    gateway.fail("confirm")
    with pytest.raises(Unavailable):
        await handler([process(order)])
    await handler([refund(order)])
    [intent] = gateway.intents_of(order)
    assert intent.status == "canceled" and (await payment(pool, order)).status == "voided"
    await handler([process(order)])  # the held process request, retried
    refunded, failed = await answers(pool, order)
    assert refunded == PaymentRefunded(order_id=order)
    assert isinstance(failed, PaymentFailed) and failed.reason == "cancelled"
    assert gateway.charged(order) == 0


class LosesConfirmAnswers(FakeGateway):
    """Charges, then loses the answer: the timeout after which an order is maybe charged."""

    async def confirm_intent(self, order_id: str, intent_id: str) -> Intent:
        await super().confirm_intent(order_id, intent_id)
        raise Unavailable("answer lost")


async def test_refund_while_processing_refunds_a_charge_whose_answer_was_lost(
    pool: asyncpg.Pool,
) -> None:
    gateway = LosesConfirmAnswers()
    handler, order = PaymentHandler(pool, gateway), new_order()
    with pytest.raises(Unavailable):
        await handler([process(order)])
    assert gateway.charged(order) == 1 and (await payment(pool, order)).status == "processing"
    await handler([refund(order)])
    row = await payment(pool, order)
    assert (row.status, row.payment_id) == ("refunded", row.intent_id) and row.refund_id
    await handler([process(order)])
    refunded, failed = await answers(pool, order)
    assert refunded == PaymentRefunded(order_id=order, payment_id=row.intent_id,
                                       refund_id=row.refund_id)  # fmt: skip
    assert isinstance(failed, PaymentFailed) and failed.reason == "cancelled"
    assert gateway.charged(order) == 0 and len(gateway.intents_of(order)) == 1


async def test_process_then_refund_in_one_batch_apply_in_order(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    await handler([process(order), refund(order)])
    succeeded, refunded = await answers(pool, order)
    assert isinstance(succeeded, PaymentSucceeded) and isinstance(refunded, PaymentRefunded)
    assert refunded.refund_id and gateway.charged(order) == 0


async def test_a_transient_order_does_not_hold_back_its_neighbours(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    first, second = new_order(), new_order()
    gateway.fail("create")  # whichever order asks first
    batch = [process(first), process(second)]
    with pytest.raises(Unavailable):
        await handler(batch)
    statuses = {(await payment(pool, o)).status for o in (first, second)}
    assert statuses == {"processing", "succeeded"}
    assert await handler(batch) == 1  # the one committed before is now a duplicate
    for order in (first, second):
        assert gateway.charged(order) == 1
        assert {type(m) for m in await answers(pool, order)} == {PaymentSucceeded}
    # The duplicate is answered again, from its row.
    assert sorted([len(await answers(pool, first)), len(await answers(pool, second))]) == [1, 2]


async def test_a_later_command_of_an_unfinished_order_waits_for_it(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = new_order()
    gateway.fail("create")
    with pytest.raises(Unavailable):
        await handler([process(order), refund(order)])
    assert (await payment(pool, order)).status == "processing"
    await handler([process(order), refund(order)])
    assert [type(m) for m in await answers(pool, order)] == [PaymentSucceeded, PaymentRefunded]


@dataclass
class CreatesTogether(FakeGateway):
    """Holds every create until `expected` creates arrived: each worker has then read the
    row before any of them could record an intent, so they all race to record theirs."""

    expected: int = 0
    go: asyncio.Event = field(default_factory=asyncio.Event)

    async def create_intent(
        self, order_id: str, amount: int, currency: str, payment_method: str
    ) -> Intent:
        intent = await super().create_intent(order_id, amount, currency, payment_method)
        if self.calls["create"] >= self.expected:
            self.go.set()
        await self.go.wait()
        return intent


async def test_a_row_another_batch_opens_meanwhile_is_read_all_the_same(
    pool: asyncpg.Pool,
) -> None:
    order = new_order()
    opening = rules.opening(process(order).message)  # type: ignore[arg-type]
    async with pool.acquire() as other, pool.acquire() as conn:
        async with other.transaction():
            await store.open_payments(other, [opening])
            opens = asyncio.create_task(store.open_payments(conn, [opening]))
            await wait_until(
                lambda: pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ),
                message="the second opening waits for the first one's row",
            )
        rows = await opens  # its statement's snapshot is older than that row
    assert rows[order].status == "processing"


async def wal_syncs(conn: asyncpg.Connection) -> int:
    """WAL flushes so far, this backend's own included: a backend reports its statistics
    when it goes idle, without delay only once told to."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT 1")
    return int(await conn.fetchval("SELECT wal_sync FROM pg_stat_wal"))


async def test_settling_changes_no_indexed_column_so_it_can_update_in_place(
    pool: asyncpg.Pool,
) -> None:
    # A settle writes these columns; an index on any of them (in its key or its predicate)
    # would move every settled row to a new place, with an entry in every index.
    settled = {"status", "payment_id", "refund_id", "failure_reason", "version", "updated_at"}
    indexed = await pool.fetch(
        "SELECT i.indexrelid::regclass::text AS name, a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0"
        " AND (a.attnum = ANY(i.indkey) OR pg_get_expr(i.indpred, i.indrelid) ~ a.attname)"
        " WHERE i.indrelid = 'payments'::regclass"
    )
    assert {r["name"] for r in indexed} == {"payments_pkey", "payments_intent_id_key"}
    assert not [r for r in indexed if r["attname"] in settled]
    fillfactor = await pool.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = 'payments'::regclass"
    )
    assert "fillfactor=80" in fillfactor  # room on the page for the settled version


async def test_opening_rows_to_charge_does_not_wait_for_the_wal_flush_and_voiding_does(
    pool: asyncpg.Pool,
) -> None:
    charging, voiding = [new_order() for _ in range(40)], [new_order() for _ in range(40)]

    async def open_each(conn: asyncpg.Connection, orders: list[str], command: Any) -> int:
        """WAL syncs while each order's row is opened, one statement each."""
        before = await wal_syncs(conn)
        for order in orders:
            opening = rules.opening(command(order).message)
            await store.open_payments(conn, [opening])
        return await wal_syncs(conn) - before

    async with pool.acquire() as conn:
        opened = await open_each(conn, charging, process)
        # Set for the statement's transaction only: the session still commits synchronously.
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        voided = await open_each(conn, voiding, refund)
    # The WAL writer flushes the opened rows in the background, every 200 ms or full page
    # of WAL: a few times here, under any load far fewer than once per statement.
    assert opened <= 20 and voided >= 30, (opened, voided)
    rows = await store.load(pool, charging + voiding)
    assert [rows[o].status for o in charging + voiding] == ["processing"] * 40 + ["voided"] * 40


class CreatesThenDies(FakeGateway):
    """Creates the intent, then the worker dies before it hears back (no answer)."""

    dying = True

    async def create_intent(
        self, order_id: str, amount: int, currency: str, payment_method: str
    ) -> Intent:
        intent = await super().create_intent(order_id, amount, currency, payment_method)
        if self.dying:
            raise Unavailable("the worker died")
        return intent


async def test_an_opened_row_lost_in_a_crash_is_opened_again_and_charged_once(
    pool: asyncpg.Pool,
) -> None:
    gateway = CreatesThenDies()
    handler = PaymentHandler(pool, gateway)
    order = new_order()
    with pytest.raises(Unavailable):
        await handler([process(order)])
    # A crash of the database before any later commit took the row, never flushed, with it.
    await pool.execute("DELETE FROM payments WHERE order_id = $1", order)
    gateway.dying = False
    await handler([process(order)])
    row = await payment(pool, order)
    first, second = gateway.intents_of(order)
    assert row.status == "succeeded" and row.intent_id == second.id
    assert gateway.charged(order) == 1 and first.status == "requires_confirmation"
    assert [type(a) for a in await answers(pool, order)] == [PaymentSucceeded]


async def test_concurrent_workers_charge_an_order_once(pool: asyncpg.Pool) -> None:
    orders = [new_order() for _ in range(20)]
    gateway = CreatesTogether(expected=3 * len(orders))
    workers = [PaymentHandler(pool, gateway) for _ in range(3)]
    await asyncio.gather(*(w([process(o) for o in orders]) for w in workers))
    for order in orders:
        assert gateway.charged(order) == 1
        row = await payment(pool, order)
        assert row.status == "succeeded"
        # The winner answered; a worker that lost the race found the row settled and
        # answered it again, the same message under the same Nats-Msg-Id, which JetStream
        # stores once.
        answer, *again = await answers(pool, order)
        assert isinstance(answer, PaymentSucceeded) and all(a == answer for a in again)
        ids = await pool.fetch("SELECT DISTINCT msg_id FROM outbox WHERE saga_id = $1", order)
        assert len(ids) == 1
        losers = [i for i in gateway.intents_of(order) if i.id != row.intent_id]
        assert len(losers) == 2 and all(i.status == "canceled" for i in losers)


async def test_concurrent_refund_and_charge_never_keep_money(
    pool: asyncpg.Pool, gateway: FakeGateway
) -> None:
    orders = [new_order() for _ in range(30)]
    charger, refunder = PaymentHandler(pool, gateway), PaymentHandler(pool, gateway)
    await asyncio.gather(charger([process(o) for o in orders]),
                         refunder([refund(o) for o in orders]))  # fmt: skip
    for order in orders:
        assert gateway.charged(order) == 0
        row = await payment(pool, order)
        assert row.status in ("voided", "refunded")
        kinds = {type(m) for m in await answers(pool, order)}
        assert PaymentSucceeded not in kinds or row.status == "refunded"


class CountingPool:
    """Counts the connections a handler takes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.acquired = pool, 0

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        self.acquired += 1
        return self.pool.acquire()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "make",
    [
        lambda o: [process(o, "pm_card_visa")],
        lambda o: [process(o, "pm_card_chargeCustomerFail")],
        lambda o: [refund(o)],
    ],
)
async def test_a_batch_of_200_takes_one_connection_for_all_its_statements(
    pool: asyncpg.Pool, gateway: FakeGateway, make: Any
) -> None:
    # A release hands the connection back in a task of asyncpg's own, a turn of the event
    # loop before the next statement could start: a round holds one connection throughout.
    counting = CountingPool(pool)
    handler = PaymentHandler(counting, gateway)
    batch: Sequence[Delivery] = [d for _ in range(200) for d in make(new_order())]
    await handler(batch)
    assert counting.acquired == 1
    counting.acquired, enqueued = 0, await outbox_count(pool)
    assert await handler(batch) == 200  # redelivered: one statement finds them all done
    assert counting.acquired == 1  # ... and one more answers them all again
    assert await outbox_count(pool) == enqueued + 200


async def outbox_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox")
    return count
