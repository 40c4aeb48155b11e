"""The orders a load run sends, and the products and stock it sets up for them.

Every run uses its own product ids (`load-<runid>-<k>`), so stock checks at the end see
only this run's orders. One extra product has no stock, for the out-of-stock share.
"""

from __future__ import annotations

import random
import uuid
from typing import Final

import msgspec

from jetsaga.ids import uuid7
from jetsaga.load.arrivals import Kind

MAX_QUANTITY: Final = 3
CURRENCY: Final = "usd"
PAYMENT_OK: Final = "pm_card_visa"
PAYMENT_DECLINED: Final = "pm_card_chargeCustomerFail"
OUT_OF_STOCK: Final = -1  # product index of the product with no stock
_CUSTOMERS: Final = 1000


class ItemBody(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    product_id: str
    quantity: int
    unit_price: int


class OrderBody(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """`POST /orders` body (SPEC §2), with the client-made `orderId`."""

    order_id: str
    customer_id: str
    items: list[ItemBody]
    currency: str
    payment_method: str


# (product index, quantity); product index OUT_OF_STOCK is the product with no stock
Line = tuple[int, int]


class Order(msgspec.Struct, frozen=True):
    order_id: str
    body: bytes
    lines: tuple[Line, ...]


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


_QTYS: Final = range(1, MAX_QUANTITY + 1)


def _tail(kind: Kind) -> bytes:
    payment = PAYMENT_DECLINED if kind is Kind.DECLINE else PAYMENT_OK
    encode = msgspec.json.encode
    return b',"currency":%b,"paymentMethod":%b}' % (encode(CURRENCY), encode(payment))


class Workload:
    """Builds order `i` of a run; deterministic for a given run id but for the order id.

    The body is the JSON msgspec would make of an `OrderBody`, byte for byte, put together
    from fragments encoded once: encoding a Struct per order cost more than the rest of
    sending it.
    """

    def __init__(self, run_id: str, products: int) -> None:
        if products < 1:
            raise ValueError("--products must be at least 1")
        self.run_id = run_id
        self.product_ids = [f"load-{run_id}-{k}" for k in range(products)]
        self.out_of_stock_id = f"load-{run_id}-oos"
        self._prices = [500 + 100 * (k % 50) for k in range(products)]
        self._rng = random.Random(run_id)
        encode = msgspec.json.encode
        # _items[k][q]: the item for q of product k, where k = -1 (OUT_OF_STOCK) is the last
        priced = [*zip(self.product_ids, self._prices, strict=True), (self.out_of_stock_id, 100)]
        self._items = [
            [b"", *(encode(ItemBody(product_id=p, quantity=q, unit_price=price)) for q in _QTYS)]
            for p, price in priced
        ]
        self._customers = [encode(f"load-{run_id}-c{c}") for c in range(_CUSTOMERS)]
        self._tails = {kind: _tail(kind) for kind in Kind}

    def product_id(self, index: int) -> str:
        return self.out_of_stock_id if index == OUT_OF_STOCK else self.product_ids[index]

    def stock_per_product(self, orders: int) -> int:
        """Enough stock that no stocked product runs out, even if every order asked for it."""
        return orders * MAX_QUANTITY + orders // 10 + 100

    def lines_for(self, kind: Kind) -> tuple[Line, ...]:
        """One or two distinct products, 1 to MAX_QUANTITY of each (cheap: it runs per send)."""
        rand, n = self._rng.random, len(self.product_ids)
        first = int(rand() * n)
        lines = [(first, 1 + int(rand() * MAX_QUANTITY))]
        if n > 1 and rand() < 0.5:
            second = (first + 1 + int(rand() * (n - 1))) % n
            lines.append((second, 1 + int(rand() * MAX_QUANTITY)))
        if kind is Kind.OUT_OF_STOCK:
            # One line cannot be served; the whole order must fail and hold no stock.
            lines[-1] = (OUT_OF_STOCK, 1)
        return tuple(lines)

    def build(self, i: int, kind: Kind) -> Order:
        order_id = uuid7()  # as a client should make them: see jetsaga.ids
        lines = self.lines_for(kind)
        items = self._items
        body = b'{"orderId":"%b","customerId":%b,"items":[%b]%b' % (
            order_id.encode(),
            self._customers[i % _CUSTOMERS],
            b",".join([items[k][q] for k, q in lines]),
            self._tails[kind],
        )
        return Order(order_id=order_id, body=body, lines=lines)
