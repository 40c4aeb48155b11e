"""The orders a load run sends: the SPEC §2 body, the mix, and stock that cannot run out."""

from __future__ import annotations

import uuid

import msgspec

from jetsaga.load.arrivals import Kind
from jetsaga.load.workload import (
    MAX_QUANTITY,
    OUT_OF_STOCK,
    PAYMENT_DECLINED,
    PAYMENT_OK,
    OrderBody,
    Workload,
)


def test_order_body_has_the_fields_of_the_order_api() -> None:
    workload = Workload("r1", products=5)
    order = workload.build(7, Kind.OK)
    body = msgspec.json.decode(order.body)
    assert set(body) == {"orderId", "customerId", "items", "currency", "paymentMethod"}
    assert body["orderId"] == order.order_id
    assert uuid.UUID(order.order_id).version == 7
    assert body["currency"] == "usd"
    assert body["paymentMethod"] == PAYMENT_OK
    assert 1 <= len(body["items"]) <= 2
    for item in body["items"]:
        assert set(item) == {"productId", "quantity", "unitPrice"}
        assert item["productId"] in workload.product_ids
        assert 1 <= item["quantity"] <= MAX_QUANTITY
        assert item["unitPrice"] > 0


def test_the_body_is_what_msgspec_makes_of_the_order_byte_for_byte() -> None:
    workload = Workload("r2", products=4)
    for i, kind in enumerate([*Kind] * 20):
        body = workload.build(i, kind).body
        assert msgspec.json.encode(msgspec.json.decode(body, type=OrderBody)) == body


def test_order_ids_grow_with_time_in_send_order() -> None:
    workload = Workload("r3", products=3)
    ids = [workload.build(i, Kind.OK).order_id for i in range(2_000)]
    assert len(set(ids)) == len(ids)
    # Text order is time order to the millisecond: the 48-bit time prefix never goes back.
    prefixes = [order_id[:13] for order_id in ids]
    assert prefixes == sorted(prefixes)


def test_products_and_customers_are_unique_to_the_run() -> None:
    a, b = Workload("run-a", products=3), Workload("run-b", products=3)
    assert not set(a.product_ids) & set(b.product_ids)
    assert a.out_of_stock_id not in a.product_ids
    assert msgspec.json.decode(a.build(0, Kind.OK).body)["customerId"].startswith("load-run-a-")


def test_declined_orders_pay_with_the_declining_card() -> None:
    body = msgspec.json.decode(Workload("r", 4).build(0, Kind.DECLINE).body)
    assert body["paymentMethod"] == PAYMENT_DECLINED == "pm_card_chargeCustomerFail"


def test_out_of_stock_orders_ask_for_the_product_with_no_stock() -> None:
    workload = Workload("r", 4)
    for i in range(50):
        order = workload.build(i, Kind.OUT_OF_STOCK)
        assert (OUT_OF_STOCK, 1) in order.lines
        items = msgspec.json.decode(order.body)["items"]
        assert workload.out_of_stock_id in {item["productId"] for item in items}


def test_lines_match_the_body() -> None:
    workload = Workload("r", 6)
    order = workload.build(3, Kind.OK)
    items = msgspec.json.decode(order.body)["items"]
    assert [(workload.product_id(k), q) for k, q in order.lines] == [
        (item["productId"], item["quantity"]) for item in items
    ]


def test_stock_covers_every_order_asking_for_the_same_product() -> None:
    assert Workload("r", 20).stock_per_product(1_000) >= 1_000 * MAX_QUANTITY


def test_orders_spread_over_all_products_with_one_or_two_distinct_lines() -> None:
    workload = Workload("r", 7)
    orders = [workload.build(i, Kind.OK) for i in range(2_000)]
    assert {len(o.lines) for o in orders} == {1, 2}
    assert all(len({k for k, _ in o.lines}) == len(o.lines) for o in orders)
    assert {k for o in orders for k, _ in o.lines} == set(range(7))
    assert {q for o in orders for _, q in o.lines} == set(range(1, MAX_QUANTITY + 1))
