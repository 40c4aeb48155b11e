"""The fake gateway's own behaviour over its columnar store: ids, Stripe's intent states,
order ids of either shape, and the `intents[...]` view tests write statuses through."""

from __future__ import annotations

import uuid

import pytest

from payment_service.fake_gateway import FakeGateway
from payment_service.gateway import Declined, Missing, Rejected


async def test_intent_ids_are_unique_within_and_across_gateways_and_name_their_intent() -> None:
    first, second = FakeGateway(), FakeGateway()
    made = [await gw.create_intent("o-1", 500, "usd", "pm_card_visa") for gw in (first,) * 12]
    other = await second.create_intent("o-1", 500, "usd", "pm_card_visa")
    ids = [m.id for m in made]
    assert len(set(ids)) == 12 and other.id not in ids
    assert all(i.startswith("pi_") for i in [*ids, other.id])
    for m in made:
        assert first.intents[m.id].id == m.id
        assert (await first.retrieve_intent(m.id)).id == m.id
    assert list(first.intents) == ids and len(first.intents) == 12


@pytest.mark.parametrize("suffix", ["12", "012", "+1", " 1", "1_0", "\u0661", "x", "", "9" * 5000])
async def test_an_unknown_malformed_or_out_of_range_id_is_missing(suffix: str) -> None:
    gw, elsewhere = FakeGateway(), FakeGateway()
    made = await gw.create_intent("o-1", 500, "usd", "pm_card_visa")
    for _ in range(11):
        await gw.create_intent("o-1", 500, "usd", "pm_card_visa")
    head = made.id.removesuffix("0")  # the gateway's prefix, then row 0
    assert head != made.id and head + "11" in gw.intents
    wrong = [head + suffix, "pi_forgotten", made.id.replace("pi_", "re_"), made.id + " "]
    for intent_id in [*wrong, (await elsewhere.create_intent("o", 1, "usd", "pm_card_visa")).id]:
        assert intent_id not in gw.intents
        with pytest.raises(Missing):
            await gw.retrieve_intent(intent_id)
        with pytest.raises(Missing):
            await gw.confirm_intent("o-1", intent_id)


async def test_a_confirmed_intent_succeeds_and_keeps_what_it_was_created_with() -> None:
    gw = FakeGateway()
    made = await gw.create_intent("o-1", 1234, "eur", "pm_card_mastercard")
    assert (made.status, made.failure_code) == ("requires_confirmation", None)
    done = await gw.confirm_intent("o-1", made.id)
    assert (done.id, done.status, done.failure_code) == (made.id, "succeeded", None)
    [kept] = gw.intents_of("o-1")
    assert (kept.id, kept.order_id, kept.amount, kept.currency, kept.payment_method) == (
        made.id, "o-1", 1234, "eur", "pm_card_mastercard")  # fmt: skip
    assert (kept.status, kept.failure_code, kept.refund_id) == ("succeeded", None, None)
    with pytest.raises(Rejected, match="payment_intent_unexpected_state"):
        await gw.confirm_intent("o-1", made.id)
    assert gw.charged("o-1") == 1


async def test_a_declined_token_needs_a_payment_method_with_the_failure_code() -> None:
    gw = FakeGateway()
    made = await gw.create_intent("o-1", 500, "usd", "pm_card_chargeDeclinedExpiredCard")
    assert gw.intents[made.id].failure_code is None  # not until a confirm is declined
    with pytest.raises(Declined, match="expired_card"):
        await gw.confirm_intent("o-1", made.id)
    seen = await gw.retrieve_intent(made.id)
    assert (seen.status, seen.failure_code) == ("requires_payment_method", "expired_card")
    assert (await gw.cancel_intent("o-1", made.id)).failure_code == "expired_card"
    assert gw.charged("o-1") == 0


async def test_a_declined_token_canceled_before_any_confirm_has_no_failure_code() -> None:
    gw = FakeGateway()
    made = await gw.create_intent("o-1", 500, "usd", "pm_card_chargeCustomerFail")
    canceled = await gw.cancel_intent("o-1", made.id)
    assert (canceled.status, canceled.failure_code) == ("canceled", None)


async def test_a_token_that_is_not_a_test_card_is_rejected_and_makes_no_intent() -> None:
    gw = FakeGateway()
    with pytest.raises(Rejected, match="resource_missing"):
        await gw.create_intent("o-1", 500, "usd", "tok_visa")
    assert gw.intents_of("o-1") == [] and len(gw.intents) == 0


@pytest.mark.parametrize(
    "status, cancelable",
    [
        ("requires_confirmation", True),
        ("requires_payment_method", True),
        ("requires_action", True),
        ("requires_capture", True),
        ("processing", False),
        ("succeeded", False),
        ("canceled", False),
    ],
)
async def test_cancel_only_from_a_cancelable_state(status: str, cancelable: bool) -> None:
    gw = FakeGateway()
    made = await gw.create_intent("o-1", 500, "usd", "pm_card_visa")
    gw.intents[made.id].status = status
    if cancelable:
        assert (await gw.cancel_intent("o-1", made.id)).status == "canceled"
    else:
        with pytest.raises(Rejected, match="payment_intent_unexpected_state"):
            await gw.cancel_intent("o-1", made.id)
        assert gw.intents[made.id].status == status


async def test_refund_only_after_success_and_the_same_refund_twice() -> None:
    gw = FakeGateway()
    made = await gw.create_intent("o-1", 500, "usd", "pm_card_visa")
    with pytest.raises(Rejected, match="charge_not_succeeded"):
        await gw.refund("o-1", made.id)
    assert gw.intents[made.id].refund_id is None
    await gw.confirm_intent("o-1", made.id)
    first = await gw.refund("o-1", made.id)
    assert first.startswith("re_") and await gw.refund("o-1", made.id) == first
    assert gw.intents[made.id].refund_id == first and gw.charged("o-1") == 0
    other = await gw.create_intent("o-2", 500, "usd", "pm_card_visa")
    await gw.confirm_intent("o-2", other.id)
    assert await gw.refund("o-2", other.id) != first


async def test_intents_of_finds_uuid_and_other_order_ids_in_order_of_creation() -> None:
    gw = FakeGateway()
    order, nil, shouty = str(uuid.uuid4()), str(uuid.UUID(int=0)), str(uuid.uuid4()).upper()
    made: dict[str, list[str]] = {}
    for order_id in [order, "o-1", nil, "", shouty, order, "o-1"]:
        made.setdefault(order_id, []).append(
            (await gw.create_intent(order_id, 500, "usd", "pm_card_visa")).id
        )
    for order_id, ids in made.items():
        found = gw.intents_of(order_id)
        assert [i.id for i in found] == ids
        assert all(i.order_id == order_id for i in found)
    assert gw.intents_of(str(uuid.uuid4())) == [] and gw.intents_of("o-2") == []
    assert gw.intents_of(order.upper()) == []  # another string, as a dict key would be


async def test_a_status_assigned_through_intents_lands_in_the_gateway() -> None:
    gw = FakeGateway()
    made = await gw.create_intent("o-1", 500, "usd", "pm_card_chargeDeclined")
    with pytest.raises(Declined):
        await gw.confirm_intent("o-1", made.id)
    gw.intents[made.id].status = "requires_confirmation"  # as a test retries a decline
    with pytest.raises(Declined):
        await gw.confirm_intent("o-1", made.id)
    gw.intents[made.id].status = "processing"
    assert (await gw.retrieve_intent(made.id)).status == "processing"
    assert gw.intents_of("o-1")[0].status == "processing"
