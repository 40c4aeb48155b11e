"""The inventory's stock rules with no I/O: the ledger of a batch and the plan each kind of
message makes from the rows its handler locked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inventory_service.domain import (
    CONFIRMED,
    RELEASED,
    RESERVED,
    Delta,
    Ledger,
    Reservation,
    reservation_id_for,
    rfc3339,
    summed,
)
from inventory_service.rules import (
    CannotConfirm,
    Decision,
    plan_confirm,
    plan_expiry,
    plan_release,
    plan_reserve,
)
from jetsaga.contracts import (
    InventoryOutOfStock,
    InventoryReleased,
    InventoryReserved,
    LineItem,
    OrderConfirmed,
    OrderCreated,
    ReleaseInventory,
    UnavailableItem,
)

EXPIRES = datetime(2030, 1, 1, 0, 15, tzinfo=UTC)


def order(order_id: str, *lines: tuple[str, int]) -> OrderCreated:
    items = tuple(LineItem(product_id=p, quantity=q, unit_price=1) for p, q in lines)
    return OrderCreated(order_id=order_id, customer_id="c", items=items, total_amount=1,
                        currency="usd")  # fmt: skip


def held(order_id: str, status: str = RESERVED, **items: int) -> Reservation:
    return Reservation(order_id=order_id, reservation_id=str(reservation_id_for(order_id)),
                       status=status, items=dict(items), expires_at=EXPIRES)  # fmt: skip


def tombstone(order_id: str) -> Reservation:
    return Reservation(order_id=order_id, reservation_id=None, status=RELEASED, items={})


def release(order_id: str, reason: str = "payment_failed") -> ReleaseInventory:
    return ReleaseInventory(order_id=order_id, reason=reason)


def confirm(order_id: str) -> OrderConfirmed:
    return OrderConfirmed(order_id=order_id, payment_id="pay", timestamp="t")


def test_reservation_id_is_a_uuid_derived_from_the_order_id() -> None:
    assert reservation_id_for("o-1") == reservation_id_for("o-1") != reservation_id_for("o-2")
    assert reservation_id_for("o-1").version == 5


def test_quantities_are_summed_per_product() -> None:
    assert summed(order("o", ("a", 1), ("b", 2), ("a", 3)).items) == {"a": 4, "b": 2}


def test_expiry_time_is_rfc3339_utc() -> None:
    assert rfc3339(EXPIRES) == "2030-01-01T00:15:00.000Z"


def test_ledger_moves_conserve_each_products_total() -> None:
    ledger = Ledger({"a": 5, "b": 1})
    assert ledger.reserve({"a": 2, "b": 1}) == ()
    ledger.move({"a": 2}, "reserved", "sold")
    ledger.move({"b": 1}, "reserved", "available")
    assert ledger.deltas() == [Delta(product_id="a", available=-2, reserved=0, sold=2)]


def test_ledger_refuses_to_take_more_than_is_left_after_earlier_moves() -> None:
    ledger = Ledger({"a": 3})
    assert ledger.reserve({"a": 2}) == ()
    assert ledger.reserve({"a": 2}) == (UnavailableItem(product_id="a", requested=2, available=1),)
    with pytest.raises(ValueError):
        ledger.move({"a": 2}, "available", "sold")
    assert ledger.deltas() == [Delta(product_id="a", available=-2, reserved=2, sold=0)]


def test_orders_in_a_batch_are_served_in_order_and_all_or_nothing() -> None:
    plan = plan_reserve(
        [
            order("o-1", ("a", 2), ("b", 1)),
            order("o-2", ("a", 2), ("c", 1)),
            order("o-3", ("a", 1)),
        ],
        {"a": 3, "b": 1, "c": 5},
        set(),
        EXPIRES,
    )
    assert [d.outcome for d in plan.decisions] == ["reserved", "out_of_stock", "reserved"]
    assert plan.decisions[1].event == InventoryOutOfStock(
        order_id="o-2",
        unavailable_items=(UnavailableItem(product_id="a", requested=2, available=1),),
    )
    assert plan.deltas == [
        Delta(product_id="a", available=-3, reserved=3, sold=0),
        Delta(product_id="b", available=-1, reserved=1, sold=0),
    ]
    assert [(r.order_id, r.items) for r in plan.opened] == [
        ("o-1", {"a": 2, "b": 1}),
        ("o-3", {"a": 1}),
    ]


def test_reserved_event_carries_the_order_items_and_the_expiry() -> None:
    created = order("o-1", ("a", 1), ("a", 1))
    [decision] = plan_reserve([created], {"a": 2}, set(), EXPIRES).decisions
    assert decision.event == InventoryReserved(
        order_id="o-1",
        reservation_id=str(reservation_id_for("o-1")),
        items=created.items,
        expires_at="2030-01-01T00:15:00.000Z",
    )


def test_unknown_product_counts_as_none_available() -> None:
    [decision] = plan_reserve([order("o-1", ("x", 1))], {}, set(), EXPIRES).decisions
    assert decision.event == InventoryOutOfStock(
        order_id="o-1",
        unavailable_items=(UnavailableItem(product_id="x", requested=1, available=0),),
    )


def test_an_order_with_a_row_already_reserves_nothing_and_emits_nothing() -> None:
    plan = plan_reserve([order("o-1", ("a", 1))], {"a": 5}, {"o-1"}, EXPIRES)
    assert plan.decisions == [Decision("o-1", "seen_before")]
    assert plan.deltas == [] and plan.opened == []


def test_release_gives_reserved_stock_back() -> None:
    plan = plan_release([release("o-1")], set(), {"o-1": held("o-1", a=2)})
    assert plan.deltas == [Delta(product_id="a", available=2, reserved=-2, sold=0)]
    assert plan.closed == [("o-1", "payment_failed")]
    assert plan.decisions[0].event == InventoryReleased(
        order_id="o-1", reservation_id=str(reservation_id_for("o-1")), reason="payment_failed"
    )


def test_release_of_an_order_never_seen_reports_nothing_held() -> None:
    plan = plan_release([release("o-1", "timeout")], {"o-1"}, {})
    assert plan.decisions[0].event == InventoryReleased(
        order_id="o-1", reservation_id=None, reason="timeout"
    )
    assert plan.deltas == [] and plan.closed == []


@pytest.mark.parametrize(
    ("reservation", "outcome"),
    [
        (held("o-1", RELEASED, a=2), "released_before"),
        (tombstone("o-1"), "released_before"),
        (held("o-1", CONFIRMED, a=2), "confirmed_not_released"),
    ],
)
def test_release_of_a_closed_reservation_changes_and_emits_nothing(
    reservation: Reservation, outcome: str
) -> None:
    plan = plan_release([release("o-1")], set(), {"o-1": reservation})
    assert plan.decisions == [Decision("o-1", outcome)]
    assert plan.deltas == [] and plan.closed == []


def test_confirm_sells_reserved_stock_and_emits_nothing() -> None:
    plan = plan_confirm([confirm("o-1")], {"o-1": held("o-1", a=2)}, {"a": 0})
    assert plan.deltas == [Delta(product_id="a", available=0, reserved=-2, sold=2)]
    assert plan.decisions == [Decision("o-1", "confirmed")]
    assert plan.closed == [("o-1", None)]


def test_confirm_of_a_confirmed_reservation_changes_nothing() -> None:
    plan = plan_confirm([confirm("o-1")], {"o-1": held("o-1", CONFIRMED, a=2)}, {})
    assert plan.deltas == [] and plan.closed == []


def test_confirm_after_release_sells_from_available_stock_when_there_is_enough() -> None:
    plan = plan_confirm([confirm("o-1")], {"o-1": held("o-1", RELEASED, a=2)}, {"a": 2})
    assert plan.deltas == [Delta(product_id="a", available=-2, reserved=0, sold=2)]
    assert plan.decisions == [Decision("o-1", "confirmed_from_available")]


def test_confirm_after_release_without_enough_stock_cannot_be_applied() -> None:
    with pytest.raises(CannotConfirm, match=r"o-1.*sell it by hand"):
        plan_confirm([confirm("o-1")], {"o-1": held("o-1", RELEASED, a=2)}, {"a": 1})


@pytest.mark.parametrize("reservations", [{}, {"o-1": tombstone("o-1")}])
def test_confirm_of_an_order_that_never_reserved_cannot_be_applied(
    reservations: dict[str, Reservation],
) -> None:
    with pytest.raises(CannotConfirm, match="never reserved"):
        plan_confirm([confirm("o-1")], reservations, {})


def test_expiry_releases_with_reason_expired() -> None:
    plan = plan_expiry([held("o-1", a=1, b=2), held("o-2", a=1)])
    assert plan.deltas == [
        Delta(product_id="a", available=2, reserved=-2, sold=0),
        Delta(product_id="b", available=2, reserved=-2, sold=0),
    ]
    assert plan.closed == [("o-1", "expired"), ("o-2", "expired")]
    assert [d.event.reason for d in plan.decisions if d.event] == ["expired", "expired"]  # type: ignore[union-attr]
