"""The order saga end to end (issue 2): three worker processes, real nats-server,
PostgreSQL and localstripe, driven over HTTP."""

from __future__ import annotations

import asyncio
import uuid

import stripe

from jetsaga import setup
from tests.support.api import Api, order_body
from tests.support.services import System

pytestmark = __import__("pytest").mark.timeout(120)


async def test_paid_order_is_confirmed_and_its_stock_sold(
    api: Api, product: str, system: System
) -> None:
    await api.set_stock(product, 10)
    order_id = await api.place(order_body(product, 3, price=1250))

    order = await api.wait_final(order_id)

    assert order["status"] == "CONFIRMED" and order["sagaStatus"] == "COMPLETED"
    assert order["totalAmount"] == 3750 and order["reason"] is None
    assert order["paymentId"] and order["reservationId"]
    assert [h["sagaStatus"] for h in order["history"]] == [
        "STARTED",
        "INVENTORY_RESERVED",
        "PAYMENT_PROCESSING",
        "PAYMENT_SUCCEEDED",
        "COMPLETED",
    ]
    await api.wait_stock(product, available=7, reserved=0, sold=3)
    payment = await api.payment(order_id)
    assert payment is not None and payment["status"] == "succeeded"
    stripe_api = stripe.StripeClient(
        system.env["STRIPE_SECRET_KEY"], base_addresses={"api": system.env["STRIPE_API_BASE"]}
    )
    intent = await asyncio.to_thread(
        stripe_api.v1.payment_intents.retrieve, payment["stripePaymentIntentId"]
    )
    assert intent.status == "succeeded" and intent.amount == 3750
    assert intent.metadata["orderId"] == order_id


async def test_declined_payment_cancels_the_order_and_releases_stock(
    api: Api, product: str
) -> None:
    await api.set_stock(product, 5)
    order_id = await api.place(order_body(product, 2, payment_method="pm_card_chargeCustomerFail"))

    order = await api.wait_final(order_id)

    assert order["status"] == "CANCELLED" and order["sagaStatus"] == "COMPENSATED"
    assert order["reason"] == "card_declined"
    await api.wait_stock(product, available=5, reserved=0, sold=0)
    payment = await api.payment(order_id)
    assert payment is not None and payment["status"] == "failed"


async def test_short_stock_fails_the_order_and_leaves_stock_alone(api: Api, product: str) -> None:
    await api.set_stock(product, 1)
    order_id = await api.place(order_body(product, 2))

    order = await api.wait_final(order_id)

    assert order["status"] == "FAILED" and order["sagaStatus"] == "FAILED"
    assert order["reason"] == "out_of_stock"
    assert await api.stock(product) == {
        "productId": product,
        "available": 1,
        "reserved": 0,
        "sold": 0,
    }
    assert await api.payment(order_id) is None


async def test_unknown_product_fails_the_order(api: Api) -> None:
    order_id = await api.place(order_body(f"missing-{uuid.uuid4().hex}"))
    assert (await api.wait_final(order_id))["status"] == "FAILED"


async def test_last_unit_goes_to_exactly_one_of_two_racing_orders(api: Api, product: str) -> None:
    await api.set_stock(product, 1)
    ids = await asyncio.gather(*(api.place(order_body(product, 1)) for _ in range(2)))

    finals = sorted([(await api.wait_final(i))["status"] for i in ids])

    assert finals == ["CONFIRMED", "FAILED"]
    await api.wait_stock(product, available=0, reserved=0, sold=1)


async def test_same_idempotency_key_and_body_starts_one_saga(api: Api, product: str) -> None:
    await api.set_stock(product, 10)
    body, key = order_body(product), {"Idempotency-Key": f"key-{uuid.uuid4()}"}

    first, second = await api.post_order(body, key), await api.post_order(body, key)

    assert first[0] == 201 and second[0] == 200
    assert first[1]["orderId"] == second[1]["orderId"]
    assert second[2]["Location"] == f"/orders/{first[1]['orderId']}"
    order = await api.wait_final(first[1]["orderId"])
    assert [h["sagaStatus"] for h in order["history"]].count("STARTED") == 1
    await api.wait_stock(product, available=9, reserved=0, sold=1)


async def test_same_key_with_another_body_is_a_conflict(api: Api, product: str) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    assert (await api.post_order(order_body(product, 1), key))[0] == 201
    status, payload, _ = await api.post_order(order_body(product, 2), key)
    assert status == 409 and "orderId" in payload


async def test_client_order_id_is_idempotent_too(api: Api, product: str) -> None:
    order_id = str(uuid.uuid4())
    body = order_body(product, order_id=order_id)
    assert (await api.post_order(body))[0] == 201
    again = await api.post_order(body)
    assert again[0] == 200 and again[1]["orderId"] == order_id
    assert (await api.post_order({**body, "customerId": "someone-else"}))[0] == 409


async def test_malformed_json_is_rejected_with_400(api: Api) -> None:
    status, payload, _ = await api.post_order(None, raw=b'{"customerId": ')
    assert status == 400 and "malformed JSON" in payload["error"]


async def test_body_over_64_kib_is_rejected_with_413(api: Api) -> None:
    status, _, _ = await api.post_order(None, raw=b" " * (64 * 1024 + 1))
    assert status == 413


async def test_each_bad_field_is_named_in_a_422(api: Api) -> None:
    body = {
        "items": [
            {"productId": "p", "quantity": 0, "unitPrice": -5},
            {"productId": "p", "quantity": 10_001, "unitPrice": 1},
        ],
        "currency": "dollars",
        "paymentMethod": "pm_card_visa",
    }
    status, payload, _ = await api.post_order(body)
    assert status == 422
    assert {f["field"] for f in payload["fields"]} == {
        "customerId",
        "items[0].quantity",
        "items[0].unitPrice",
        "items[1].quantity",
        "currency",
    }


async def test_no_items_and_too_many_items_are_422(api: Api, product: str) -> None:
    empty = {**order_body(product), "items": []}
    many = {**order_body(product), "items": [order_body(product)["items"][0]] * 101}
    for body in (empty, many):
        status, payload, _ = await api.post_order(body)
        assert status == 422 and payload["fields"][0]["field"] == "items"


async def test_orders_list_filters_by_customer_and_pages_newest_first(
    api: Api, product: str
) -> None:
    await api.set_stock(product, 10)
    customer = f"c-{uuid.uuid4().hex}"
    ids = [await api.place(order_body(product, customer=customer)) for _ in range(3)]

    seen, cursor = [], None
    while True:
        url = f"{api.order_url}/orders?customerId={customer}&limit=2"
        async with api.http.get(url + (f"&cursor={cursor}" if cursor else "")) as r:
            page = await r.json()
        seen += [o["orderId"] for o in page["orders"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


async def test_unknown_order_is_404(api: Api) -> None:
    assert await api.order(str(uuid.uuid4())) is None


async def test_setup_twice_changes_nothing_the_second_time(system: System) -> None:
    lines: list[str] = []
    result = await setup.apply(system.settings, out=lines.append)
    assert set(result.values()) == {"unchanged"}
    assert all(line.endswith("unchanged") for line in lines)
