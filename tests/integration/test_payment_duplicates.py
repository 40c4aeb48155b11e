"""A payment command applied before is answered again, from the row it left behind, against a
real PostgreSQL with the fake gateway: the saga re-sends a compensation until it hears an
answer, and the first answer may have been lost with the NATS server that had acknowledged
it. The re-answer is the same message under the same `Nats-Msg-Id`, and no gateway call."""

from __future__ import annotations

import logging
import uuid

import asyncpg
import pytest

from jetsaga import contracts
from jetsaga.contracts import (
    AnyMessage,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    RefundPayment,
)
from payment_service import store
from payment_service.fake_gateway import FakeGateway
from payment_service.gateway import Intent, Unavailable
from payment_service.handlers import PaymentHandler
from tests.support.payments import delivery, gateway, handler, pool, process, refund

pytestmark = pytest.mark.timeout(60)
__all__ = ["gateway", "handler", "pool"]  # the shared fixtures, imported above


async def sent(pool: asyncpg.Pool, order_id: str) -> list[tuple[str, str, str, AnyMessage]]:
    """The order's outbox rows: (subject, Nats-Msg-Id, Causation-Id, message)."""
    rows = await pool.fetch(
        "SELECT subject, msg_id, causation_id, payload FROM outbox WHERE saga_id = $1 ORDER BY id",
        order_id,
    )
    return [
        (r["subject"], r["msg_id"], r["causation_id"], contracts.decode(r["subject"], r["payload"]))
        for r in rows
    ]


