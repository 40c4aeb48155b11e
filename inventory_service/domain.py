"""The stock rules, with no I/O: what a reservation holds, and how a batch moves stock.

Stock of a product sits in three buckets, `available`, `reserved` and `sold`. Every change a
message makes is a move of a quantity from one bucket to another, so the sum of the three
only changes when an operator sets `available` (PUT). A `Ledger` applies the moves of one
batch in order over the product rows the batch has locked, refuses a move that would take
more than is available, and yields the net change per product to write back at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final, Literal

import msgspec

from jetsaga.contracts import LineItem, UnavailableItem

Bucket = Literal["available", "reserved", "sold"]
Items = Mapping[str, int]  # productId -> quantity, one entry per product

RESERVED: Final = "reserved"
RELEASED: Final = "released"
CONFIRMED: Final = "confirmed"

_RESERVATION_IDS: Final = uuid.UUID("5b0c6f5e-4d0a-4c38-9d57-2f1e0e7a9c41")


def reservation_id_for(order_id: str) -> uuid.UUID:
    """The reservation of an order has one id, so a replay reserves under the same id."""
    return uuid.uuid5(_RESERVATION_IDS, order_id)


def summed(items: Iterable[LineItem]) -> dict[str, int]:
    """Quantities per product: an order may list a product on several lines."""
    totals: dict[str, int] = {}
    for item in items:
        totals[item.product_id] = totals.get(item.product_id, 0) + item.quantity
    return totals


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """Net change of one product's buckets over a batch."""

    product_id: str
    available: int
    reserved: int
    sold: int


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """What an order holds. A tombstone (no reservation id, no items) marks an order whose
    release came before its creation: that order must never reserve."""

    order_id: str
    reservation_id: str | None
    status: str
    items: dict[str, int]
    expires_at: datetime | None = None
    reason: str | None = None  # why it was released; read only to answer a duplicate


class Ledger:
    """The moves of one batch over locked product rows, in the order they happen."""

    def __init__(self, available: Mapping[str, int]) -> None:
        self._available = dict(available)
        self._changes: dict[str, dict[Bucket, int]] = {}

    def shortages(self, items: Items) -> tuple[UnavailableItem, ...]:
        """Each item that the stock left by the moves so far cannot cover."""
        return tuple(
            UnavailableItem(product_id=product, requested=quantity, available=left)
            for product, quantity in items.items()
            if (left := self._available.get(product, 0)) < quantity
        )

    def move(self, items: Items, source: Bucket, target: Bucket) -> None:
        if source == "available" and self.shortages(items):
            raise ValueError("cannot take more than is available")
        for product, quantity in items.items():
            change = self._changes.setdefault(product, {"available": 0, "reserved": 0, "sold": 0})
            change[source] -= quantity
            change[target] += quantity
            if "available" in (source, target):
                sign = -1 if source == "available" else 1
                self._available[product] = self._available.get(product, 0) + sign * quantity

    def reserve(self, items: Items) -> tuple[UnavailableItem, ...]:
        """Reserve every item, or none and return what is missing."""
        missing = self.shortages(items)
        if not missing:
            self.move(items, "available", "reserved")
        return missing

    def deltas(self) -> list[Delta]:
        """Net changes, sorted by product, leaving out products whose moves cancel out."""
        return [
            Delta(product_id=product, available=c["available"], reserved=c["reserved"],
                  sold=c["sold"])
            for product, c in sorted(self._changes.items())
            if any(c.values())
        ]  # fmt: skip
