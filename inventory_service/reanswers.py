"""What a message applied before is answered again, decided with no I/O.

The saga re-sends a compensation until it hears an answer, and a NATS server can lose an
answer it had acknowledged. So a duplicate is answered again with the event its reservation
row now implies, which is what the first answer said; it changes no stock. Each function
takes the duplicates in order and their rows (unlocked; absent for orders with none), and
returns a `Plan` of decisions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from inventory_service.domain import CONFIRMED, RELEASED, RESERVED, Reservation, rfc3339
from inventory_service.rules import Decision, Plan
from jetsaga.contracts import InventoryReleased, InventoryReserved, OrderCreated, ReleaseInventory

REANSWERED = "re-answered"
NOTHING = "duplicate"  # nothing to say again: the first answer was nothing, or not stored


def reserve(orders: Sequence[OrderCreated], held: Mapping[str, Reservation]) -> Plan:
    """An order that reserved is told so again, whether sold since or not. A released order
    gets nothing: it either never reserved (its release came first) or its release was
    answered; an order out of stock has no row, and the saga's own timeout covers it."""
    decisions: list[Decision] = []
    for order in orders:
        row = held.get(order.order_id)
        if row is None or row.reservation_id is None or row.status not in (RESERVED, CONFIRMED):
            decisions.append(Decision(order.order_id, NOTHING))
            continue
        assert row.expires_at is not None  # every reservation that held stock has one
        event = InventoryReserved(
            order_id=order.order_id,
            reservation_id=row.reservation_id,
            items=order.items,  # the row keeps quantities per product, not the order's lines
            expires_at=rfc3339(row.expires_at),
        )
        decisions.append(Decision(order.order_id, REANSWERED, event))
    return Plan(decisions=decisions, deltas=[])


def release(requests: Sequence[ReleaseInventory], held: Mapping[str, Reservation]) -> Plan:
    """A released reservation (or tombstone) is told released again, with the reason it was
    released for. A confirmed one gets nothing, as the first time: sold stock is never
    un-sold, and a saga compensating a confirmed order is a bug."""
    decisions: list[Decision] = []
    for request in requests:
        oid, row = request.order_id, held.get(request.order_id)
        if row is not None and row.status == RELEASED:
            reason = row.reason or request.reason
            event = InventoryReleased(
                order_id=oid, reservation_id=row.reservation_id, reason=reason
            )
            decisions.append(Decision(oid, REANSWERED, event))
        elif row is not None and row.status == CONFIRMED:
            decisions.append(Decision(oid, "confirmed_not_released"))
        else:
            decisions.append(Decision(oid, NOTHING))
    return Plan(decisions=decisions, deltas=[])
