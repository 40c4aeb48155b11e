"""`StripeGateway` on the real `stripe` SDK against a real localstripe: create then confirm,
decline, retrieve, cancel, refund (once, whatever is repeated), the errors that mean "the
gateway is away", and the payment handler charging through it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import stripe

from jetsaga import contracts, db
from jetsaga.consumer import Delivery
from jetsaga.contracts import (
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    ProcessPayment,
    RefundPayment,
)
from jetsaga.devstack.procs import free_port
from payment_service import store
from payment_service.gateway import Declined, Missing, Rejected, Unavailable
from payment_service.handlers import PaymentHandler
from payment_service.main import MIGRATIONS
from payment_service.stripe_gateway import StripeGateway
from tests.support.databases import fresh_pool

pytestmark = pytest.mark.timeout(60)
KEY = "sk_test_jetsaga"


@pytest.fixture
async def gateway(stripe_api_base: str) -> AsyncIterator[StripeGateway]:
    gw = StripeGateway(KEY, stripe_api_base)
    yield gw
    await gw.close()


@pytest.fixture
async def raw(stripe_api_base: str) -> AsyncIterator[stripe.StripeClient]:
    """The plain SDK, to look at what localstripe holds."""
    http = stripe.AIOHTTPClient()
    yield stripe.StripeClient(KEY, base_addresses={"api": stripe_api_base}, http_client=http)
    await http.close_async()  # type: ignore[no-untyped-call]


def new_order() -> str:
    return str(uuid.uuid4())


async def test_create_does_not_charge_and_confirm_does(
    gateway: StripeGateway, raw: stripe.StripeClient
) -> None:
    order = new_order()
    made = await gateway.create_intent(order, 1999, "usd", "pm_card_visa")
    assert made.status == "requires_confirmation"
    held = await raw.v1.payment_intents.retrieve_async(made.id)
    assert (held.amount, held.currency, held.metadata["orderId"]) == (1999, "usd", order)
    charged = await gateway.confirm_intent(order, made.id)
    assert (charged.id, charged.status) == (made.id, "succeeded")
    assert (await gateway.retrieve_intent(made.id)).status == "succeeded"


async def test_confirming_twice_is_rejected_and_charges_once(gateway: StripeGateway) -> None:
    order = new_order()
    made = await gateway.create_intent(order, 500, "usd", "pm_card_visa")
    await gateway.confirm_intent(order, made.id)
    with pytest.raises(Rejected):
        await gateway.confirm_intent(order, made.id)
    assert (await gateway.retrieve_intent(made.id)).status == "succeeded"


async def test_charge_customer_fail_is_declined_with_card_declined(gateway: StripeGateway) -> None:
    order = new_order()
    made = await gateway.create_intent(order, 500, "usd", "pm_card_chargeCustomerFail")
    with pytest.raises(Declined) as caught:
        await gateway.confirm_intent(order, made.id)
    assert caught.value.code == "card_declined"
    after = await gateway.retrieve_intent(made.id)
    assert (after.status, after.failure_code) == ("requires_payment_method", "card_declined")


async def test_an_unknown_payment_method_is_rejected(gateway: StripeGateway) -> None:
    with pytest.raises(Rejected):
        await gateway.create_intent(new_order(), 500, "usd", "pm_does_not_exist")


async def test_an_unknown_intent_is_missing(gateway: StripeGateway) -> None:
    with pytest.raises(Missing):
        await gateway.retrieve_intent("pi_never_made")


async def test_cancel_makes_an_intent_unconfirmable(gateway: StripeGateway) -> None:
    order = new_order()
    made = await gateway.create_intent(order, 500, "usd", "pm_card_visa")
    assert (await gateway.cancel_intent(order, made.id)).status == "canceled"
    with pytest.raises(Rejected):
        await gateway.confirm_intent(order, made.id)


async def test_cancel_of_a_charged_intent_is_rejected(gateway: StripeGateway) -> None:
    order = new_order()
    made = await gateway.create_intent(order, 500, "usd", "pm_card_visa")
    await gateway.confirm_intent(order, made.id)
    with pytest.raises(Rejected):
        await gateway.cancel_intent(order, made.id)


async def test_refund_refunds_once_however_often_it_is_asked(
    gateway: StripeGateway, raw: stripe.StripeClient
) -> None:
    order = new_order()
    made = await gateway.create_intent(order, 700, "usd", "pm_card_visa")
    await gateway.confirm_intent(order, made.id)
    first = await gateway.refund(order, made.id)
    assert await gateway.refund(order, made.id) == first  # localstripe would make another
    refunds = await raw.v1.refunds.list_async({"payment_intent": made.id})
    assert [(r.id, r.amount) for r in refunds.data] == [(first, 700)]


async def test_an_unreachable_gateway_is_unavailable() -> None:
    gw = StripeGateway(KEY, f"http://127.0.0.1:{free_port()}", max_network_retries=1)
    try:
        with pytest.raises(Unavailable):
            await gw.create_intent(new_order(), 500, "usd", "pm_card_visa")
    finally:
        await gw.close()


async def test_a_bad_api_key_holds_rather_than_fails_the_order(stripe_api_base: str) -> None:
    gw = StripeGateway("not-a-key", stripe_api_base, max_network_retries=0)  # localstripe: 401
    try:
        with pytest.raises(Unavailable):
            await gw.retrieve_intent("pi_x")
    finally:
        await gw.close()


# --- the handler, paying through localstripe ---------------------------------------------


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_pool(database_url, "payment_s", [db.SHARED_MIGRATIONS, MIGRATIONS], 4) as p:
        yield p


def delivery(message: contracts.AnyMessage) -> Delivery:
    subject = contracts.subject_of(message)
    return Delivery(subject, message, contracts.message_id(subject, message.order_id), 1)


def process(order: str, pm: str) -> Delivery:
    return delivery(ProcessPayment(order_id=order, customer_id="c", amount=2500,
                                   currency="usd", payment_method=pm))  # fmt: skip


async def answers(pool: asyncpg.Pool, order: str) -> list[contracts.AnyMessage]:
    rows = await pool.fetch("SELECT subject, payload FROM outbox WHERE saga_id = $1 ORDER BY id",
                            order)  # fmt: skip
    return [contracts.decode(r["subject"], r["payload"]) for r in rows]


async def test_handler_charges_declines_and_refunds_through_localstripe(
    pool: asyncpg.Pool, gateway: StripeGateway, raw: stripe.StripeClient
) -> None:
    paid, declined = new_order(), new_order()
    handler = PaymentHandler(pool, gateway)
    await handler([process(paid, "pm_card_visa"), process(declined, "pm_card_chargeCustomerFail")])
    [success] = await answers(pool, paid)
    assert isinstance(success, PaymentSucceeded) and success.amount == 2500
    intent = await raw.v1.payment_intents.retrieve_async(success.stripe_payment_intent_id)
    assert (intent.status, intent.metadata["orderId"]) == ("succeeded", paid)
    [failure] = await answers(pool, declined)
    assert isinstance(failure, PaymentFailed) and failure.reason == "card_declined"

    assert await handler([process(paid, "pm_card_visa")]) == 1  # redelivered: no new intent
    assert (await answers(pool, paid))[1] == success  # ... and answered again
    refund = RefundPayment(order_id=paid, payment_id=success.payment_id, reason="timeout")
    await handler([delivery(refund)])
    row = (await store.load(pool, [paid]))[paid]
    assert row.status == "refunded"
    assert (await answers(pool, paid))[2] == PaymentRefunded(
        order_id=paid, payment_id=success.payment_id, refund_id=row.refund_id
    )
    refunds = await raw.v1.refunds.list_async({"payment_intent": intent.id})
    assert [r.id for r in refunds.data] == [row.refund_id]
