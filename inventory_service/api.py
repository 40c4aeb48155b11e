"""HTTP API of the inventory service (SPEC §3): set and read a product's stock."""

from __future__ import annotations

import logging
from typing import Any, Final

import asyncpg
import msgspec

from inventory_service import store
from jetsaga import leanhttp
from jetsaga.leanhttp import error, json_response

log = logging.getLogger(__name__)

MAX_STOCK: Final = 10**12  # far above any real stock, far below bigint overflow
MAX_PRODUCT_ID: Final = 128  # as in the order's line items


class Invalid(Exception):
    """A request the API refuses: its status, a message, and the reason per bad field."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or {}


def parse_stock_level(product_id: str, body: bytes) -> int:
    """The `available` of a PUT body, or `Invalid` (400 bad JSON, 422 bad values)."""
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise Invalid(400, "malformed JSON") from None
    fields: dict[str, str] = {}
    if not 1 <= len(product_id) <= MAX_PRODUCT_ID:
        fields["productId"] = f"must be 1 to {MAX_PRODUCT_ID} characters"
    if not isinstance(data, dict):
        raise Invalid(422, "invalid request", {**fields, "body": "must be a JSON object"})
    available = data.get("available")
    if "available" not in data:
        fields["available"] = "is required"
    elif isinstance(available, bool) or not isinstance(available, int):
        fields["available"] = "must be an integer"
    elif not 0 <= available <= MAX_STOCK:
        fields["available"] = f"must be between 0 and {MAX_STOCK}"
    if fields:
        raise Invalid(422, "invalid request", fields)
    assert isinstance(available, int)
    return available


def routes(pool: asyncpg.Pool) -> list[leanhttp.Route]:
    async def put_stock(request: leanhttp.Request) -> leanhttp.Response:
        product_id = request.match_info["productId"]
        try:
            available = parse_stock_level(product_id, await request.read())
        except Invalid as exc:
            return error(exc.status, exc.message, fields=exc.fields)
        async with pool.acquire() as conn:
            level = await store.set_available(conn, product_id, available)
        log.info("stock set", extra={"productId": product_id, "available": available})
        return json_response(level)

    async def get_stock(request: leanhttp.Request) -> leanhttp.Response:
        product_id = request.match_info["productId"]
        async with pool.acquire() as conn:
            level = await store.get_stock(conn, product_id)
        if level is None:
            return error(404, "unknown product", productId=product_id)
        return json_response(level)

    return [
        leanhttp.put("/inventory/{productId}", put_stock),
        leanhttp.get("/inventory/{productId}", get_stock),
    ]
