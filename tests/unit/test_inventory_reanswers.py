"""What an inventory message applied before is answered again, from its reservation row."""

from __future__ import annotations

from datetime import UTC, datetime

from inventory_service import reanswers
from inventory_service.domain import CONFIRMED, RELEASED, RESERVED, Reservation
from inventory_service.rules import Decision
from jetsaga.contracts import (
    InventoryReleased,
    InventoryReserved,
    LineItem,
    OrderCreated,
    ReleaseInventory,
)

EXPIRES = datetime(2030, 1, 1, 0, 15, 0, 123456, tzinfo=UTC)
LINES = (LineItem(product_id="a", quantity=1, unit_price=5),
         LineItem(product_id="a", quantity=2, unit_price=5))  # fmt: skip


def order(order_id: str) -> OrderCreated:
    return OrderCreated(order_id=order_id, customer_id="c", items=LINES, total_amount=15,
                        currency="usd")  # fmt: skip


def row(
    order_id: str, status: str, reason: str | None = None, rid: str | None = "r"
) -> Reservation:
    return Reservation(order_id=order_id, reservation_id=rid and f"{rid}-{order_id}",
                       status=status, items={"a": 3} if rid else {}, expires_at=EXPIRES,
                       reason=reason)  # fmt: skip


def release(order_id: str, reason: str = "timeout") -> ReleaseInventory:
    return ReleaseInventory(order_id=order_id, reason=reason)


def test_an_order_that_reserved_is_told_reserved_again_with_its_lines_and_expiry() -> None:
    held = {"o-1": row("o-1", RESERVED), "o-2": row("o-2", CONFIRMED)}
    plan = reanswers.reserve([order("o-1"), order("o-2")], held)
    assert plan.decisions == [
        Decision("o-1", "re-answered", InventoryReserved(
            order_id="o-1", reservation_id="r-o-1", items=LINES,
            expires_at="2030-01-01T00:15:00.123Z")),
        Decision("o-2", "re-answered", InventoryReserved(
            order_id="o-2", reservation_id="r-o-2", items=LINES,
            expires_at="2030-01-01T00:15:00.123Z")),
    ]  # fmt: skip
    assert plan.deltas == [] and plan.opened == [] and plan.closed == []


def test_an_order_released_or_never_reserved_is_told_nothing_again() -> None:
    held = {"o-1": row("o-1", RELEASED, "expired"), "o-2": row("o-2", RELEASED, rid=None)}
    plan = reanswers.reserve([order("o-1"), order("o-2"), order("o-out-of-stock")], held)
    assert [(d.outcome, d.event) for d in plan.decisions] == [("duplicate", None)] * 3


def test_a_released_reservation_is_told_released_again_with_the_stored_reason() -> None:
    held = {
        "o-1": row("o-1", RELEASED, "payment_failed"),
        "o-2": row("o-2", RELEASED, "expired"),  # released by the sweep before the request
        "o-3": row("o-3", RELEASED, "timeout", rid=None),  # a tombstone
        "o-4": row("o-4", RELEASED, None),  # no reason stored: the request's
    }
    plan = reanswers.release([release(f"o-{i}", "asked") for i in range(1, 5)], held)
    assert [d.event for d in plan.decisions] == [
        InventoryReleased(order_id="o-1", reservation_id="r-o-1", reason="payment_failed"),
        InventoryReleased(order_id="o-2", reservation_id="r-o-2", reason="expired"),
        InventoryReleased(order_id="o-3", reservation_id=None, reason="timeout"),
        InventoryReleased(order_id="o-4", reservation_id="r-o-4", reason="asked"),
    ]
    assert {d.outcome for d in plan.decisions} == {"re-answered"}
    assert plan.deltas == [] and plan.closed == []


def test_a_confirmed_reservation_is_not_told_released_and_is_flagged() -> None:
    plan = reanswers.release([release("o-1")], {"o-1": row("o-1", CONFIRMED)})
    assert plan.decisions == [Decision("o-1", "confirmed_not_released")]


def test_a_release_without_a_row_or_still_reserved_is_told_nothing() -> None:
    plan = reanswers.release([release("o-1"), release("o-2")], {"o-2": row("o-2", RESERVED)})
    assert [(d.outcome, d.event) for d in plan.decisions] == [("duplicate", None)] * 2
