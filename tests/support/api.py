"""A thin HTTP client of the services for e2e tests: place orders, read them, set stock."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from tests.support.waiting import wait_until

FINAL = frozenset({"CONFIRMED", "CANCELLED", "FAILED"})


def order_body(
    product_id: str,
    quantity: int = 1,
    *,
    price: int = 1999,
    payment_method: str = "pm_card_visa",
    customer: str | None = None,
    order_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customerId": customer or f"c-{uuid.uuid4().hex[:8]}",
        "items": [{"productId": product_id, "quantity": quantity, "unitPrice": price}],
        "currency": "usd",
        "paymentMethod": payment_method,
    }
    if order_id:
        body["orderId"] = order_id
    return body


class Api:
    def __init__(
        self, http: aiohttp.ClientSession, order_url: str, inventory_url: str, payment_url: str
    ) -> None:
        self.http, self.order_url = http, order_url
        self.inventory_url, self.payment_url = inventory_url, payment_url

    async def post_order(
        self, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with self.http.post(self.order_url + "/orders", headers=headers, **kwargs) as r:
            payload = await r.json(content_type=None) if r.status != 413 else None
            return r.status, payload, r.headers

    async def place(self, body: dict[str, Any]) -> str:
        status, payload, _ = await self.post_order(body)
        assert status == 201, (status, payload)
        return str(payload["orderId"])

    async def order(self, order_id: str) -> dict[str, Any] | None:
        async with self.http.get(f"{self.order_url}/orders/{order_id}") as r:
            if r.status == 404:
                return None
            assert r.status == 200, r.status
            result: dict[str, Any] = await r.json()
            return result

    async def wait_final(self, order_id: str, within: float = 30.0) -> dict[str, Any]:
        async def final() -> dict[str, Any] | None:
            view = await self.order(order_id)
            return view if view and view["status"] in FINAL else None

        return await wait_until(final, timeout=within, message=f"order {order_id} final")

    async def set_stock(self, product_id: str, available: int) -> None:
        url = f"{self.inventory_url}/inventory/{product_id}"
        async with self.http.put(url, json={"available": available}) as r:
            assert r.status in (200, 201), (r.status, await r.text())

    async def stock(self, product_id: str) -> dict[str, int]:
        async with self.http.get(f"{self.inventory_url}/inventory/{product_id}") as r:
            assert r.status == 200, r.status
            result: dict[str, int] = await r.json()
            return result

    async def wait_stock(self, product_id: str, **want: int) -> dict[str, int]:
        """Until the product's stock shows `want` (e.g. available=7, sold=3)."""

        async def matches() -> dict[str, int] | None:
            got = await self.stock(product_id)
            return got if all(got[k] == v for k, v in want.items()) else None

        return await wait_until(matches, timeout=15, message=f"stock of {product_id} is {want}")

    async def payment(self, order_id: str) -> dict[str, Any] | None:
        async with self.http.get(f"{self.payment_url}/payments/{order_id}") as r:
            if r.status == 404:
                return None
            result: dict[str, Any] = await r.json()
            return result