async def test_a_refund_request_applied_before_is_answered_again_without_a_second_refund(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = str(uuid.uuid4())
    await handler([process(order)])
    await handler([refund(order)])
    row = (await store.load(pool, [order]))[order]
    assert row.status == "refunded" and row.refund_id
    calls = sum(gateway.calls.values())
    resent = refund(order, msg_id="payments.refund_request:resent")
    assert await handler([resent]) == 1  # still a duplicate for the consumer loop
    assert sum(gateway.calls.values()) == calls and gateway.calls["refund"] == 1
    _, first, again = await sent(pool, order)
    assert (
        first[3]
        == again[3]
        == PaymentRefunded(order_id=order, payment_id=row.intent_id, refund_id=row.refund_id)
    )
    assert (
        first[:2]
        == again[:2]
        == (
            contracts.PAYMENTS_REFUNDED,
            contracts.message_id(contracts.PAYMENTS_REFUNDED, order),
        )
    )
    assert again[2] == "payments.refund_request:resent"  # caused by the duplicate delivery


async def test_a_refund_request_that_voided_the_order_is_answered_again_that_nothing_was_charged(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = str(uuid.uuid4())
    await handler([refund(order)])
    assert await handler([refund(order)]) == 1
    assert [m for *_, m in await sent(pool, order)] == [PaymentRefunded(order_id=order)] * 2
    assert not gateway.calls


async def test_a_refund_request_after_a_decline_is_answered_again_that_nothing_was_charged(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = str(uuid.uuid4())
    await handler([process(order, "pm_card_chargeCustomerFail")])
    await handler([refund(order)])
    assert await handler([refund(order)]) == 1
    _, first, again = await sent(pool, order)
    assert first == again and first[3] == PaymentRefunded(order_id=order)
    assert gateway.calls["refund"] == 0


async def test_a_process_request_applied_before_is_answered_again_succeeded(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = str(uuid.uuid4())
    await handler([process(order)])
    calls = sum(gateway.calls.values())
    assert await handler([process(order)]) == 1
    first, again = await sent(pool, order)
    assert first == again and isinstance(again[3], PaymentSucceeded)
    assert again[1] == contracts.message_id(contracts.PAYMENTS_SUCCEEDED, order)
    assert sum(gateway.calls.values()) == calls and gateway.charged(order) == 1


async def test_a_declined_process_request_is_answered_again_with_its_reason_and_time(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = str(uuid.uuid4())
    await handler([process(order, "pm_card_chargeCustomerFail")])
    calls = sum(gateway.calls.values())
    assert await handler([process(order, "pm_card_chargeCustomerFail")]) == 1
    first, again = await sent(pool, order)
    assert first == again and isinstance(again[3], PaymentFailed)
    assert again[3].reason == "card_declined"
    assert sum(gateway.calls.values()) == calls


async def test_a_process_request_whose_charge_was_refunded_since_is_answered_succeeded_again(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = str(uuid.uuid4())
    await handler([process(order)])
    await handler([refund(order)])
    assert await handler([process(order)]) == 1
    succeeded, _, again = await sent(pool, order)
    assert succeeded == again and isinstance(again[3], PaymentSucceeded)
    assert gateway.calls["refund"] == 1 and gateway.charged(order) == 0


class LosesConfirmAnswers(FakeGateway):
    """Charges, then loses the answer: the order is maybe charged until a refund unwinds it."""

    async def confirm_intent(self, order_id: str, intent_id: str) -> Intent:
        await super().confirm_intent(order_id, intent_id)
        raise Unavailable("answer lost")


async def test_a_process_request_a_refund_overtook_is_answered_cancelled_again(
    pool: asyncpg.Pool,
) -> None:
    gateway = LosesConfirmAnswers()
    handler, order = PaymentHandler(pool, gateway), str(uuid.uuid4())
    with pytest.raises(Unavailable):
        await handler([process(order)])
    await handler([refund(order)])  # refunds the charge whose answer was lost
    await handler([process(order)])  # the held request: told cancelled, never succeeded
    assert await handler([process(order)]) == 1
    _, cancelled, again = await sent(pool, order)
    assert cancelled == again and isinstance(again[3], PaymentFailed)
    assert again[3].reason == "cancelled"
    assert gateway.charged(order) == 0 and gateway.calls["refund"] == 1


async def test_a_command_redelivered_while_its_row_is_still_processing_settles_it_once(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    # The first delivery made and recorded the intent, then the gateway failed: the row is
    # undecided. A copy of the command finds the intent and confirms it; it never makes a
    # second one.
    order = str(uuid.uuid4())
    gateway.fail("confirm")
    with pytest.raises(Unavailable):
        await handler([process(order)])
    assert (await store.load(pool, [order]))[order].status == "processing"
    assert await handler([process(order)]) == 0
    assert [type(m) for *_, m in await sent(pool, order)] == [PaymentSucceeded]
    assert len(gateway.intents_of(order)) == 1 and gateway.charged(order) == 1


async def test_a_duplicate_and_a_new_command_of_one_order_in_one_batch(
    handler: PaymentHandler, gateway: FakeGateway, pool: asyncpg.Pool
) -> None:
    order = str(uuid.uuid4())
    await handler([process(order)])
    assert await handler([process(order), refund(order)]) == 1
    kinds = [type(m) for *_, m in await sent(pool, order)]
    assert kinds == [PaymentSucceeded, PaymentSucceeded, PaymentRefunded]  # in stream order
    assert gateway.charged(order) == 0


async def test_a_reanswer_is_logged_at_info_with_its_order_and_outcome(
    handler: PaymentHandler, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    order = str(uuid.uuid4())
    await handler([refund(order)])
    with caplog.at_level(logging.INFO, logger="payment_service.handlers"):
        await handler([delivery(RefundPayment(order_id=order, reason="timeout"), deliveries=2)])
    [record] = [r for r in caplog.records if getattr(r, "outcome", None) == "re-answered"]
    assert record.levelno == logging.INFO
    fields = {k: vars(record)[k] for k in ("orderId", "subject", "durable", "deliveries")}
    assert fields == {
        "orderId": order,
        "subject": contracts.PAYMENTS_REFUND_REQUEST,
        "durable": "payment-service",
        "deliveries": 2,
    }
