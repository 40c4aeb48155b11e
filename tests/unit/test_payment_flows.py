"""The gateway side of a command (`payment_service.flows`) on the fake gateway: charges,
settling after a crash, unwinding a maybe-charged order, and the fake's test tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from jetsaga import contracts
from jetsaga.consumer import Delivery
from jetsaga.contracts import ProcessPayment, RefundPayment
from payment_service import flows
from payment_service.fake_gateway import FakeGateway
from payment_service.flows import Outcome, Work
from payment_service.gateway import Declined, Intent, Rejected, Unavailable
from payment_service.store import Payment

AT = datetime(2025, 1, 1, tzinfo=UTC)


def work(command: ProcessPayment | RefundPayment, status: str, intent: str | None) -> Work:
    subject = contracts.subject_of(command)
    delivery = Delivery(subject, command, contracts.message_id(subject, "o-1"), 1)
    row = Payment(order_id="o-1", status=status, amount=500, currency="usd",
                  payment_method="pm_card_visa", intent_id=intent, payment_id=None,
                  refund_id=None, failure_reason=None, version=1, created_at=AT,
                  updated_at=AT)  # fmt: skip
    return Work(delivery, row)


def process(pm: str = "pm_card_visa") -> ProcessPayment:
    return ProcessPayment(order_id="o-1", customer_id="c", amount=500, currency="usd",
                          payment_method=pm)  # fmt: skip


REFUND = RefundPayment(order_id="o-1", reason="timeout")


async def intent(gw: FakeGateway, pm: str = "pm_card_visa") -> Intent:
    return await gw.create_intent("o-1", 500, "usd", pm)


@pytest.mark.parametrize("pm", ["pm_card_visa", "pm_card_mastercard", "pm_card_amex"])
async def test_fake_charges_stripe_success_tokens(pm: str) -> None:
    gw = FakeGateway()
    made = await intent(gw, pm)
    assert (await gw.confirm_intent("o-1", made.id)).status == "succeeded"
    assert gw.charged("o-1") == 1


@pytest.mark.parametrize(
    "pm, code",
    [
        ("pm_card_chargeCustomerFail", "card_declined"),
        ("pm_card_visa_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
async def test_fake_declines_stripe_decline_tokens(pm: str, code: str) -> None:
    gw = FakeGateway()
    made = await intent(gw, pm)
    with pytest.raises(Declined) as caught:
        await gw.confirm_intent("o-1", made.id)
    assert caught.value.code == code
    assert (await gw.retrieve_intent(made.id)).failure_code == code


async def test_fake_rejects_unknown_payment_methods() -> None:
    with pytest.raises(Rejected, match="resource_missing"):
        await FakeGateway().create_intent("o-1", 500, "usd", "tok_visa")


async def test_fake_fails_on_demand_then_recovers() -> None:
    gw = FakeGateway()
    gw.fail("create", times=2)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await intent(gw)
    await intent(gw)
    gw.down()
    with pytest.raises(Unavailable):
        await intent(gw)
    gw.up()
    await intent(gw)
    assert gw.calls["create"] == 5


async def test_settle_just_created_confirms_without_looking_first() -> None:
    gw = FakeGateway()
    w = work(process(), "processing", None)
    w.created = await intent(gw)
    w.row = msgspec.structs.replace(w.row, intent_id=w.created.id)  # as recorded
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="succeeded", payment_id=w.created.id)
    assert gw.calls["retrieve"] == 0


async def test_settle_after_a_crash_looks_before_confirming() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    w = work(process(), "processing", made.id)
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="succeeded", payment_id=made.id)
    assert (gw.calls["retrieve"], gw.calls["confirm"]) == (1, 1)


async def test_settle_never_confirms_an_intent_that_already_charged() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    await gw.confirm_intent("o-1", made.id)
    w = work(process(), "processing", made.id)
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="succeeded", payment_id=made.id)
    assert gw.calls["confirm"] == 1 and gw.charged("o-1") == 1


async def test_settle_after_a_lost_decline_answer_fails_without_recharging() -> None:
    gw = FakeGateway()
    made = await intent(gw, "pm_card_chargeCustomerFail")
    with pytest.raises(Declined):
        await gw.confirm_intent("o-1", made.id)
    w = work(process("pm_card_chargeCustomerFail"), "processing", made.id)
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="failed", failure_reason="card_declined")
    assert gw.calls["confirm"] == 1


async def test_settle_of_a_cancelled_intent_fails_as_cancelled() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    await gw.cancel_intent("o-1", made.id)
    w = work(process(), "processing", made.id)
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="failed", failure_reason="cancelled")


async def test_unwind_cancels_an_unconfirmed_intent() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    w = work(REFUND, "processing", made.id)
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="voided")
    assert (await gw.retrieve_intent(made.id)).status == "canceled"


async def test_unwind_refunds_an_intent_that_charged() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    await gw.confirm_intent("o-1", made.id)
    w = work(REFUND, "processing", made.id)
    await flows.advance(gw, w)
    assert w.outcome is not None and w.outcome.status == "refunded"
    assert w.outcome.payment_id == made.id and w.outcome.refund_id
    assert w.outcome.failure_reason == "cancelled"  # what its process request is told
    assert gw.charged("o-1") == 0


async def test_unwind_refunds_when_the_charge_lands_between_look_and_cancel() -> None:
    gw = FakeGateway()
    made = await intent(gw)

    class Racing(FakeGateway):
        async def cancel_intent(self, order_id: str, intent_id: str) -> Intent:
            await gw.confirm_intent(order_id, intent_id)  # a confirm wins the race
            return await gw.cancel_intent(order_id, intent_id)

        async def retrieve_intent(self, intent_id: str) -> Intent:
            return await gw.retrieve_intent(intent_id)

        async def refund(self, order_id: str, intent_id: str) -> str:
            return await gw.refund(order_id, intent_id)

    w = work(REFUND, "processing", made.id)
    await flows.advance(Racing(), w)
    assert w.outcome is not None and w.outcome.status == "refunded"
    assert gw.charged("o-1") == 0


async def test_refund_of_a_charged_order_is_idempotent_at_the_gateway() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    await gw.confirm_intent("o-1", made.id)
    first, second = work(REFUND, "succeeded", made.id), work(REFUND, "succeeded", made.id)
    await flows.advance(gw, first)
    await flows.advance(gw, second)
    assert first.outcome == second.outcome
    assert first.outcome is not None and first.outcome.status == "refunded"


async def test_void_needs_no_gateway_call() -> None:
    gw = FakeGateway()
    w = work(REFUND, "processing", None)
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="voided")
    assert not gw.calls


async def test_a_gateway_outage_leaves_the_order_undecided() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    gw.down()
    w = work(process(), "processing", made.id)
    with pytest.raises(Unavailable):
        await flows.advance(gw, w)
    assert w.outcome is None


async def test_settle_of_an_intent_the_gateway_lost_fails_without_charging() -> None:
    gw = FakeGateway()  # as a localstripe restarted without its store: the intent is gone
    w = work(process(), "processing", "pi_forgotten")
    await flows.advance(gw, w)
    assert w.outcome == Outcome(status="failed", failure_reason="resource_missing")
    assert gw.calls["confirm"] == 0


async def test_unwind_of_an_intent_the_gateway_lost_voids() -> None:
    w = work(REFUND, "processing", "pi_forgotten")
    await flows.advance(FakeGateway(), w)
    assert w.outcome == Outcome(status="voided")


async def test_refund_of_a_charge_the_gateway_lost_is_an_error_not_an_outcome() -> None:
    w = work(REFUND, "succeeded", "pi_forgotten")
    with pytest.raises(Rejected):  # money may be held: an operator must look (dead letter)
        await flows.advance(FakeGateway(), w)
    assert w.outcome is None


async def test_an_intent_stuck_processing_is_undecided_not_an_outage() -> None:
    gw = FakeGateway()
    made = await intent(gw)
    gw.intents[made.id].status = "processing"  # an async payment method still settling
    for command in (process(), REFUND):
        with pytest.raises(flows.Undecided):  # redelivered with back-off, never held forever
            await flows.advance(gw, work(command, "processing", made.id))
