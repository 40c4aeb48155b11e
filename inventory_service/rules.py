"""What a batch of messages does to stock and reservations, decided with no I/O.

Each `plan_*` function takes the batch's messages in order and the rows the handler has
locked, and returns a `Plan`: one `Decision` per message (its outcome and the event it
emits, if any), the net stock change per product, and the reservations to open or close.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import msgspec

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
from jetsaga.contracts import (
    InventoryOutOfStock,
    InventoryReleased,
    InventoryReserved,
    OrderConfirmed,
    OrderCreated,
    ReleaseInventory,
)

Event = InventoryReserved | InventoryOutOfStock | InventoryReleased
EXPIRED = "expired"
OUT_OF_STOCK = "out_of_stock"


class CannotConfirm(Exception):
    """An order was confirmed whose stock can no longer be sold: a human must look."""


class Decision(msgspec.Struct, frozen=True):
    order_id: str
    outcome: str  # reserved, out_of_stock, seen_before, released, released_nothing, ...
    event: Event | None = None


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    decisions: list[Decision]  # one per message, in the batch's order
    deltas: list[Delta]
    opened: list[Reservation] = msgspec.field(default_factory=list)
    closed: list[tuple[str, str | None]] = msgspec.field(default_factory=list)  # order, reason


def plan_reserve(
    orders: Sequence[OrderCreated],
    available: Mapping[str, int],
    orders_with_rows: Collection[str],
    expires_at: datetime,
) -> Plan:
    """Reserve all items of each order or none, first come first served."""
    ledger = Ledger(available)
    decisions: list[Decision] = []
    opened: list[Reservation] = []
    for order in orders:
        oid = order.order_id
        if oid in orders_with_rows:  # released before it came, or reserved already
            decisions.append(Decision(oid, "seen_before"))
            continue
        items = summed(order.items)
        if missing := ledger.reserve(items):
            short = InventoryOutOfStock(order_id=oid, unavailable_items=missing)
            decisions.append(Decision(oid, OUT_OF_STOCK, short))
            continue
        rid = str(reservation_id_for(oid))
        held = Reservation(
            order_id=oid, reservation_id=rid, status=RESERVED, items=items, expires_at=expires_at
        )
        opened.append(held)
        event = InventoryReserved(
            order_id=oid, reservation_id=rid, items=order.items, expires_at=rfc3339(expires_at)
        )
        decisions.append(Decision(oid, "reserved", event))
    return Plan(decisions=decisions, deltas=ledger.deltas(), opened=opened)


def plan_release(
    requests: Sequence[ReleaseInventory], marked: Collection[str], held: Mapping[str, Reservation]
) -> Plan:
    """Give reserved stock back. `marked` orders have no row: they get a tombstone."""
    ledger = Ledger({})
    decisions: list[Decision] = []
    closed: list[tuple[str, str | None]] = []
    for request in requests:
        oid, reason = request.order_id, request.reason
        if oid in marked:
            event = InventoryReleased(order_id=oid, reservation_id=None, reason=reason)
            decisions.append(Decision(oid, "released_nothing", event))
            continue
        reservation = held[oid]
        if reservation.status == CONFIRMED:  # sold stock is never un-sold: a saga bug
            decisions.append(Decision(oid, "confirmed_not_released"))
        elif reservation.status == RELEASED:
            decisions.append(Decision(oid, "released_before"))
        else:
            ledger.move(reservation.items, "reserved", "available")
            closed.append((oid, reason))
            rid = reservation.reservation_id
            event = InventoryReleased(order_id=oid, reservation_id=rid, reason=reason)
            decisions.append(Decision(oid, "released", event))
    return Plan(decisions=decisions, deltas=ledger.deltas(), closed=closed)


def plan_confirm(
    orders: Sequence[OrderConfirmed], held: Mapping[str, Reservation], available: Mapping[str, int]
) -> Plan:
    """Sell reserved stock. A reservation released meanwhile sells from available stock if
    there is enough; otherwise `CannotConfirm`."""
    ledger = Ledger(available)
    decisions: list[Decision] = []
    closed: list[tuple[str, str | None]] = []
    for order in orders:
        oid = order.order_id
        reservation = held.get(oid)
        if reservation is None or reservation.reservation_id is None:
            raise CannotConfirm(f"order {oid} was confirmed but never reserved stock")
        if reservation.status == CONFIRMED:
            decisions.append(Decision(oid, "confirmed_before"))
            continue
        if reservation.status == RESERVED:
            ledger.move(reservation.items, "reserved", "sold")
            decisions.append(Decision(oid, "confirmed"))
        elif missing := ledger.shortages(reservation.items):
            raise CannotConfirm(
                f"order {oid} was confirmed after its reservation {reservation.reservation_id}"
                f" was released, and stock of {', '.join(m.product_id for m in missing)} is"
                " now short: sell it by hand"
            )
        else:
            ledger.move(reservation.items, "available", "sold")
            decisions.append(Decision(oid, "confirmed_from_available"))
        closed.append((oid, None))
    return Plan(decisions=decisions, deltas=ledger.deltas(), closed=closed)


def plan_expiry(due: Sequence[Reservation]) -> Plan:
    """Give the stock of expired reservations back."""
    ledger = Ledger({})
    decisions: list[Decision] = []
    for reservation in due:
        ledger.move(reservation.items, "reserved", "available")
        oid, rid = reservation.order_id, reservation.reservation_id
        event = InventoryReleased(order_id=oid, reservation_id=rid, reason=EXPIRED)
        decisions.append(Decision(oid, "expired", event))
    closed: list[tuple[str, str | None]] = [(r.order_id, EXPIRED) for r in due]
    return Plan(decisions=decisions, deltas=ledger.deltas(), closed=closed)
